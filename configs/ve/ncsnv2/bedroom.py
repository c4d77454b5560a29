"""NCSNv2 (Song & Ermon 2020) as published on LSUN bedroom 128x128: 1086 levels from 190."""

from configs import _models, _recipes, default_lsun_configs


def get_config():
  config = default_lsun_configs.get_default_configs()
  config.training.batch_size = 128
  config.data.update(category='bedroom', image_size=128)
  _recipes.annealed_langevin(config, n_steps_each=3, snr=0.095, lr=1e-4, ema_rate=0.9999)
  _models.ncsnv2(config.model, name='ncsnv2_128', sigma_max=190., num_scales=1086)
  return config
