"""NCSN++ on FFHQ 256x256 with the continuous VE SDE."""

from configs import _models, _recipes, default_hq_configs


def get_config():
  config = default_hq_configs.get_default_configs('FFHQ', 256)
  _recipes.ve(config)
  _models.ncsnpp_256(config.model)
  return config
