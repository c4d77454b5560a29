"""The building blocks of the NCSNv2 / NCSN RefineNets (score_sde's re-implementation): PyTorch-
initialised convolutions, the (conditional) residual blocks of the dilated ResNet backbone, and
RefineNet's residual conv units, multi-resolution fusion and chained residual pooling.

Class names and creation order are the original's: Flax names parameters after them
(``ResidualBlock_3/Conv_1/kernel`` ...), so they are the names of the original checkpoints.
``flavour`` ('jax' or 'pytorch') picks score_sde's or score_sde_pytorch's numerics where they
differ (see :mod:`sde_jax.models.ncsnv2`).

Each block's computation is one function (``_residual``, ``_rcu``, ``_fuse``, ``_chained_pool``)
that the plain and the conditional (``Cond...``) class both call; only their field declarations
repeat. They stay apart: each class name is part of the parameter names, and a shared base class
would put its fields first, changing the positional order the callers construct them with.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _torch_uniform(scale: float, fan_in: int):
  """U(-a, a) with ``a = sqrt(scale / fan_in)``: PyTorch's default for convolutions (scale 1)."""
  def init(key, shape, dtype=jnp.float32):
    a = np.sqrt(scale / fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)
  return init


def ncsn_conv(x: Array, features: int, kernel: int = 3, bias: bool = True, dilation: int = 1,
              init_scale: float = 1.0) -> Array:
  """A stride-1 'SAME' convolution (padding ``dilation`` for 3x3) with PyTorch's default
  initialisation, kernel and bias ``U(+-sqrt(init_scale / fan_in))``; created in the caller
  (auto-named ``Conv_k``).

  Args:
    x: NHWC input.
    features: output channels.
    kernel: kernel height and width.
    bias: whether the convolution has a bias.
    dilation: kernel dilation.
    init_scale: the scale of the initialisation (0 is taken as 1e-10).

  Returns:
    NHWC, ``features`` channels, the spatial size and dtype of ``x``.
  """
  init_scale = 1e-10 if init_scale == 0 else init_scale
  init = _torch_uniform(init_scale, kernel * kernel * x.shape[-1])
  return nn.Conv(features, kernel_size=(kernel, kernel), padding='SAME', use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=init, bias_init=init,
                 dtype=x.dtype)(x)


def resize_bilinear(x: Array, shape: Sequence[int], flavour: str) -> Array:
  """Bilinear resize of the spatial axes to ``shape``.

  'jax': ``jax.image.resize`` (half-pixel centres), as score_sde. 'pytorch': corner pixels
  aligned, ``src = dst (n_in - 1) / (n_out - 1)``, as ``F.interpolate(align_corners=True)``.

  Args:
    x: NHWC input.
    shape: the output (height, width).
    flavour: 'jax' or 'pytorch'.

  Returns:
    NHWC at ``shape``.
  """
  if flavour == 'jax':
    return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), 'bilinear')
  for axis, n_out in zip((1, 2), shape):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac_shape = [1] * x.ndim
    frac_shape[axis] = n_out
    frac = jnp.asarray((src - lo).reshape(frac_shape), x.dtype)  # keeps x's dtype
    x_lo, x_hi = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
    x = x_lo + (x_hi - x_lo) * frac
  return x


def _conditioned(normalizer: Callable[[], nn.Module], y: Array) -> Callable[[Array], Array]:
  """``h -> normalizer()(h, y)``: each call creates one noise-conditional norm in the caller."""
  return lambda h: normalizer()(h, y)


class ConvMeanPool(nn.Module):
  """Convolution, then 2x2 mean pooling."""

  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    h = nn.Conv(self.output_dim, kernel_size=(k, k), padding='SAME', use_bias=self.biases,
                dtype=x.dtype)(x)
    return (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2]) / 4.0


def _residual(x: Array, norm: Callable[[Array], Array], output_dim: int, resample: Optional[str],
              act: Callable, dilation: int) -> Array:
  """The body of the (conditional) residual block; ``norm(h)`` creates and applies one norm.

  'down' halves the resolution with mean pooling, or (dilation > 1) keeps it and only changes
  the width. The creation order of the convolutions is the original's.
  """
  h = act(norm(x))
  if resample == 'down':
    h = act(norm(ncsn_conv(h, x.shape[-1], dilation=dilation)))
    if dilation > 1:
      h = ncsn_conv(h, output_dim, dilation=dilation)
      return h + ncsn_conv(x, output_dim, dilation=dilation)
    h = ConvMeanPool(output_dim)(h)
    return h + ConvMeanPool(output_dim, kernel_size=1)(x)
  if resample is not None:
    raise ValueError(f'resample={resample!r}; expected None or "down".')
  shortcut = x
  if output_dim != x.shape[-1]:
    shortcut = ncsn_conv(x, output_dim, kernel=3 if dilation > 1 else 1, dilation=dilation)
  h = act(norm(ncsn_conv(h, output_dim, dilation=dilation)))
  return ncsn_conv(h, output_dim, dilation=dilation) + shortcut


class _ResidualFields(nn.Module):
  """Fields of the two residual blocks (separate classes: their names are parameter names)."""

  output_dim: int
  normalization: Callable
  resample: Optional[str] = None
  act: Callable = nn.elu
  dilation: int = 1


