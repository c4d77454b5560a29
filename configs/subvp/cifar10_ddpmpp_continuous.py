"""DDPM++ on CIFAR-10 trained with the continuous sub-VP SDE."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config, sde='subvpsde')
  _models.ddpmpp(config.model)
  return config
