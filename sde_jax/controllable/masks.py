"""The inpainting masks of ``sde-jax inpaint`` (``controllable.mask``)."""

from __future__ import annotations

import numpy as np

from sde_jax.sampling import pc


def _known_columns(h, w, fraction_known):
  return np.broadcast_to(np.arange(w)[None, :] < round(w * fraction_known), (h, w))


MASKS = {
    'right_half': lambda h, w: _known_columns(h, w, 0.5),  # the left half is known
    'left_half': lambda h, w: _known_columns(h, w, 0.5)[:, ::-1],
    'bottom_half': lambda h, w: _known_columns(w, h, 0.5).T,  # the top half is known
    'center': lambda h, w: ~(np.abs(np.arange(h)[:, None] - (h - 1) / 2) < h / 4)
                           | ~(np.abs(np.arange(w)[None, :] - (w - 1) / 2) < w / 4),
    'random': lambda h, w: np.random.default_rng(0).random((h, w)) < 0.5,
}


def make_mask(kind: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """A float32 mask of ``image_shape`` (H, W, C), 1 on known pixels, the same for all channels.

  ``kind`` names the *unknown* region: ``'right_half'``, ``'left_half'``, ``'bottom_half'``,
  ``'center'`` (the central square of half the side), or ``'random'`` (half of the pixels, a
  fixed draw).
  """
  h, w, c = image_shape
  known = pc.lookup(MASKS, kind, 'mask')(h, w)
  return np.repeat(np.asarray(known, np.float32)[..., None], c, axis=-1)
