"""Layers shared by the score networks."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def timestep_embedding(labels: jax.Array, dim: int, max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding ``[sin(l w_k), cos(l w_k)]``, ``w_k = max_positions^(-k / (dim/2 - 1))``.

  The float32 operations are those of both original codes, ``exp(k * -(log(P) / (d/2 - 1)))``;
  evaluating ``w_k`` in another order changes it by an ulp, which for labels near 999 moves the
  embedding by up to 6e-5.

  Args:
    labels: the per-example labels (time step indices or noise levels), shape (B,), any real
      dtype (computed in float32).
    dim: the embedding size (at least 4); an odd ``dim`` gets a final column of zeros.
    max_positions: ``P``, the base of the geometric frequencies: ``w_k`` runs from 1 down to
      ``1 / P``.

  Returns:
    float32 embeddings ``[sin | cos]``, shape (B, dim).
  """
  half = dim // 2
  step = math.log(max_positions) / (half - 1)
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -step)
  args = labels.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  return jnp.pad(emb, [[0, 0], [0, dim % 2]])


def ve_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
  """The descending geometric noise levels ``sigma_max ... sigma_min`` of SMLD / VE (float32).

  Args:
    sigma_min: the smallest level, the last entry.
    sigma_max: the largest level, the first entry.
    num_scales: the number of levels (``N`` of the SDE).

  Returns:
    float32 array of shape (num_scales,), geometrically spaced from ``sigma_max`` to
    ``sigma_min``: the reverse of ``VESDE.discrete_sigmas``.
  """
  return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)).astype(np.float32)


class GaussianFourierProjection(nn.Module):
  """Random Fourier features ``[sin(2 pi x W), cos(2 pi x W)]``, W ~ N(0, scale^2), not trained."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,),
                   jnp.float32)
    w = jax.lax.stop_gradient(w)
    proj = x[:, None] * w[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


ACTIVATIONS = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2),
    'swish': nn.swish,
}


def get_act(name: str):
  """The activation called ``name`` (case-insensitive): elu, relu, lrelu (slope 0.2), swish."""
  key = name.lower()
  if key not in ACTIVATIONS:
    raise ValueError(f'model.nonlinearity={name!r} is not known; expected one of '
                     f'{sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[key]


def default_init(scale: float = 1.0):
  """DDPM's initialiser: uniform variance scaling over ``fan_avg``; scale 0 means 1e-10."""
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def conv(x: jax.Array, features: int, kernel: int = 3, stride: int = 1, bias: bool = True,
         init_scale: float = 1.0) -> jax.Array:
  """A 'SAME'-padded ``nn.Conv`` with DDPM initialisation (zero bias), created in the caller.

  Called inside a compact module, it creates one ``Conv_k`` submodule, which is how the original
  networks name their convolutions. With stride 2 and an even size, 'SAME' pads one pixel at the
  bottom/right only, as the PyTorch port does explicitly.

  Args:
    x: inputs, NHWC.
    features: the output channel count.
    kernel: the side of the square kernel.
    stride: the stride along both spatial axes.
    bias: add a (zero-initialised) bias.
    init_scale: scale of the ``fan_avg`` variance-scaling kernel initialiser; 0 means 1e-10
      (a near-zero output layer, see :func:`default_init`).

  Returns:
    Shape ``(B, ceil(H / stride), ceil(W / stride), features)``, in the dtype of ``x`` (the
    float32 kernel is cast per use; :mod:`sde_jax.models.compute`).
  """
  return nn.Conv(features, kernel_size=(kernel, kernel), strides=(stride, stride), padding='SAME',
                 use_bias=bias, kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=x.dtype)(x)


conv3x3 = functools.partial(conv, kernel=3)
conv1x1 = functools.partial(conv, kernel=1)


class NIN(nn.Module):
  """Network-in-network: a dense layer over the channel axis, ``y = x W + b``, computed in the
  dtype of ``x``."""

  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param('W', default_init(self.init_scale), (x.shape[-1], self.num_units), jnp.float32)
    b = self.param('b', nn.initializers.zeros, (self.num_units,), jnp.float32)
    w, b = w.astype(x.dtype), b.astype(x.dtype)
    return jnp.tensordot(x, w, axes=1) + b.reshape((1,) * (x.ndim - 1) + (-1,))


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Single-head attention over all ``H W`` positions: ``softmax(q k^T / sqrt(C)) v`` (NHWC).

  Args:
    q: queries, shape (B, H, W, C); ``C`` is the scale's channel count.
    k: keys, shape of ``q``.
    v: values, shape (B, H, W, C') with the positions of ``q``.

  Returns:
    For each query position the softmax-weighted mean of ``v`` over all positions,
    shape (B, H, W, C'), in the dtype of ``v``. The logits accumulate and the softmax runs in
    float32 whatever the inputs' dtype; the weights are cast to ``v``'s dtype for the product.
  """
  b, h, w, c = q.shape
  logits = jnp.einsum('bhwc,bHWc->bhwHW', q, k,
                      preferred_element_type=jnp.float32) * (c ** -0.5)
  weights = jax.nn.softmax(logits.reshape(b, h, w, h * w), axis=-1).reshape(b, h, w, h, w)
  return jnp.einsum('bhwHW,bHWc->bhwc', weights.astype(v.dtype), v)


class GroupNorm(nn.GroupNorm):
  """flax's GroupNorm, computed in float32, whose output keeps the input's dtype.

  The class name is flax's, so parameters keep their ``GroupNorm_k`` names.
  """

  def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
    return super().__call__(x, *args, **kwargs).astype(x.dtype)


def group_norm(channels: int) -> GroupNorm:
  """The networks' GroupNorm: ``min(C // 4, 32)`` groups, epsilon 1e-6."""
  return GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6)
