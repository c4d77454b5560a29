"""NCSN (Song & Ermon 2019) as published on CIFAR-10: 10 noise levels from 1 to 0.01."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=100, snr=0.316, lr=1e-3)
  _models.ncsn(config.model, sigma_max=1., num_scales=10)
  return config
