"""Deep DDPM++, VP SDE, CIFAR-10: ``cifar10_ddpmpp_continuous`` made deep."""

from configs import _recipes
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  config = cifar10_ddpmpp_continuous.get_config()
  _recipes.deep(config)
  return config
