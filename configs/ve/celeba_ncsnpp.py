"""NCSN++ on CelebA 64x64 trained on SMLD's discrete noise levels (VE)."""

from configs import _models, _recipes, default_celeba_configs


def get_config():
  config = default_celeba_configs.get_default_configs()
  _recipes.ve(config, continuous=False)
  _models.ncsnpp(config.model, embedding_type='positional')
  return config
