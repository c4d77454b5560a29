"""DDPM++ on CIFAR-10 trained on the discrete DDPM chain, sampled ancestrally."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config, continuous=False)
  _models.ddpmpp(config.model)
  return config
