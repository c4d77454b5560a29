"""The DDPM U-Net on CIFAR-10 trained on SMLD's discrete noise levels (VE)."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.ve(config, continuous=False)
  _models.ddpm(config.model, conv_size=3)
  return config
