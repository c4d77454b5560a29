"""DDPM as published (Ho et al. 2020): CIFAR-10, discrete chain, ancestral sampling."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config, continuous=False)
  _models.ddpm(config.model)
  return config
