"""NCSN on CIFAR-10 with NCSNv2's techniques 1, 2, 4 and 5 (all but the 1/sigma output scaling)."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=5, snr=0.176, lr=1e-3, ema_rate=0.999)
  _models.ncsn(config.model, num_scales=232)
  return config
