"""The digits DDPM++ of ddpmpp_continuous.py on 'digits_rgb', the digits drawn in one colour per
class: an RGB model small enough for 2 CPU cores, for ``sde-jax colorize``.

The gray image (R + G + B) / 3 is the same for every colour, so a colorization is right when it
gives the digit its class's colour (``sde_jax.metrics.digits.color_classes``).
"""

from configs.digits import ddpmpp_continuous


def get_config():
  config = ddpmpp_continuous.get_config()
  config.data.update(dataset='digits_rgb', num_channels=3)
  return config
