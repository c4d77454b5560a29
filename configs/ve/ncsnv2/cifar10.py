"""NCSNv2 (Song & Ermon 2020) as published on CIFAR-10: 232 noise levels from 50 to 0.01."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=5, snr=0.176, lr=1e-4, ema_rate=0.999)
  _models.ncsnv2(config.model, num_scales=232)
  return config
