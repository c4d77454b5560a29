"""DDPM as published on LSUN church_outdoor 256x256."""

from configs import _recipes, default_lsun_configs


def get_config():
  config = default_lsun_configs.get_default_configs()
  config.data.category = 'church_outdoor'
  _recipes.ddpm_256(config)
  return config
