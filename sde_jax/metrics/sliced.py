"""Sliced Wasserstein distance between two point clouds (a sample-quality error for toy data)."""

from __future__ import annotations

import numpy as np


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, num_projections: int = 256,
                       seed: int = 0) -> float:
  """``SW_2(x, y) = sqrt(E_u[W_2^2(u^T x, u^T y)])`` over random unit directions u.

  Each 1-D ``W_2`` is computed exactly from sorted projections; ``x`` and ``y`` are (n, d)
  and (m, d); unequal sizes are compared on a common grid of quantiles.

  Args:
    x: one point set, shape (n, d).
    y: the other, shape (m, d).
    num_projections: the number of random directions ``u`` (uniform on the unit sphere).
    seed: seed of the numpy generator drawing the directions; a fixed seed makes the distance
      deterministic.

  Returns:
    The Monte Carlo estimate of ``SW_2``, a Python float, in the units of the points.

  Raises:
    ValueError: if ``x`` and ``y`` are not (n, d) and (m, d) of one ``d``.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'Expected point sets (n, d) and (m, d), got {x.shape} and {y.shape}.')
  u = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
  u /= np.linalg.norm(u, axis=0, keepdims=True)
  px, py = np.sort(x @ u, axis=0), np.sort(y @ u, axis=0)
  if len(px) != len(py):
    q = (np.arange(max(len(px), len(py))) + 0.5) / max(len(px), len(py))
    px = np.quantile(px, q, axis=0, method='inverted_cdf')
    py = np.quantile(py, q, axis=0, method='inverted_cdf')
  return float(np.sqrt(np.mean((px - py)**2)))
