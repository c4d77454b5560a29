"""NCSNv2 (Song & Ermon 2020) as published on CelebA 64x64: 500 noise levels from 90 to 0.01."""

from configs import _models, _recipes, default_celeba_configs


def get_config():
  config = default_celeba_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=5, snr=0.128, lr=1e-4, ema_rate=0.999)
  _models.ncsnv2(config.model, num_scales=500)
  return config
