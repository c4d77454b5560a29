"""Deep NCSN++, sub-VP SDE, CIFAR-10: ``cifar10_ncsnpp_continuous`` made deep."""

from configs import _recipes
from configs.subvp import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  _recipes.deep(config)
  return config
