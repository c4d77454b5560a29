"""DDPM as published on CelebA-HQ 256x256."""

from configs import _recipes, default_hq_configs


def get_config():
  config = default_hq_configs.get_default_configs('CelebAHQ', 256)
  _recipes.ddpm_256(config)
  return config
