"""Base config for the embedded digits (scikit-learn's 8x8 digits upsampled to 16x16, 1 channel).

Needs no download, so it is the data set of the README's main job and of the tests. Training is
sized for 2 CPU cores in about 15 minutes; the other fields follow the CIFAR-10 base.
"""

from configs import default_cifar10_configs


def get_default_configs():
  config = default_cifar10_configs.get_default_configs()
  config.data.update(dataset='digits', image_size=16, num_channels=1,
                     random_flip=False)  # a mirrored digit is another glyph
  # One step per compiled call: on CPU the trainer unrolls the n_jitted_steps scan, whose compile
  # time grows with it, and there is no host round trip worth saving at this size.
  config.training.update(batch_size=64, n_iters=3000, log_freq=100, eval_freq=500,
                         snapshot_freq=3000, snapshot_freq_for_preemption=500,
                         n_jitted_steps=1)
  config.eval.update(batch_size=256, num_samples=256)
  config.optim.update(lr=1e-3, warmup=200)
  return config
