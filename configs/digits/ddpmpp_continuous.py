"""A small DDPM++ on the embedded digits with the continuous VP SDE: the README's main job."""

from configs import _models, _recipes, default_digits_configs


def get_config():
  config = default_digits_configs.get_default_configs()
  _recipes.vp(config)
  _models.ddpmpp(config.model, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(8,), dropout=0.)
  config.model.ema_rate = 0.999  # 0.9999 averages over more steps than this run has
  return config
