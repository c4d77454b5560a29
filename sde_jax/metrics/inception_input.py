"""The input of the FID Inception network: the original's normalisation and TensorFlow's resize.

Input convention of the original evaluation (``evaluation.run_inception_jit`` + the TF-Hub
module): uint8 images ``x`` become ``(x - 127.5) / 127.5``, and the module resizes them to
299x299 with TensorFlow 1's bilinear resize (``tf.compat.v1.image.resize``: no half-pixel
centres, no antialiasing) before the network. :func:`preprocess` does both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SIZE = 299
HIGHEST = jax.lax.Precision.HIGHEST


def resize_matrix(in_size: int, out_size: int, method: str = 'legacy') -> np.ndarray:
  """The ``(out_size, in_size)`` float32 matrix of TensorFlow's bilinear resize along one axis.

  ``legacy`` is ``tf.compat.v1.image.resize`` / ``resize_bilinear`` (``align_corners=False``,
  ``half_pixel_centers=False``): output pixel ``i`` samples input coordinate ``s = i * in/out``.
  ``half_pixel`` is TF2's ``tf.image.resize`` (no antialias): ``s = (i + 0.5) * in/out - 0.5``.
  Either way ``y_i = (1 - f) x_floor(s) + f x_ceil(s)``, ``f = s - floor(s)``, indices clamped
  to the image, with TensorFlow's float32 arithmetic for ``s``.

  Args:
    in_size: the input length along the axis, in pixels.
    out_size: the output length, in pixels.
    method: ``'legacy'`` (TF1, as the original evaluation) or ``'half_pixel'`` (TF2).

  Returns:
    ``m`` of shape ``(out_size, in_size)``, float32, with ``y = m @ x`` along the axis; each row
    sums to 1.

  Raises:
    ValueError: if ``method`` is neither.
  """
  if method not in ('legacy', 'half_pixel'):
    raise ValueError(f"resize method must be 'legacy' or 'half_pixel', got {method!r}.")
  scale = np.float32(in_size) / np.float32(out_size)
  i = np.arange(out_size, dtype=np.float32)
  s = i * scale if method == 'legacy' else (i + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(s)
  lower = np.clip(floor.astype(np.int64), 0, in_size - 1)
  upper = np.clip(np.ceil(s).astype(np.int64), 0, in_size - 1)
  frac = (s - floor).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), lower), np.float32(1) - frac)
  np.add.at(m, (np.arange(out_size), upper), frac)
  return m


def preprocess(images: jax.Array, size: int = IMAGE_SIZE, method: str = 'legacy') -> jax.Array:
  """uint8 (or [0, 255] float) NHWC images -> float32 ``(x - 127.5) / 127.5`` at ``size``.

  One-channel images are repeated to three. The resize is skipped when the images already
  have the target size (the legacy resize is then the identity).

  Args:
    images: shape (B, H, W, 1 or 3), uint8 or float with values in [0, 255].
    size: the output side in pixels (299 for the real network).
    method: the bilinear resize, ``'legacy'`` (TF1, the original's) or ``'half_pixel'`` (TF2);
      see :func:`resize_matrix`.

  Returns:
    float32 images in [-1, 1], shape (B, size, size, 3).
  """
  x = (jnp.asarray(images).astype(jnp.float32) - 127.5) / 127.5
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  height, width = x.shape[1:3]
  if (height, width) == (size, size):
    return x
  ry = jnp.asarray(resize_matrix(height, size, method))
  rx = jnp.asarray(resize_matrix(width, size, method))
  x = jnp.einsum('oh,bhwc->bowc', ry, x, precision=HIGHEST)
  return jnp.einsum('pw,bowc->bopc', rx, x, precision=HIGHEST)
