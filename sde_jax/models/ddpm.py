"""The DDPM U-Net (Ho et al. 2020) as re-implemented by score_sde, and its checkpoint layouts.

Submodule class names and creation order equal those of the original score_sde ``DDPM``, so Flax's
automatic names (``ResnetBlockDDPM_3/Conv_1/kernel`` ...) are those of the original Flax
checkpoints; :func:`torch_layout` maps them onto the PyTorch port's ``all_modules.{i}`` keys.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models import compute
from sde_jax.models.layers import (NIN, conv3x3, default_init, get_act, self_attention,
                                   timestep_embedding, ve_sigmas)
from sde_jax.models.normalization import get_normalization
from sde_jax.models.unet import UNet

Array = jax.Array


class ResnetBlockDDPM(nn.Module):
  """``x + conv(drop(act(norm(conv(act(norm(x))) + Dense(act(temb))))))``.

  ``x`` goes through a NIN (or, with ``conv_shortcut``, a 3x3 conv) when the width changes.
  """

  act: Callable
  normalize: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    h = conv3x3(self.act(self.normalize()(x)), out_ch)
    if temb is not None:
      temb_proj = nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))
      h = h + temb_proj[:, None, None, :].astype(h.dtype)  # float32 embedding, h's dtype
    h = self.act(self.normalize()(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=0.0)
    if x.shape[-1] != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, ``x + NIN(attention(NIN(norm(x)), ...))``."""

  normalize: Callable

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = self.normalize()(x)
    q, k, v = NIN(c)(h), NIN(c)(h), NIN(c)(h)
    return x + NIN(c, init_scale=0.0)(self_attention(q, k, v))


class Upsample(nn.Module):
  """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv3x3(h, x.shape[-1]) if self.with_conv else h


class Downsample(nn.Module):
  """x2 downsampling: a stride-2 3x3 convolution ('SAME': one pixel of padding at the bottom and
  right, as the PyTorch port pads explicitly) or 2x2 average pooling."""

  with_conv: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv:
      return conv3x3(x, x.shape[-1], stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='SAME')


class DDPM(UNet):
  """The DDPM U-Net. Fields are the original config's ``model.*`` names (``centered`` is
  ``data.centered``); the first seven are :class:`~sde_jax.models.unet.UNet`'s.

  Called as ``model(x, labels, train)`` with ``x`` NHWC in model space ([0, 1], mapped to
  [-1, 1] here unless ``centered``) and ``labels`` the time labels fed to the sinusoidal
  embedding (``999 t`` or ``(N - 1) t`` for VP). With ``scale_by_sigma`` (SMLD training) the
  output is divided by ``sigmas[labels]``, the descending VE levels, and ``labels`` must be
  integer indices.
  """

  centered: bool = True
  nonlinearity: str = 'swish'
  normalization: str = 'GroupNorm'
  scale_by_sigma: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  dtype: Any = jnp.float32  # compute dtype (sde_jax.models.compute)
  remat: Optional[str] = None  # None or a key of compute.REMAT_POLICIES

  def _temb(self, labels: Array, act: Callable) -> Optional[Array]:
    if not self.conditional:
      return None
    return self.embedding_mlp(timestep_embedding(labels, self.nf), act)

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
    act = get_act(self.nonlinearity)
    normalize = get_normalization(self.normalization)
    # ``train`` is the blocks' __call__ argument 3 (after self, x, temb), kept static.
    resnet = functools.partial(compute.remat_block(ResnetBlockDDPM, self.remat, (3,)), act=act,
                               normalize=normalize, dropout=self.dropout)
    attn = functools.partial(compute.remat_block(AttnBlock, self.remat), normalize=normalize)
    temb = self._temb(labels, act)
    n_levels = len(self.ch_mult)
    h = compute.cast_in(x if self.centered else 2 * x - 1.0, self.dtype)

    # Downsampling path; ``hs`` keeps every output for the skip connections.
    hs = [conv3x3(h, self.nf)]
    for level in range(n_levels):
      self.down_level(level, resnet, attn, hs, temb, train)
      if level != n_levels - 1:
        hs.append(Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

    h = self.bottleneck(resnet, attn, hs[-1], temb, train)

    for level in reversed(range(n_levels)):
      h = self.up_level(level, resnet, attn, h, hs, temb, train)
      if level != 0:
        h = Upsample(with_conv=self.resamp_with_conv)(h)
    assert not hs

    h = compute.cast_out(conv3x3(act(normalize()(h)), x.shape[-1], init_scale=0.0))
    if self.scale_by_sigma:
      sigmas = jnp.asarray(ve_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
      h = h / sigmas[labels.astype(jnp.int32)].reshape((-1, 1, 1, 1))
    return h


def ddpm_from_config(config, flavour: str = 'jax') -> DDPM:
  """The :class:`DDPM` described by an original-style config (``model.*``, ``data.centered``).

  ``flavour`` ('jax' or 'pytorch': which original's checkpoints the Module is for) changes
  nothing: the two originals compute the same DDPM.
  """
  if flavour not in ('jax', 'pytorch'):
    raise ValueError(f"flavour={flavour!r}; expected 'jax' or 'pytorch'.")
  m = config.model
  return DDPM(nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
              resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
              centered=config.data.centered, nonlinearity=m.nonlinearity,
              normalization=m.normalization, scale_by_sigma=m.scale_by_sigma,
              sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales,
              **compute.options_from_config(m))


# ---------------------------------------------------------------------------------------------
# PyTorch checkpoints (score_sde_pytorch): the network's modules sit in ``all_modules`` in
# creation order, the order of the Flax modules, so ``checkpoints.all_modules_layout`` maps them.

TORCH_BUFFERS = frozenset({'sigmas'})
"""State-dict keys of the PyTorch DDPM that are buffers, not parameters."""
