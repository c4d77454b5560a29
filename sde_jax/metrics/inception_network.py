"""The FID Inception network: the 2015-12-05 Inception-v3 graph as Flax modules.

It differs from torchvision's / Keras' Inception-v3: 1008 classes, 3x3 average pools that
exclude the zero padding from the mean, and a 3x3 *max* pool in the pool branch of the last block
(``Mixed_7c``). Module and parameter names follow the PyTorch port (torchvision's Inception3), so
that a state-dict key names its Flax parameter: ``Mixed_5b.branch1x1.conv.weight`` is
``Mixed_5b/branch1x1/conv/kernel`` (:mod:`sde_jax.metrics.inception_weights` maps them).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.metrics.inception_input import HIGHEST, IMAGE_SIZE, preprocess

NUM_CLASSES = 1008


class FrozenBatchNorm(nn.Module):
  """Inference batch norm ``(x - mean) / sqrt(var + eps) * scale + bias``; all four are params."""

  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param('mean', nn.initializers.zeros, (c,), jnp.float32)
    var = self.param('var', nn.initializers.ones, (c,), jnp.float32)
    row = lambda v: v.reshape((1,) * (x.ndim - 1) + (c,))  # noqa: E731
    return (x - row(mean)) * row(scale * jax.lax.rsqrt(var + self.epsilon)) + row(bias)


class ConvBN(nn.Module):
  """Convolution without bias, batch norm (epsilon 1e-3), ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: Any = 'SAME'  # 'VALID', or 'SAME' (symmetric for the odd kernels of stride 1)
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel, strides=(self.strides, self.strides),
                padding=self.padding, use_bias=False, precision=self.precision, name='conv')(x)
    return nn.relu(FrozenBatchNorm(name='bn')(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TensorFlow's 'SAME' average pool divides by the number of real pixels in the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x: jax.Array, strides: int = 1) -> jax.Array:
  pad = ((1, 1), (1, 1)) if strides == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=pad)


def scaled(channels: int, width: float) -> int:
  """A channel count times ``width``, at least 1 (``width=1``: the real network's count)."""
  return max(1, int(channels * width))


def conv_bn(name: str, features: int, kernel, *, width: float, precision: Any, strides: int = 1,
            padding: Any = 'SAME') -> ConvBN:
  """A :class:`ConvBN` called ``name`` with ``features * width`` channels; ``kernel`` an int
  (square) or (height, width).

  Args:
    name: the module name, that of the PyTorch port (e.g. ``'branch1x1'``).
    features: the real network's output channel count, before scaling by ``width``.
    kernel: the kernel size, an int for a square kernel or ``(height, width)``.
    width: channel multiplier; the module gets ``max(1, int(features * width))`` channels.
    precision: the convolution's ``jax.lax.Precision``.
    strides: the stride along both spatial axes.
    padding: ``'SAME'``, ``'VALID'`` or explicit per-axis ``(low, high)`` pads, as ``nn.Conv``
      takes them.

  Returns:
    The unbound :class:`ConvBN` module.
  """
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return ConvBN(scaled(features, width), kernel, strides, padding, precision, name=name)


class _Block(nn.Module):
  """Shared fields of the mixed blocks: ``width`` scales every channel count."""

  width: float = 1.0
  precision: Any = HIGHEST

  def conv(self, name: str, features: int, kernel, strides: int = 1, padding: Any = 'SAME'):
    """:func:`conv_bn` with this block's ``width`` and ``precision``.

    Args:
      name: the module name, that of the PyTorch port (e.g. ``'branch1x1'``).
      features: the real network's output channel count, before scaling by ``width``.
      kernel: the kernel size, an int for a square kernel or ``(height, width)``.
      strides: the stride along both spatial axes.
      padding: ``'SAME'``, ``'VALID'`` or explicit pads, as ``nn.Conv`` takes them.

    Returns:
      The unbound :class:`ConvBN` module.
    """
    return conv_bn(name, features, kernel, width=self.width, precision=self.precision,
                   strides=strides, padding=padding)


class InceptionA(_Block):
  """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and average-pool branches."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    b1 = self.conv('branch1x1', 64, 1)(x)
    b5 = self.conv('branch5x5_2', 64, 5)(self.conv('branch5x5_1', 48, 1)(x))
    b3 = self.conv('branch3x3dbl_1', 64, 1)(x)
    b3 = self.conv('branch3x3dbl_3', 96, 3)(self.conv('branch3x3dbl_2', 96, 3)(b3))
    bp = self.conv('branch_pool', self.pool_features, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """35 -> 17 reduction (Mixed_6a): strided 3x3, strided double 3x3, max pool."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv('branch3x3', 384, 3, strides=2, padding='VALID')(x)
    bd = self.conv('branch3x3dbl_2', 96, 3)(self.conv('branch3x3dbl_1', 64, 1)(x))
    bd = self.conv('branch3x3dbl_3', 96, 3, strides=2, padding='VALID')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionC(_Block):
  """17x17 block (Mixed_6b-e): factorised 7x7 branches (1x7 then 7x1 and the reverse)."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = self.conv('branch1x1', 192, 1)(x)
    b7 = self.conv('branch7x7_1', c7, 1)(x)
    b7 = self.conv('branch7x7_3', 192, (7, 1))(self.conv('branch7x7_2', c7, (1, 7))(b7))
    bd = self.conv('branch7x7dbl_1', c7, 1)(x)
    for i, (features, kernel) in enumerate(
        [(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))], start=2):
      bd = self.conv(f'branch7x7dbl_{i}', features, kernel)(bd)
    bp = self.conv('branch_pool', 192, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """17 -> 8 reduction (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv('branch3x3_1', 192, 1)(x)
    b3 = self.conv('branch3x3_2', 320, 3, strides=2, padding='VALID')(b3)
    b7 = self.conv('branch7x7x3_1', 192, 1)(x)
    b7 = self.conv('branch7x7x3_3', 192, (7, 1))(self.conv('branch7x7x3_2', 192, (1, 7))(b7))
    b7 = self.conv('branch7x7x3_4', 192, 3, strides=2, padding='VALID')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionE(_Block):
  """8x8 block (Mixed_7b/c); the 2015 graph pools with an average in 7b and a max in 7c."""

  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    b1 = self.conv('branch1x1', 320, 1)(x)
    b3 = self.conv('branch3x3_1', 384, 1)(x)
    b3 = jnp.concatenate([self.conv('branch3x3_2a', 384, (1, 3))(b3),
                          self.conv('branch3x3_2b', 384, (3, 1))(b3)], axis=-1)
    bd = self.conv('branch3x3dbl_2', 384, 3)(self.conv('branch3x3dbl_1', 448, 1)(x))
    bd = jnp.concatenate([self.conv('branch3x3dbl_3a', 384, (1, 3))(bd),
                          self.conv('branch3x3dbl_3b', 384, (3, 1))(bd)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == 'avg' else _max_pool_3x3(x)
    bp = self.conv('branch_pool', 192, 1)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Logits(nn.Module):
  """The softmax layer's ``pool_3 @ kernel (+ bias)``; the bias exists either way."""

  num_classes: int
  use_bias: bool
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (x.shape[-1], self.num_classes), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.num_classes,), jnp.float32)
    logits = jnp.dot(x, kernel, precision=self.precision)
    return logits + bias[None, :] if self.use_bias else logits


class InceptionV3(nn.Module):
  """The FID Inception network on uint8 NHWC images of any size -> ``pool_3`` and ``logits``.

  Attributes:
    width: multiplies every channel count (1: the real network, whose ``pool_3`` has 2048
      features; e.g. 1/16 gives a tiny network with 128 for tests).
    num_classes: 1008 in the 2015 graph (1000 ImageNet classes plus 8 unused ones).
    logits_bias: add the softmax layer's bias to the logits. False by default: the Inception
      Score of the original implementation (OpenAI's, whose graph TF-GAN froze, and NVIDIA's
      port "to match the original") uses ``pool_3 @ W`` without it.
    image_size: the side the images are resized to (299 for the real network).
    resize_method: 'legacy' (TF1 bilinear, as the original) or 'half_pixel' (TF2).
    precision: of the convolutions and resizes; HIGHEST keeps float32 on TPUs and TF32 GPUs.
  """

  width: float = 1.0
  num_classes: int = NUM_CLASSES
  logits_bias: bool = False
  image_size: int = IMAGE_SIZE
  resize_method: str = 'legacy'
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    if self.image_size < 75:  # below this the strided convolutions run out of pixels
      raise ValueError(f'InceptionV3 needs image_size >= 75, got {self.image_size}.')
    x = preprocess(images, self.image_size, self.resize_method)
    blocks = dict(width=self.width, precision=self.precision)
    conv = functools.partial(conv_bn, padding='VALID', **blocks)
    x = conv('Conv2d_2a_3x3', 32, 3)(conv('Conv2d_1a_3x3', 32, 3, strides=2)(x))
    x = _max_pool_3x3(conv('Conv2d_2b_3x3', 64, 3, padding='SAME')(x), strides=2)
    x = conv('Conv2d_4a_3x3', 192, 3)(conv('Conv2d_3b_1x1', 80, 1)(x))
    x = _max_pool_3x3(x, strides=2)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(**blocks, pool_features=pool_features, name=name)(x)
    x = InceptionB(**blocks, name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(**blocks, channels_7x7=c7, name=name)(x)
    x = InceptionD(**blocks, name='Mixed_7a')(x)
    x = InceptionE(**blocks, pool='avg', name='Mixed_7b')(x)
    x = InceptionE(**blocks, pool='max', name='Mixed_7c')(x)
    pool_3 = jnp.mean(x, axis=(1, 2))  # the graph's 8x8 average pool over the 8x8 map
    logits = Logits(self.num_classes, self.logits_bias, self.precision, name='fc')(pool_3)
    return {'pool_3': pool_3, 'logits': logits}
