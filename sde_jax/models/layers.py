"""Layers shared by the score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(labels: jax.Array, dim: int, max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) labels, as in DDPM / the Transformer.

  ``emb[:, k] = sin(label * w_k)`` for ``k < dim/2`` and ``cos(label * w_k)`` after, with
  ``w_k = max_positions^(-k / (dim/2 - 1))``.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = labels.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class GaussianFourierProjection(nn.Module):
  """Random Fourier features ``[sin(2 pi x W), cos(2 pi x W)]``, W ~ N(0, scale^2), not trained."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    w = jax.lax.stop_gradient(w)
    proj = x[:, None] * w[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
