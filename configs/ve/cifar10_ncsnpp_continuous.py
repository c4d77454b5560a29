"""NCSN++ on CIFAR-10 trained with the continuous VE SDE (the paper's "NCSN++ cont.")."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.ve(config)
  _models.ncsnpp(config.model)
  return config
