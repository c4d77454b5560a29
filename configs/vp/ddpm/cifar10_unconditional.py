"""DDPM on CIFAR-10 with a network that is not told the time step (NCSNv2's technique 3)."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config, continuous=False)
  _models.ddpm(config.model, conditional=False)
  return config
