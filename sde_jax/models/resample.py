"""FIR up- and down-sampling (StyleGAN2's resamplers, as NCSN++ uses them), in pure JAX, NHWC.

Everything is built on :func:`upfirdn2d`: zero-insertion upsampling, padding (or cropping),
convolution with a 2-D FIR filter and decimation, the same four steps as ``scipy.signal.upfirdn``
applied along both image axes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models.layers import default_init

Array = jax.Array


def fir_filter(k: Sequence[float] | np.ndarray) -> np.ndarray:
  """A 2-D filter from ``k``: the outer product ``k k^T`` when 1-D, normalised to sum 1."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'FIR filter must be 1-D or square 2-D; got shape {k.shape}.')
  return k / np.sum(k)


def upfirdn2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0,
              pad1: int = 0) -> Array:
  """Upsample, pad, FIR-filter and downsample each channel of ``x`` (NHWC).

  With ``u = up`` and ``d = down``, along each spatial axis:
  1. insert ``u - 1`` zeros after every sample (length ``H u``);
  2. pad ``pad0`` zeros before and ``pad1`` after (negative values crop);
  3. convolve (true convolution, not correlation) with ``k``, keeping only outputs whose
     footprint lies inside the padded signal (length ``H u + pad0 + pad1 - len(k) + 1``);
  4. keep every ``d``-th sample, starting with the first.

  Args:
    x: inputs, shape (N, H, W, C).
    k: the 2-D FIR filter, shape (kh, kw) (see :func:`fir_filter`), used as given: no
      normalisation or gain; cast to the dtype of ``x``.
    up: the upsampling factor ``u`` (1: none).
    down: the downsampling factor ``d`` (1: none).
    pad0: zeros padded before the upsampled signal along each spatial axis (negative: cropped).
    pad1: zeros padded after it (negative: cropped).

  Returns:
    Shape ``(N, H', W', C)`` with ``H' = floor((H u + pad0 + pad1 - kh) / d) + 1`` (``W'``
    likewise with ``kw``), dtype of ``x``.
  """
  n, h, w, c = x.shape
  k = np.asarray(k, dtype=np.float32)
  # Channels go into the batch so that one single-channel convolution filters them all (several
  # times faster on CPU than a depthwise, feature-grouped one), and the zero insertion is the
  # convolution's input dilation, so no zero-filled array is built.
  y = jnp.transpose(x, (0, 3, 1, 2)).reshape(n * c, h, w, 1)
  y = jax.lax.conv_general_dilated(
      y, jnp.asarray(k[::-1, ::-1, None, None], x.dtype), window_strides=(down, down),
      padding=[(pad0, pad1 + up - 1)] * 2, lhs_dilation=(up, up),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.transpose(y.reshape(n, c, y.shape[1], y.shape[2]), (0, 2, 3, 1))


def upsample_2d(x: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
  """Upsample by ``factor`` with FIR filter ``k`` (gain ``factor^2`` keeps constants constant).

  Args:
    x: inputs, shape (N, H, W, C).
    k: the FIR filter, 1-D (separable, ``k k^T``) or square 2-D; normalised to sum 1.
    factor: the integer upsampling factor.

  Returns:
    Shape (N, H factor, W factor, C).
  """
  k = fir_filter(k) * factor ** 2
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
  """Downsample by ``factor`` after filtering with ``k``; ``k = (1, 1)`` is average pooling.

  Args:
    x: inputs, shape (N, H, W, C), with H and W multiples of ``factor``.
    k: the FIR filter, 1-D (separable, ``k k^T``) or square 2-D; normalised to sum 1.
    factor: the integer downsampling factor.

  Returns:
    Shape (N, H / factor, W / factor, C).
  """
  k = fir_filter(k)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling: every pixel repeated ``factor x factor`` times."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Average pooling over non-overlapping ``factor x factor`` windows."""
  n, h, w, c = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample_conv_2d(x: Array, w: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
  """A stride-``factor`` transposed convolution with ``w`` (HWIO), then FIR smoothing with ``k``.

  The transposed convolution is written as a correlation of the zero-interleaved input
  (``lhs_dilation``) with ``w`` under full padding, which is what a transposed convolution
  with the flipped, I/O-swapped kernel computes; the FIR step then shifts and crops the result
  to exactly ``factor`` times the input size.

  Args:
    x: inputs, shape (N, H, W, C_in).
    w: the kernel, shape (size, size, C_in, C_out) (HWIO, square).
    k: the FIR filter, 1-D (separable, ``k k^T``) or square 2-D; normalised to sum 1 and given
      the gain ``factor^2``.
    factor: the integer upsampling factor, the transposed convolution's stride.

  Returns:
    Shape (N, H factor, W factor, C_out).
  """
  size = w.shape[0]
  fk = fir_filter(k) * factor ** 2
  p = (fk.shape[0] - factor) - (size - 1)
  x = jax.lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding=[(size - 1, size - 1)] * 2,
      lhs_dilation=(factor, factor), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return upfirdn2d(x, fk, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: Array, w: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
  """FIR smoothing with ``k``, then a stride-``factor`` 'VALID' convolution with ``w`` (HWIO).

  The FIR step pads so that the strided convolution returns exactly ``1 / factor`` of the input
  size.

  Args:
    x: inputs, shape (N, H, W, C_in), with H and W multiples of ``factor``.
    w: the kernel, shape (size, size, C_in, C_out) (HWIO, square).
    k: the FIR filter, 1-D (separable, ``k k^T``) or square 2-D; normalised to sum 1.
    factor: the integer downsampling factor, the convolution's stride.

  Returns:
    Shape (N, H / factor, W / factor, C_out).
  """
  size = w.shape[0]
  fk = fir_filter(k)
  p = (fk.shape[0] - factor) + (size - 1)
  x = upfirdn2d(x, fk, pad0=(p + 1) // 2, pad1=p // 2)
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(factor, factor), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv2d(nn.Module):
  """A square convolution, optionally fused with FIR up- or down-sampling by 2.

  Parameters are ``weight`` (HWIO) and ``bias``, as in the original networks.
  """

  features: int
  kernel: int = 3
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.up and self.down:
      raise ValueError('Conv2d: up and down cannot both be set.')
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f'Conv2d: kernel must be a positive odd size; got {self.kernel}.')
    w = self.param('weight', default_init(),
                   (self.kernel, self.kernel, x.shape[-1], self.features),
                   jnp.float32).astype(x.dtype)  # computed in the input's dtype
    if self.up:
      x = upsample_conv_2d(x, w, self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
      x = x + bias.reshape(1, 1, 1, -1).astype(x.dtype)
    return x
