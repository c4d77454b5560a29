"""NCSN++ on LSUN bedroom 256x256 with the continuous VE SDE."""

from configs import _models, _recipes, default_lsun_configs


def get_config():
  config = default_lsun_configs.get_default_configs()
  config.data.category = 'bedroom'
  _recipes.ve(config)
  _models.ncsnpp_256(config.model)
  return config
