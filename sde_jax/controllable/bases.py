"""Orthonormal bases of the linear measurements: the identity (inpainting) and the original's
gray-first channel mixing (colorization)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Basis(NamedTuple):
  """An orthonormal change of basis of the channel axis.

  Attributes:
    decouple: ``x -> P^T x`` per pixel (channels last).
    couple: its inverse (and transpose), ``u -> P u``.
  """

  decouple: Callable[[Array], Array]
  couple: Callable[[Array], Array]


def _channel_basis(matrix: np.ndarray) -> Basis:
  m = np.asarray(matrix, np.float32)  # numpy: nothing may start JAX's backend at import
  return Basis(lambda x: jnp.einsum('...i,ij->...j', x, m),
               lambda u: jnp.einsum('...j,ij->...i', u, m))


# The original's decoupling matrix (columns): gray (1, 1, 1) / sqrt(3), then (-2, 1, 1) / sqrt(6)
# and (0, 1, -1) / sqrt(2); written exactly here, the original's float32 digits round to it.
GRAY_MATRIX = np.stack([np.ones(3) / np.sqrt(3), np.array([-2.0, 1.0, 1.0]) / np.sqrt(6),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2)], axis=1)

BASES = {'identity': Basis(lambda x: x, lambda u: u), 'gray': _channel_basis(GRAY_MATRIX)}


def gray_mask(shape: tuple[int, ...]) -> Array:
  """The colorization mask in the gray basis: the first channel known, the others not."""
  return jnp.zeros(shape, jnp.float32).at[..., 0].set(1.0)
