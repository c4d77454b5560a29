"""A time-conditioned MLP score network for low-dimensional (toy) data."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models import compute, layers


class MLP(nn.Module):
  """``eps_theta(x, label)`` or ``s_theta(x, sigma)`` for flat data of shape (B, d).

  Attributes:
    features: widths of the hidden layers.
    embedding_type: ``'positional'`` (labels are ``t * 999`` or level indices) or ``'fourier'``
      (labels are noise scales sigma; ``log sigma`` is embedded, as NCSN++ does).
    embedding_dim: size of the label embedding.
    fourier_scale: scale of the random Fourier features.
    scale_by_sigma: divide the output by the label (VE, where the label is sigma).
    dtype: the compute dtype of the layers on ``x`` (:mod:`sde_jax.models.compute`); the
      embedding and the output are float32.
  """

  features: Sequence[int] = (256, 256, 256)
  embedding_type: str = 'positional'
  embedding_dim: int = 64
  fourier_scale: float = 16.0
  scale_by_sigma: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout or normalisation statistics
    if self.embedding_type == 'fourier':
      emb = layers.GaussianFourierProjection(self.embedding_dim // 2, self.fourier_scale)(
          jnp.log(labels))
    elif self.embedding_type == 'positional':
      emb = layers.timestep_embedding(labels, self.embedding_dim)
    else:
      raise ValueError(f'embedding_type={self.embedding_type!r}; expected fourier | positional.')
    emb = nn.Dense(self.features[0])(nn.swish(nn.Dense(self.features[0])(emb)))
    h = nn.Dense(self.features[0], dtype=self.dtype)(compute.cast_in(x, self.dtype))
    for width in self.features:
      h = nn.Dense(width, dtype=self.dtype)(
          nn.swish(h + nn.Dense(h.shape[-1])(emb).astype(self.dtype)))
    h = compute.cast_out(nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros,
                                  dtype=self.dtype)(nn.swish(h)))
    if self.scale_by_sigma:
      h = h / labels.reshape((-1,) + (1,) * (h.ndim - 1))
    return h
