"""The DDPM U-Net on CIFAR-10 trained with the continuous VP SDE."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config)
  _models.ddpm(config.model)
  return config
