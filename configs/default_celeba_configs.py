"""Base config for CelebA (64x64 center crops): the CIFAR-10 base with CelebA's data and noise."""

from configs import default_cifar10_configs


def get_default_configs():
  """Returns the CelebA base."""
  config = default_cifar10_configs.get_default_configs()
  config.data.update(dataset='CELEBA', image_size=64)
  config.model.sigma_max = 90.  # largest pairwise distance between training images
  config.sampling.snr = 0.17
  config.eval.update(begin_ckpt=1, enable_sampling=True)
  return config
