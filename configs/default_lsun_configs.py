"""Base config for LSUN (256x256; the category comes from the override file).

The CIFAR-10 base with LSUN's data, noise scales and a longer, smaller-batch schedule. The
FFHQ and CelebA-HQ base (``default_hq_configs``) starts from this one.
"""

from configs import default_cifar10_configs


def get_default_configs():
  """Returns the LSUN base; set ``data.category`` ('bedroom', 'church_outdoor')."""
  config = default_cifar10_configs.get_default_configs()
  config.training.update(batch_size=64, n_iters=2400001, snapshot_freq_for_preemption=5000)
  config.sampling.snr = 0.075
  config.eval.update(begin_ckpt=50, end_ckpt=96, batch_size=512, enable_sampling=True)
  config.data.update(dataset='LSUN', image_size=256)
  config.model.update(sigma_max=378, num_scales=2000, dropout=0.)
  return config
