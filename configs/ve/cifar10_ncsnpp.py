"""NCSN++ on CIFAR-10 trained on SMLD's discrete noise levels (VE, positional time embedding)."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.ve(config, continuous=False)
  _models.ncsnpp(config.model, embedding_type='positional')
  return config
