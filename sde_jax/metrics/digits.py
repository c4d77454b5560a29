"""Are generated digits recognisable? A classifier trained on real digits judges them.

The judge is an RBF support-vector classifier with Platt-scaled probabilities, trained on
scikit-learn's 8x8 digits (16 gray levels),
trained on the training part and checked on held-out real digits, so its accuracy on real data
is the yardstick for what it says about samples. Samples of any size are average-pooled back to
8x8 before they are judged.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from sde_jax.data.digits import DIGIT_COLORS


@dataclasses.dataclass(frozen=True)
class DigitsJudgement:
  """What the judge says of a set of images."""

  confident_fraction: float  # share of images whose top class has probability >= threshold
  mean_top_probability: float
  class_counts: tuple[int, ...]  # predicted class of each image, counted per digit 0..9
  classes_covered: int  # digits predicted for at least 1% of the images
  real_accuracy: float  # the judge's accuracy on held-out real digits
  real_confident_fraction: float  # the same confidence measure on held-out real digits


def _to_8x8(images: np.ndarray) -> np.ndarray:
  """(N, S, S[, 1]) images in [0, 1] -> (N, 64) features on the 0..16 scale of the data set."""
  images = np.asarray(images)
  if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
    raise ValueError(f'digit images must be floats in [0, 1]; got {images.dtype} in '
                     f'[{images.min()}, {images.max()}] (uint8 images: divide by 255).')
  images = images.astype(np.float64)
  if images.ndim == 4:
    images = images[..., 0]
  n, size = images.shape[0], images.shape[1]
  if size % 8:
    raise ValueError(f'digit images must have a size that is a multiple of 8; got {size}.')
  f = size // 8
  pooled = images.reshape(n, 8, f, 8, f).mean(axis=(2, 4))
  return np.clip(pooled, 0.0, 1.0).reshape(n, 64) * 16.0


def intensity(images: np.ndarray) -> np.ndarray:
  """Digits in [0, 1] as the judge reads them: gray ones as they are, coloured ones
  ('digits_rgb', 3 channels) as their stroke intensity, the channel mean over the colours' 0.5."""
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 3:
    return np.clip(images.mean(-1, keepdims=True) / DIGIT_COLORS.mean(), 0.0, 1.0)
  return images


def color_classes(images: np.ndarray, min_intensity: float = 0.25) -> np.ndarray:
  """The class whose colour (``data.DIGIT_COLORS``) is nearest to each RGB digit's stroke colour.

  The stroke colour is the mean of the pixels whose intensity is at least ``min_intensity``,
  divided by their mean intensity (so it compares with the palette at full intensity); images
  with no such pixel get -1.

  Args:
    images: (N, S, S, 3) in [0, 1].
  """
  images = np.asarray(images, np.float64)
  level = intensity(images)[..., 0]
  stroke = level >= min_intensity
  count = stroke.sum(axis=(1, 2))
  color = (images * stroke[..., None]).sum(axis=(1, 2)) / np.maximum(count, 1)[:, None]
  color /= np.maximum((level * stroke).sum(axis=(1, 2)) / np.maximum(count, 1), 1e-6)[:, None]
  nearest = np.argmin(((color[:, None, :] - DIGIT_COLORS[None]) ** 2).sum(-1), axis=1)
  return np.where(count > 0, nearest, -1)


def _split():
  """scikit-learn's digits: the last 20% of each class held out."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x, y = digits.data, digits.target
  held_out = np.zeros(len(y), bool)
  for c in range(10):
    idx = np.flatnonzero(y == c)
    held_out[idx[int(0.8 * len(idx)):]] = True
  return x[~held_out], y[~held_out], x[held_out], y[held_out]


def judge_digits(images: np.ndarray, threshold: float = 0.9) -> DigitsJudgement:
  """Classifies ``images`` (N, S, S[, 1], values in [0, 1], S a multiple of 8).

  Args:
    images: generated digits in data space ([0, 1], white strokes on black as in the data).
    threshold: the top-class probability that counts as a confident label.
  """
  from sklearn.svm import SVC  # pylint: disable=g-import-not-at-top
  x_train, y_train, x_eval, y_eval = _split()
  # libsvm's pairwise-coupled Platt probabilities stay low on images that are no digit (uniform
  # noise: 0% confident), unlike CalibratedClassifierCV(SVC()), the replacement scikit-learn 1.9
  # suggests (60% of noise images confidently labelled). Hence probability=True, its deprecation
  # warning silenced, and scikit-learn < 1.11 (where it goes) in pyproject.toml.
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='.*probability.*deprecated', category=FutureWarning)
    judge = SVC(C=10.0, gamma=0.256, probability=True, random_state=0).fit(x_train / 16.0,
                                                                           y_train)
  real = judge.predict_proba(x_eval / 16.0)
  probs = judge.predict_proba(_to_8x8(images) / 16.0)
  top = probs.max(axis=1)
  counts = np.bincount(probs.argmax(axis=1), minlength=10)
  return DigitsJudgement(
      confident_fraction=float(np.mean(top >= threshold)),
      mean_top_probability=float(np.mean(top)),
      class_counts=tuple(int(c) for c in counts),
      classes_covered=int(np.sum(counts >= max(1, 0.01 * len(images)))),
      real_accuracy=float(np.mean(real.argmax(axis=1) == y_eval)),
      real_confident_fraction=float(np.mean(real.max(axis=1) >= threshold)))
