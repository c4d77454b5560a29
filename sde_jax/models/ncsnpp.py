"""NCSN++ and DDPM++ (Song et al. 2021, section H): one U-Net with every knob of the paper.

DDPM++ is this module with ``resblock_type='biggan'``, positional embeddings, no FIR and no
progressive growing; NCSN++ adds FIR resampling, the input pyramid and Fourier features of
log sigma. Submodule class names and creation order follow the original score_sde code, so that
Flax's automatic names (``ResnetBlockBigGANpp_3/Conv_1/kernel`` ...) equal those of the
original checkpoints, and the order equals that of the PyTorch port's ``all_modules``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models import compute, resample
from sde_jax.models.layers import (NIN, GaussianFourierProjection, conv1x1, conv3x3,
                                   default_init, get_act, group_norm, self_attention,
                                   timestep_embedding, ve_sigmas)
from sde_jax.models.unet import UNet

Array = jax.Array

CHOICES = {
    'resblock_type': ('ddpm', 'biggan'),
    'progressive': ('none', 'output_skip', 'residual'),
    'progressive_input': ('none', 'input_skip', 'residual'),
    'progressive_combine': ('sum', 'cat'),
    'embedding_type': ('fourier', 'positional'),
    'attention_type': ('ddpm',),
}


def _merge(x: Array, h: Array, skip_rescale: bool) -> Array:
  """Residual sum, divided by sqrt(2) when ``skip_rescale`` (keeps the variance at 1)."""
  return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class Combine(nn.Module):
  """Merges the input pyramid into the features: 1x1 conv, then concatenation or sum."""

  method: str = 'cat'

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    h = conv1x1(x, y.shape[-1])
    return jnp.concatenate([h, y], axis=-1) if self.method == 'cat' else h + y


class AttnBlockpp(nn.Module):
  """Self-attention over all positions with a residual connection (DDPM's block)."""

  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = group_norm(c)(x)
    q, k, v = NIN(c)(h), NIN(c)(h), NIN(c)(h)
    h = NIN(c, init_scale=self.init_scale)(self_attention(q, k, v))
    return _merge(x, h, self.skip_rescale)


class _Resample(nn.Module):
  """Fields shared by :class:`Upsample` and :class:`Downsample` (their class names are part of
  the parameter names, so the two stay separate classes)."""

  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)


class Upsample(_Resample):
  """x2 upsampling: nearest or FIR, optionally with a convolution (fused when FIR)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if self.fir:
      if self.with_conv:
        return resample.Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel)(x)
      return resample.upsample_2d(x, self.fir_kernel)
    h = resample.naive_upsample_2d(x)
    return conv3x3(h, out_ch) if self.with_conv else h


class Downsample(_Resample):
  """x2 downsampling: average pooling or FIR, optionally with a convolution."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if self.fir:
      if self.with_conv:
        return resample.Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel)(x)
      return resample.downsample_2d(x, self.fir_kernel)
    if self.with_conv:
      return conv3x3(x, out_ch, stride=2)
    return resample.naive_downsample_2d(x)


def _conditioned_convs(x: Array, temb: Optional[Array], out_ch: int, act: Callable,
                       dropout: float, init_scale: float, train: bool) -> Array:
  """The residual branch after its first activation: conv, + Dense(temb), norm, dropout, conv."""
  h = conv3x3(x, out_ch)
  if temb is not None:
    # The time projection is computed from the float32 embedding, then joins h in h's dtype.
    h += nn.Dense(out_ch, kernel_init=default_init())(act(temb))[:, None, None, :].astype(h.dtype)
  h = act(group_norm(out_ch)(h))
  h = nn.Dropout(dropout)(h, deterministic=not train)
  return conv3x3(h, out_ch, init_scale=init_scale)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM's residual block; a NIN (or 3x3 conv) shortcut when the channel count changes."""

  act: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = self.act(group_norm(c)(x))
    h = _conditioned_convs(h, temb, out_ch, self.act, self.dropout, self.init_scale, train)
    if c != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return _merge(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN's residual block, which can also resample by 2 (FIR or naive) in both branches."""

  act: Callable
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0

  def _resample(self, x: Array) -> Array:
    if self.up:
      return (resample.upsample_2d(x, self.fir_kernel) if self.fir
              else resample.naive_upsample_2d(x))
    if self.down:
      return (resample.downsample_2d(x, self.fir_kernel) if self.fir
              else resample.naive_downsample_2d(x))
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = self._resample(self.act(group_norm(c)(x)))
    x = self._resample(x)
    h = _conditioned_convs(h, temb, out_ch, self.act, self.dropout, self.init_scale, train)
    if c != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch)
    return _merge(x, h, self.skip_rescale)


