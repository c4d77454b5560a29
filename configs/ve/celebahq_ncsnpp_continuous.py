"""NCSN++ on CelebA-HQ 1024x1024 with the continuous VE SDE."""

from configs import _models, _recipes, default_hq_configs


def get_config():
  config = default_hq_configs.get_default_configs('CelebAHQ', 1024)
  _recipes.ve(config, ema_rate=0.9999)
  _models.ncsnpp_1024(config.model)
  return config
