"""The digits judge: confident on real digits, not on noise."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sde_jax.metrics.digits import judge_digits


def test_real_digits_are_recognised_and_noise_is_not():
  images = load_digits().images[-300:] / 16.0
  upsampled = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)[..., None]  # 16x16x1
  real = judge_digits(upsampled)
  assert real.real_accuracy > 0.95
  assert real.classes_covered == 10 and real.confident_fraction > 0.6
  noise = judge_digits(np.random.default_rng(0).uniform(size=(300, 16, 16, 1)))
  assert noise.confident_fraction < 0.1
  assert noise.mean_top_probability < real.mean_top_probability - 0.3


def test_images_outside_unit_range_are_refused():
  """uint8 images would be averaged on a 0..255 scale and clipped: all one class, silently."""
  with pytest.raises(ValueError, match=r'floats in \[0, 1\]; got uint8'):
    judge_digits(np.full((2, 16, 16, 1), 200, np.uint8))
  with pytest.raises(ValueError, match='floats in'):
    judge_digits(np.full((2, 16, 16, 1), 2.0))
