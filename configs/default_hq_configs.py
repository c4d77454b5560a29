"""Base config for FFHQ and CelebA-HQ, read from tfrecords files at 256 or 1024 px.

The LSUN base with the data set's tfrecords file and noise scale. At 1024 px it also carries the
settings of the paper's 1024 px runs (batch of 8, a lower sampler snr, evaluation from the first
checkpoint). The tfrecords paths are where the original authors kept the files: point
``--config.data.tfrecords_path`` at your own copy.
"""

from configs import default_lsun_configs

TFRECORDS = {
    ('FFHQ', 256): '/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords',
    ('FFHQ', 1024): '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords',
    ('CelebAHQ', 256): '/home/yangsong/ncsc/celebahq/r08.tfrecords',
    ('CelebAHQ', 1024): '/atlas/u/yangsong/celeba_hq/-r10.tfrecords',
}
# Largest pairwise distance between training images, by resolution (the same for both sets).
SIGMA_MAX = {256: 348, 1024: 1348}


def get_default_configs(dataset, image_size=256):
  """Returns the base for ``dataset`` ('FFHQ' or 'CelebAHQ') at ``image_size`` (256 or 1024)."""
  config = default_lsun_configs.get_default_configs()
  config.data.update(dataset=dataset, image_size=image_size,
                     tfrecords_path=TFRECORDS[dataset, image_size])
  config.model.sigma_max = SIGMA_MAX[image_size]
  if image_size == 1024:
    config.training.batch_size = 8
    config.sampling.snr = 0.15
    config.eval.update(begin_ckpt=1, batch_size=1024)
    config.optim.amsgrad = False
  return config