class NCSNpp(UNet):
  """The NCSN++ / DDPM++ U-Net. Fields are the original config's ``model.*`` names; the first
  seven are :class:`~sde_jax.models.unet.UNet`'s.

  Called as ``model(x, labels, train)`` with ``x`` NHWC in model space and ``labels`` the noise
  levels sigma (Fourier embedding of log sigma) or time labels (positional embedding). With
  ``scale_by_sigma`` the output is divided by sigma (for positional embeddings, by
  ``sigmas[labels]``, the discrete VE levels), so the network predicts ``-z / sigma``.
  """

  num_res_blocks: int = 4  # UNet's field, with the original NCSN++ configs' default
  fir: bool = True
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = 'biggan'
  progressive: str = 'none'
  progressive_input: str = 'residual'
  progressive_combine: str = 'sum'
  attention_type: str = 'ddpm'
  init_scale: float = 0.0
  embedding_type: str = 'fourier'
  fourier_scale: float = 16.0
  scale_by_sigma: bool = True
  nonlinearity: str = 'swish'
  conv_size: int = 3
  centered: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  dtype: Any = jnp.float32  # compute dtype (sde_jax.models.compute)
  remat: Optional[str] = None  # None or a key of compute.REMAT_POLICIES

  def __post_init__(self):
    for field, allowed in CHOICES.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f'model.{field}={getattr(self, field)!r} is not supported; expected '
                         f'one of {list(allowed)}.')
    if self.conv_size != 3:
      raise ValueError(f'model.conv_size={self.conv_size!r}: NCSN++ only has 3x3 convolutions.')
    get_act(self.nonlinearity)
    super().__post_init__()

  def _embedding(self, labels: Array, act: Callable):
    """Returns (time embedding or None, the sigma of each example)."""
    if self.embedding_type == 'fourier':
      temb = GaussianFourierProjection(self.nf, self.fourier_scale)(jnp.log(labels))
      used_sigmas = labels
    else:
      temb = timestep_embedding(labels, self.nf)
      sigmas = ve_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
      used_sigmas = jnp.asarray(sigmas)[labels.astype(jnp.int32)]
    if not self.conditional:
      return None, used_sigmas
    return self.embedding_mlp(temb, act), used_sigmas

  def _blocks(self, act: Callable):
    """(ResnetBlock, AttnBlock) constructors with the shared settings bound."""
    common = dict(act=act, dropout=self.dropout, init_scale=self.init_scale,
                  skip_rescale=self.skip_rescale)
    attn = functools.partial(compute.remat_block(AttnBlockpp, self.remat),
                             init_scale=self.init_scale, skip_rescale=self.skip_rescale)
    # ``train`` is __call__'s argument 3 (after self, x, temb): a Python flag, kept static.
    if self.resblock_type == 'ddpm':
      return functools.partial(compute.remat_block(ResnetBlockDDPMpp, self.remat, (3,)),
                               **common), attn
    return functools.partial(compute.remat_block(ResnetBlockBigGANpp, self.remat, (3,)),
                             fir=self.fir, fir_kernel=self.fir_kernel, **common), attn

  def _output_conv(self, h: Array, act: Callable, channels: int, init_scale: float) -> Array:
    return conv3x3(act(group_norm(h.shape[-1])(h)), channels, init_scale=init_scale)

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
    act = get_act(self.nonlinearity)
    temb, used_sigmas = self._embedding(labels, act)
    resnet, attn = self._blocks(act)
    resample_kw = dict(fir=self.fir, fir_kernel=self.fir_kernel)
    channels = x.shape[-1]
    n_levels = len(self.ch_mult)
    if not self.centered:
      x = 2 * x - 1.0
    x = compute.cast_in(x, self.dtype)

    # Downsampling path; ``hs`` keeps every output for the skip connections.
    input_pyramid = x
    hs = [conv3x3(x, self.nf)]
    for level in range(n_levels):
      self.down_level(level, resnet, attn, hs, temb, train)
      if level == n_levels - 1:
        continue
      if self.resblock_type == 'ddpm':
        h = Downsample(with_conv=self.resamp_with_conv, **resample_kw)(hs[-1])
      else:
        h = resnet(down=True)(hs[-1], temb, train)
      if self.progressive_input == 'input_skip':
        input_pyramid = Downsample(with_conv=False, **resample_kw)(input_pyramid)
        h = Combine(method=self.progressive_combine)(input_pyramid, h)
      elif self.progressive_input == 'residual':
        input_pyramid = Downsample(out_ch=h.shape[-1], with_conv=True,
                                   **resample_kw)(input_pyramid)
        h = input_pyramid = _merge(input_pyramid, h, self.skip_rescale)
      hs.append(h)

    h = self.bottleneck(resnet, attn, hs[-1], temb, train)

    # Upsampling path; ``pyramid`` is the output pyramid of progressive growing.
    pyramid = None
    for level in reversed(range(n_levels)):
      h = self.up_level(level, resnet, attn, h, hs, temb, train)
      if self.progressive == 'output_skip':
        if pyramid is not None:
          pyramid = Upsample(with_conv=False, **resample_kw)(pyramid)
        skip = self._output_conv(h, act, channels, self.init_scale)
        pyramid = skip if pyramid is None else pyramid + skip
      elif self.progressive == 'residual':
        if pyramid is None:
          pyramid = self._output_conv(h, act, h.shape[-1], 1.0)
        else:
          pyramid = Upsample(out_ch=h.shape[-1], with_conv=True, **resample_kw)(pyramid)
          h = pyramid = _merge(pyramid, h, self.skip_rescale)
      if level != 0:
        if self.resblock_type == 'ddpm':
          h = Upsample(with_conv=self.resamp_with_conv, **resample_kw)(h)
        else:
          h = resnet(up=True)(h, temb, train)
    assert not hs

    if self.progressive == 'output_skip':
      h = pyramid
    else:
      h = self._output_conv(h, act, channels, self.init_scale)
    h = compute.cast_out(h)
    if self.scale_by_sigma:
      h = h / used_sigmas.reshape((-1, 1, 1, 1))
    return h

