"""The 2-D toy distributions: eight Gaussians on a circle, a checkerboard, two rings."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def eight_gaussians(radius: float = 2.0, std: float = 0.1):
  """Eight equal Gaussians on a circle: (weights (8,), means (8, 2), std)."""
  angles = np.arange(8) * np.pi / 4
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return np.full(8, 1 / 8), means, std


def _sample_eight_gaussians(key: Array, n: int) -> Array:
  weights, means, std = eight_gaussians()
  k_c, k_z = jax.random.split(key)
  comp = jax.random.choice(k_c, len(weights), (n,), p=jnp.asarray(weights))
  return jnp.asarray(means, jnp.float32)[comp] + std * jax.random.normal(k_z, (n, 2))


def _sample_checkerboard(key: Array, n: int) -> Array:
  """Uniform on the black squares of a 4x4 board over [-2, 2]^2."""
  k_x, k_y, k_s = jax.random.split(key, 3)
  x = jax.random.uniform(k_x, (n,), minval=-2.0, maxval=2.0)
  y = jax.random.uniform(k_y, (n,), minval=0.0, maxval=1.0)
  row = jax.random.randint(k_s, (n,), 0, 2) * 2 - 2  # -2 or 0
  y = y + row + (jnp.floor(x) % 2)
  return jnp.stack([x, y], axis=1)


def _sample_rings(key: Array, n: int) -> Array:
  """Two concentric rings of radii 1 and 2 with Gaussian radial noise 0.05."""
  k_r, k_a, k_z = jax.random.split(key, 3)
  radius = jax.random.randint(k_r, (n,), 1, 3).astype(jnp.float32)
  angle = jax.random.uniform(k_a, (n,), maxval=2 * jnp.pi)
  radius = radius + 0.05 * jax.random.normal(k_z, (n,))
  return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1)


TOY_DATASETS: dict[str, Callable[[Array, int], Array]] = {
    'eight_gaussians': _sample_eight_gaussians,
    'checkerboard': _sample_checkerboard,
    'rings': _sample_rings,
}


def sample_toy(name: str, key: Array, n: int) -> Array:
  """``n`` points of the 2-D toy distribution ``name``.

  Args:
    name: one of ``TOY_DATASETS``.
    key: the draw's random key.
    n: how many points.

  Returns:
    float32 (n, 2).
  """
  if name not in TOY_DATASETS:
    raise ValueError(f'Unknown toy data set {name!r}; expected one of {sorted(TOY_DATASETS)}.')
  return TOY_DATASETS[name](key, n)
