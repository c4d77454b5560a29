"""NCSN++ on FFHQ 1024x1024 with the continuous VE SDE (loss averaged over pixels)."""

from configs import _models, _recipes, default_hq_configs


def get_config():
  config = default_hq_configs.get_default_configs('FFHQ', 1024)
  _recipes.ve(config, ema_rate=0.9999)
  config.training.reduce_mean = True
  _models.ncsnpp_1024(config.model)
  return config