class ResidualBlock(_ResidualFields):
  """Pre-activation residual block of the NCSNv2 backbone."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda h: self.normalization()(h)  # noqa: E731
    return _residual(x, norm, self.output_dim, self.resample, self.act, self.dilation)


class ConditionalResidualBlock(_ResidualFields):
  """:class:`ResidualBlock` with noise-conditional normalisations (NCSN)."""

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    return _residual(x, _conditioned(self.normalization, y), self.output_dim, self.resample,
                     self.act, self.dilation)


def _rcu(x: Array, norm: Optional[Callable], features: int, n_blocks: int, n_stages: int,
         act: Callable) -> Array:
  """Residual conv units: ``n_blocks`` times ``x + (act -> conv) ** n_stages``."""
  for _ in range(n_blocks):
    residual = x
    for _ in range(n_stages):
      x = ncsn_conv(act(x if norm is None else norm(x)), features, bias=False)
    x = x + residual
  return x


class RCUBlock(nn.Module):
  """Residual conv units of RefineNet."""

  features: int
  n_blocks: int
  n_stages: int
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _rcu(x, None, self.features, self.n_blocks, self.n_stages, self.act)


class CondRCUBlock(nn.Module):
  """Residual conv units with a conditional normalisation before each activation (NCSN)."""

  features: int
  n_blocks: int
  n_stages: int
  normalizer: Callable
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    norm = _conditioned(self.normalizer, y)
    return _rcu(x, norm, self.features, self.n_blocks, self.n_stages, self.act)


def _fuse(xs: Sequence[Array], norm: Optional[Callable], shape: Sequence[int], features: int,
          interpolation: str, flavour: str) -> Array:
  """Multi-resolution fusion: sum of ``resize(conv(x_i))`` at ``shape``.

  The PyTorch networks ignore ``interpolation`` and always resize bilinearly."""
  total = jnp.zeros((xs[0].shape[0], *shape, features), xs[0].dtype)
  for x in xs:
    h = ncsn_conv(x if norm is None else norm(x), features)
    if interpolation == 'nearest_neighbor' and flavour == 'jax':
      h = jax.image.resize(h, (h.shape[0], *shape, h.shape[-1]), 'nearest')
    else:
      h = resize_bilinear(h, shape, flavour)
    total = total + h
  return total


class MSFBlock(nn.Module):
  """Multi-resolution fusion of RefineNet."""

  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    return _fuse(xs, None, self.shape, self.features, self.interpolation, self.flavour)


class CondMSFBlock(nn.Module):
  """Multi-resolution fusion with a conditional normalisation of each input (NCSN)."""

  shape: Sequence[int]
  features: int
  normalizer: Callable
  interpolation: str = 'bilinear'
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    norm = _conditioned(self.normalizer, y)
    return _fuse(xs, norm, self.shape, self.features, self.interpolation, self.flavour)


def _chained_pool(x: Array, norm: Optional[Callable], features: int, n_stages: int,
                  pool: Callable) -> Array:
  """Chained residual pooling: ``x + sum_i path_i``, ``path_i = conv(pool(path_{i-1}))``."""
  path = x
  for _ in range(n_stages):
    path = pool(path if norm is None else norm(path), window_shape=(5, 5), strides=(1, 1),
                padding='SAME')
    path = ncsn_conv(path, features, bias=False)
    x = path + x
  return x


class CRPBlock(nn.Module):
  """Chained residual (max) pooling of RefineNet."""

  features: int
  n_stages: int
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _chained_pool(self.act(x), None, self.features, self.n_stages, nn.max_pool)


class CondCRPBlock(nn.Module):
  """Chained residual (average) pooling with conditional normalisations (NCSN).

  Average pooling counts the zero padding, as PyTorch's ``AvgPool2d`` does by default."""

  features: int
  n_stages: int
  normalizer: Callable
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    norm = _conditioned(self.normalizer, y)
    return _chained_pool(self.act(x), norm, self.features, self.n_stages, nn.avg_pool)


class RefineBlock(nn.Module):
  """RefineNet block: RCUs on each input, fusion at ``output_shape``, CRP, output RCUs."""

  output_shape: Sequence[int]
  features: int
  act: Callable = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
    h = hs[0] if self.start else MSFBlock(self.output_shape, self.features, self.interpolation,
                                          self.flavour)(hs)
    h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
    return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act)(h)


class CondRefineBlock(nn.Module):
  """:class:`RefineBlock` with conditional normalisations (NCSN)."""

  output_shape: Sequence[int]
  features: int
  normalizer: Callable
  act: Callable = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    rcu = functools.partial(CondRCUBlock, n_stages=2, normalizer=self.normalizer, act=self.act)
    hs = [rcu(x.shape[-1], n_blocks=2)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = CondMSFBlock(self.output_shape, self.features, self.normalizer, self.interpolation,
                       self.flavour)(hs, y)
    h = CondCRPBlock(self.features, n_stages=2, normalizer=self.normalizer, act=self.act)(h, y)
    return rcu(self.features, n_blocks=3 if self.end else 1)(h, y)
