"""Normalisations of the NCSN / NCSNv2 score networks (NHWC).

Class names equal those of the original score_sde code, so that Flax names the parameters
(``InstanceNorm2dPlus_0/alpha`` ...) as in the original checkpoints.

InstanceNorm++ (Song & Ermon 2019) normalises each channel over space and adds back the
channel's mean, standardised across channels:

``y = gamma * ((x - mu_c) / sqrt(s_c^2 + 1e-5) + alpha * (mu_c - m) / sqrt(v + 1e-5)) + beta``

with ``mu_c, s_c^2`` the spatial mean and (biased) variance of channel ``c`` and ``m, v`` the
mean and variance of the ``mu_c`` over channels. score_sde computes ``v`` with ``ddof=0``;
score_sde_pytorch uses ``torch.var``'s default, ``ddof=1`` (the ``ddof`` field; likewise for the
spatial variance of VarianceNorm).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models.layers import GroupNorm

Array = jax.Array
EPS = 1e-5


def _near_one(key, shape, dtype=jnp.float32):
  """N(1, 0.02^2), the initial scales of the original normalisations."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _f32(x: Array) -> Array:
  """Normalisations compute in float32 whatever the network's dtype; they return the input's."""
  return x.astype(jnp.float32)


def _scale_and_shift(module: nn.Module, h: Array, x: Array, scale: str, scale_init: Callable,
                     bias: str) -> Array:
  """``h * scale (+ bias)`` with per-channel params of shape (1, 1, 1, C), in ``x``'s dtype.

  The params are created in ``module`` (a Module with a ``bias`` field), under the names the
  original gives them, scale first: the creation order sets their initial random draws.
  """
  shape = (1, 1, 1, x.shape[-1])
  h = h * module.param(scale, scale_init, shape)
  if module.bias:
    h = h + module.param(bias, nn.initializers.zeros, shape)
  return h.astype(x.dtype)


def _instance_normalise(x: Array) -> Array:
  """``(x - mu_c) / sqrt(s_c^2 + eps)`` per example and channel, statistics over H and W."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.var(x, axis=(1, 2), keepdims=True)
  return (x - mean) / jnp.sqrt(var + EPS)


def _standardised_means(x: Array, ddof: int) -> Array:
  """The channel means standardised across channels, shape (B, 1, 1, C)."""
  means = jnp.mean(x, axis=(1, 2))
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True, ddof=ddof)
  return ((means - m) / jnp.sqrt(v + EPS))[:, None, None, :]


class InstanceNorm2d(nn.Module):
  """Instance normalisation with a learnt per-channel scale (and bias)."""

  bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = _instance_normalise(_f32(x))
    return _scale_and_shift(self, h, x, 'scale', nn.initializers.ones, 'bias')


class VarianceNorm2d(nn.Module):
  """Division by the per-channel spatial standard deviation (no centring), learnt scale.

  ``ddof`` of the spatial variance: 0 in score_sde, 1 in score_sde_pytorch.
  """

  bias: bool = False
  ddof: int = 0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = _f32(x)
    h = x32 / jnp.sqrt(jnp.var(x32, axis=(1, 2), keepdims=True, ddof=self.ddof) + EPS)
    return _scale_and_shift(self, h, x, 'scale', _near_one, 'bias')


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ (see the module docstring); parameters of shape (1, 1, 1, C)."""

  bias: bool = True
  ddof: int = 0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = _f32(x)
    alpha = self.param('alpha', _near_one, (1, 1, 1, x.shape[-1]))
    h = _instance_normalise(x32) + _standardised_means(x32, self.ddof) * alpha
    return _scale_and_shift(self, h, x, 'gamma', _near_one, 'beta')


class ConditionalInstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ whose ``gamma, alpha, beta`` are looked up per noise level ``y``.

  One ``nn.Embed`` table of shape ``(num_classes, 3C)`` (``2C`` without bias) holds
  ``[gamma | alpha | beta]`` for each level, the layout of the original code (and of the
  PyTorch port's ``embed.weight``).
  """

  num_classes: int = 10
  bias: bool = True
  ddof: int = 0

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    c = x.shape[-1]
    n_scaled = 2 * c

    def init(key, shape, dtype=jnp.float32):
      scales = _near_one(key, (shape[0], n_scaled), dtype)
      return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - n_scaled), dtype)], -1)

    table = nn.Embed(self.num_classes, (3 if self.bias else 2) * c, embedding_init=init)
    coeffs = table(y.astype(jnp.int32))[:, None, None, :]
    gamma, alpha = coeffs[..., :c], coeffs[..., c:2 * c]
    x32 = _f32(x)
    h = _instance_normalise(x32) + _standardised_means(x32, self.ddof) * alpha
    h = gamma * h
    return (h + coeffs[..., 2 * c:] if self.bias else h).astype(x.dtype)


NORMALIZATIONS = {
    'InstanceNorm': InstanceNorm2d,
    'InstanceNorm++': InstanceNorm2dPlus,
    'VarianceNorm': VarianceNorm2d,
    # The original passes flax's GroupNorm with its defaults: 32 groups, epsilon 1e-6.
    'GroupNorm': functools.partial(GroupNorm, num_groups=32, epsilon=1e-6),
}


def get_normalization(name: str, conditional: bool = False, num_classes: int = 0,
                      flavour: str = 'jax') -> Callable[[], nn.Module]:
  """A constructor of the normalisation called ``name`` (the original ``model.normalization``).

  Args:
    name: 'InstanceNorm', 'InstanceNorm++', 'VarianceNorm' or 'GroupNorm'; only 'InstanceNorm++'
      has a conditional version.
    conditional: the noise-conditional version (called as ``norm(x, y)``), used by NCSN.
    num_classes: number of noise levels of the conditional version.
    flavour: 'jax' or 'pytorch': the variances that score_sde_pytorch computes unbiased
      (``torch.var``'s default) get ``ddof=1`` with 'pytorch'.

  Returns:
    A constructor of the Module (e.g. ``norm = get_normalization('GroupNorm')()``), with
    ``num_classes`` and ``ddof`` bound where the normalisation takes them.

  Raises:
    ValueError: for an unknown ``name``, or ``conditional`` with a name other than
      'InstanceNorm++'.
  """
  ddof = {'jax': 0, 'pytorch': 1}[flavour]
  if conditional:
    if name != 'InstanceNorm++':
      raise ValueError(f'model.normalization={name!r} has no conditional version; only '
                       "'InstanceNorm++' has.")
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes, ddof=ddof)
  if name not in NORMALIZATIONS:
    raise ValueError(f'model.normalization={name!r} is not known; expected one of '
                     f'{sorted(NORMALIZATIONS)}.')
  if name in ('InstanceNorm++', 'VarianceNorm'):
    return functools.partial(NORMALIZATIONS[name], ddof=ddof)
  return NORMALIZATIONS[name]
