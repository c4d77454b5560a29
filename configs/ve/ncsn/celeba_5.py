"""NCSN on CelebA with NCSNv2's technique 5 only (EMA of the weights)."""

from configs import _models, _recipes, default_celeba_configs


def get_config():
  config = default_celeba_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=100, snr=0.316, lr=1e-3, ema_rate=0.999)
  _models.ncsn(config.model, sigma_max=1., num_scales=10)
  return config
