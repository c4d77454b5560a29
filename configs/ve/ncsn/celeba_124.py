"""NCSN on CelebA with NCSNv2's techniques 1, 2 and 4 (noise levels, Langevin step size)."""

from configs import _models, _recipes, default_celeba_configs


def get_config():
  config = default_celeba_configs.get_default_configs()
  _recipes.annealed_langevin(config, n_steps_each=5, snr=0.128, lr=1e-3)
  _models.ncsn(config.model, num_scales=500)
  return config
