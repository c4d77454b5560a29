"""Noise-conditional Wide-ResNet classifier ``p_t(y | x_t)`` for class-conditional sampling.

The network of the original controllable-generation code (Zagoruyko & Komodakis' WRN with
GroupNorm in place of BatchNorm), conditioned on the noise level through Gaussian Fourier
features of ``log sigma``: ``temb = Dense(swish(Dense(fourier(log sigma))))``, added after the
first convolution of every residual block as ``Dense(swish(temb))``. Depth ``6 b + 4`` for ``b``
blocks per group, widths ``16 k, 32 k, 64 k``: WRN-28-10 is ``b = 4, k = 10``.

Submodule class names and explicit names (``init_conv``, ``init_bn``, ``conv1``, ``bn_2``,
``conv2``, ``pre-pool-bn``) follow the original, so parameter paths equal those of its
checkpoints. The input ``noise_level`` is :func:`classifier_noise_level` of the caller's SDE, in
training (:mod:`sde_jax.controllable.train_classifier`) and in sampling (:mod:`sde_jax.controllable`) alike.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models import compute
from sde_jax.models.layers import GaussianFourierProjection, GroupNorm
from sde_jax.sde import SDE

Array = jax.Array

# He initialisation of the convolutions (fan_out, gain 2), as in the original WRN code.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _head_init(key, shape, dtype=jnp.float32):
  """U[-1/sqrt(n_out), 1/sqrt(n_out)] for the logits layer (the AutoAugment WRN's rule)."""
  bound = 1.0 / np.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _norm(x: Array, name: str, relu: bool = True) -> Array:
  """GroupNorm with ``min(C // 4, 32)`` groups and epsilon 1e-5, then ReLU."""
  x = GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
  return nn.relu(x) if relu else x


def _shortcut(block: Array, skip: Array) -> Array:
  """``block + skip`` with ``skip`` average-pooled and zero-padded in channels to fit."""
  if block.shape[-1] != skip.shape[-1]:
    stride = skip.shape[1] // block.shape[1]
    skip = nn.avg_pool(skip, (stride, stride), (stride, stride))
    skip = jnp.pad(skip, [(0, 0)] * 3 + [(0, block.shape[-1] - skip.shape[-1])])
  return block + skip


class WideResnetBlock(nn.Module):
  """Pre-activation residual block: norm, conv, + time projection, norm, conv."""

  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    if self.activate_before_residual:
      x = _norm(x, 'init_bn')  # the shortcut then carries the activated input
      h = x
    else:
      h = _norm(x, 'init_bn')
    h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding='SAME',
                use_bias=False, kernel_init=_conv_init, name='conv1', dtype=h.dtype)(h)
    h += nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :].astype(h.dtype)
    h = _norm(h, 'bn_2')
    h = nn.Conv(self.channels, (3, 3), padding='SAME', use_bias=False, kernel_init=_conv_init,
                name='conv2', dtype=h.dtype)(h)
    return _shortcut(h, x)


class WideResnetGroup(nn.Module):
  """``blocks`` residual blocks at one width; the first one strides."""

  blocks: int
  channels: int
  stride: int = 1
  activate_before_residual: bool = False
  remat: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    block = compute.remat_block(WideResnetBlock, self.remat)
    for i in range(self.blocks):
      x = block(self.channels, self.stride if i == 0 else 1,
                self.activate_before_residual and i == 0)(x, temb)
    return x


class WideResNet(nn.Module):
  """Noise-conditional WRN-(6 blocks_per_group + 4)-channel_multiplier.

  Attributes:
    blocks_per_group: residual blocks in each of the three groups.
    channel_multiplier: width factor k (widths 16 k, 32 k, 64 k).
    num_classes: number of logits.
    embedding_size: Fourier features of log sigma (the time embedding is 4x as wide).
    fourier_scale: std of the Fourier frequencies.
    dtype: the compute dtype (:mod:`sde_jax.models.compute`); the logits are float32.
    remat: None or a key of ``compute.REMAT_POLICIES``, applied to each residual block.
  """

  blocks_per_group: int = 4
  channel_multiplier: int = 10
  num_classes: int = 10
  embedding_size: int = 128
  fourier_scale: float = 16.0
  dtype: Any = jnp.float32
  remat: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, noise_level: Array, train: bool = False) -> Array:
    """Logits ``(B, num_classes)`` of images ``x`` (NHWC) at noise levels of shape ``(B,)``.

    The images are standardised per example first, ``(x - mean) / max(std, 1 / sqrt(D))``,
    so the logits do not depend on the data's scale or offset. ``train`` is accepted for the
    models' common call signature; the network has no dropout or batch statistics.
    """
    del train
    dim = np.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(dim))
    temb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(
        jnp.log(noise_level))
    temb = nn.Dense(4 * self.embedding_size)(temb)
    temb = nn.Dense(4 * self.embedding_size)(nn.swish(temb))
    k = self.channel_multiplier
    h = nn.Conv(16, (3, 3), padding='SAME', use_bias=False, kernel_init=_conv_init,
                name='init_conv', dtype=self.dtype)(compute.cast_in(x, self.dtype))
    group = functools.partial(WideResnetGroup, self.blocks_per_group, remat=self.remat)
    h = group(16 * k, activate_before_residual=True)(h, temb)
    h = group(32 * k, 2)(h, temb)
    h = group(64 * k, 2)(h, temb)
    h = _norm(h, 'pre-pool-bn')
    h = jnp.mean(compute.cast_out(h), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_head_init)(h)


def wideresnet_from_config(config) -> WideResNet:
  """The classifier of ``config.classifier`` (blocks_per_group, channel_multiplier,
  num_classes, and optionally embedding_size and fourier_scale)."""
  c = config.classifier
  return WideResNet(blocks_per_group=int(c.blocks_per_group),
                    channel_multiplier=int(c.channel_multiplier),
                    num_classes=int(c.num_classes),
                    embedding_size=int(c.get('embedding_size', 128)),
                    fourier_scale=float(c.get('fourier_scale', 16.0)),
                    **compute.options_from_config(config.model))


CLASSIFIERS = {'wideresnet': wideresnet_from_config}


def get_classifier(config) -> nn.Module:
  """The classifier named by ``config.classifier.name``."""
  if 'classifier' not in config:
    raise ValueError('The config has no `classifier` section; use a config that defines one '
                     '(e.g. configs/digits/classifier.py).')
  name = config.classifier.name
  if name not in CLASSIFIERS:
    raise ValueError(f'config.classifier.name={name!r} is not a known classifier; expected one '
                     f'of {sorted(CLASSIFIERS)}.')
  return CLASSIFIERS[name](config)


def classifier_noise_level(sde: SDE, t: Array) -> Array:
  """The noise level a classifier sees: ``s(t) / m(t)``, shape (B,).

  ``x_t / m(t) = x_0 + (s / m) z``, so this is the VE sigma that gives the same
  signal-to-noise ratio: ``sigma(t)`` itself for VE, ``sqrt(1 - m^2) / m`` for VP. Training
  (:mod:`sde_jax.controllable.train_classifier`) and sampling both use this function.
  """
  scale, std = sde.marginal_prob(jnp.ones_like(t), t)
  return std / scale
