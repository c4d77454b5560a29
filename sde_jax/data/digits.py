"""The embedded data set: scikit-learn's 8x8 handwritten digits, upsampled, gray or coloured.

'digits_rgb' draws each class in its own colour (:data:`DIGIT_COLORS`), so that colorization has
something to recover and a way to be judged.
"""

from __future__ import annotations

import functools

import numpy as np

DIGITS_EVAL_FRACTION = 0.2  # the last 20% of each class is held out
# Colour of digit k in 'digits_rgb': hue 36 k degrees, every channel in [0, 1] and the channel mean
# 0.5 for every class, so the gray image (R + G + B) / 3 says nothing about the class's colour.
DIGIT_COLORS = (0.5 + 0.5 * np.cos(2 * np.pi * (np.arange(10)[:, None] / 10
                                                - np.arange(3)[None, :] / 3))).astype(np.float32)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear interpolation with half-pixel centres and clamped edges.

  For upsampling this is ``jax.image.resize(..., 'linear')`` along one axis.
  """
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  frac = pos - lo
  matrix = np.zeros((n_out, n_in))
  np.add.at(matrix, (np.arange(n_out), lo), 1 - frac)
  np.add.at(matrix, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), frac)
  return matrix


def _held_out(labels: np.ndarray, fraction: float) -> np.ndarray:
  """Boolean mask of the last ``fraction`` (rounded) of each class, in data-set order."""
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    mask[rows[len(rows) - round(fraction * len(rows)):]] = True
  return mask


@functools.lru_cache(maxsize=8)
def digits_arrays(image_size: int = 16, colored: bool = False):
  """scikit-learn's 1797 8x8 handwritten digits, bilinearly upsampled, split train/eval.

  Pixel values 0..16 are divided by 16, then each image is upsampled to ``image_size`` with
  bilinear interpolation (half-pixel centres, the same as ``jax.image.resize(..., 'linear')``),
  which keeps values in [0, 1]. The last 20% of each class (in scikit-learn's order) is held out
  for eval; both parts keep scikit-learn's order. The arrays are read-only and cached.

  Args:
    image_size: output height and width, at least 8.
    colored: RGB digits ('digits_rgb'): the stroke of digit k has the colour DIGIT_COLORS[k].

  Returns:
    (x_train, y_train, x_eval, y_eval): float32 (N, image_size, image_size, 1 or 3) and int32
    (N,); 1438 train and 359 eval examples.
  """
  if image_size < 8:
    raise ValueError(f'image_size must be at least 8 (the digits are 8x8), got {image_size}.')
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  resize = _bilinear_matrix(8, image_size)
  x = np.einsum('ih,nhw,jw->nij', resize, digits.images / 16.0, resize)
  x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  if colored:
    x = x * DIGIT_COLORS[y][:, None, None, :]
  held_out = _held_out(y, DIGITS_EVAL_FRACTION)
  arrays = (x[~held_out], y[~held_out], x[held_out], y[held_out])
  for a in arrays:
    a.setflags(write=False)
  return arrays


def digits_split(dataset: str, image_size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of the 'train' or 'eval' part of 'digits' or 'digits_rgb'.

  Args:
    dataset: 'digits' or 'digits_rgb'.
    image_size: output height and width, at least 8.
    split: 'train' or 'eval'.

  Returns:
    The arrays of :func:`digits_arrays` for that split (read-only, cached).
  """
  x_train, y_train, x_eval, y_eval = digits_arrays(image_size, colored=dataset == 'digits_rgb')
  return (x_train, y_train) if split == 'train' else (x_eval, y_eval)
