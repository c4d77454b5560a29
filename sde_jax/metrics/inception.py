"""The FID Inception network: the 2015-12-05 Inception-v3 graph in Flax.

This is the network behind TF-GAN's ``tfgan/eval/inception`` module (which the original
score_sde evaluation loads from TF-Hub), pytorch-fid's ``pt_inception-2015-12-05`` weights and
NVIDIA's ``inception-2015-12-05`` pickle. It differs from torchvision's / Keras' Inception-v3:
1008 classes, 3x3 average pools that exclude the zero padding from the mean, and a 3x3 *max*
pool in the pool branch of the last block (``Mixed_7c``).

Input convention of the original evaluation (``evaluation.run_inception_jit`` + the TF-Hub
module): uint8 images ``x`` become ``(x - 127.5) / 127.5``, and the module resizes them to
299x299 with TensorFlow 1's bilinear resize (``tf.compat.v1.image.resize``: no half-pixel
centres, no antialiasing) before the network. :func:`preprocess` does both.

Weights are never downloaded: :func:`load_params` reads pytorch-fid's released state dict (with
``checkpoints.read_torch``, which needs no PyTorch and runs nothing in the file) or an ``.npz`` of
the same arrays, and maps every tensor strictly onto the Flax parameters.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sde_jax import checkpoints
from sde_jax.checkpoints import CheckpointError

WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
IMAGE_SIZE = 299
NUM_CLASSES = 1008
HIGHEST = jax.lax.Precision.HIGHEST

# --------------------------------------------------------------------------------------------
# Input: the original's normalisation and TensorFlow's bilinear resize.


def resize_matrix(in_size: int, out_size: int, method: str = 'legacy') -> np.ndarray:
  """The ``(out_size, in_size)`` float32 matrix of TensorFlow's bilinear resize along one axis.

  ``legacy`` is ``tf.compat.v1.image.resize`` / ``resize_bilinear`` (``align_corners=False``,
  ``half_pixel_centers=False``): output pixel ``i`` samples input coordinate ``s = i * in/out``.
  ``half_pixel`` is TF2's ``tf.image.resize`` (no antialias): ``s = (i + 0.5) * in/out - 0.5``.
  Either way ``y_i = (1 - f) x_floor(s) + f x_ceil(s)``, ``f = s - floor(s)``, indices clamped
  to the image, with TensorFlow's float32 arithmetic for ``s``.

  Args:
    in_size: the input length along the axis, in pixels.
    out_size: the output length, in pixels.
    method: ``'legacy'`` (TF1, as the original evaluation) or ``'half_pixel'`` (TF2).

  Returns:
    ``m`` of shape ``(out_size, in_size)``, float32, with ``y = m @ x`` along the axis; each row
    sums to 1.

  Raises:
    ValueError: if ``method`` is neither.
  """
  if method not in ('legacy', 'half_pixel'):
    raise ValueError(f"resize method must be 'legacy' or 'half_pixel', got {method!r}.")
  scale = np.float32(in_size) / np.float32(out_size)
  i = np.arange(out_size, dtype=np.float32)
  s = i * scale if method == 'legacy' else (i + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(s)
  lower = np.clip(floor.astype(np.int64), 0, in_size - 1)
  upper = np.clip(np.ceil(s).astype(np.int64), 0, in_size - 1)
  frac = (s - floor).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), lower), np.float32(1) - frac)
  np.add.at(m, (np.arange(out_size), upper), frac)
  return m


def preprocess(images: jax.Array, size: int = IMAGE_SIZE, method: str = 'legacy') -> jax.Array:
  """uint8 (or [0, 255] float) NHWC images -> float32 ``(x - 127.5) / 127.5`` at ``size``.

  One-channel images are repeated to three. The resize is skipped when the images already
  have the target size (the legacy resize is then the identity).

  Args:
    images: shape (B, H, W, 1 or 3), uint8 or float with values in [0, 255].
    size: the output side in pixels (299 for the real network).
    method: the bilinear resize, ``'legacy'`` (TF1, the original's) or ``'half_pixel'`` (TF2);
      see :func:`resize_matrix`.

  Returns:
    float32 images in [-1, 1], shape (B, size, size, 3).
  """
  x = (jnp.asarray(images).astype(jnp.float32) - 127.5) / 127.5
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  height, width = x.shape[1:3]
  if (height, width) == (size, size):
    return x
  ry = jnp.asarray(resize_matrix(height, size, method))
  rx = jnp.asarray(resize_matrix(width, size, method))
  x = jnp.einsum('oh,bhwc->bowc', ry, x, precision=HIGHEST)
  return jnp.einsum('pw,bowc->bopc', rx, x, precision=HIGHEST)


# --------------------------------------------------------------------------------------------
# The network. Module and parameter names follow the PyTorch port (torchvision's Inception3),
# so that a state-dict key names its Flax parameter: ``Mixed_5b.branch1x1.conv.weight`` is
# ``Mixed_5b/branch1x1/conv/kernel``.


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


_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}


def torch_key(path: tuple[str, ...]) -> str:
  """The pytorch-fid state-dict key of the Flax parameter at ``path``
  (``Mixed_5b/branch1x1/bn/var`` <- ``Mixed_5b.branch1x1.bn.running_var``)."""
  return '.'.join([*path[:-1], _LEAF[path[-1]]])


def to_torch_layout(value: np.ndarray) -> np.ndarray:
  """A Flax parameter in the layout of its state-dict tensor: convolution kernels HWIO -> OIHW,
  the dense kernel (in, out) -> (out, in); ``checkpoints.to_flax_array`` is the inverse."""
  if value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  return value.T if value.ndim == 2 else value


# --------------------------------------------------------------------------------------------
# Weights.


def param_shapes(model: InceptionV3 | None = None) -> dict[tuple[str, ...], Any]:
  """``{path: ShapeDtypeStruct}`` of the model's parameters (traced, nothing computed)."""
  return dict(_param_shapes(model or InceptionV3()))


@functools.lru_cache(maxsize=8)
def _param_shapes(model: InceptionV3) -> dict[tuple[str, ...], Any]:
  images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.uint8)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  return traverse_util.flatten_dict(variables['params'])


def init_params(key: jax.Array, model: InceptionV3 | None = None) -> Any:
  """Random parameters (tests, the tiny variant): He-normal kernels, batch norm as the
  identity, zero biases. Activations still shrink with depth: ``pool_3`` has a scale of ~0.1 at
  full width and ~0.01 at width 1/16, which distinguishes images but is no real embedding.

  All kernels are cut from one normal draw: one small program instead of one per shape.
  """
  shapes = param_shapes(model)
  kernels = [p for p in shapes if p[-1] == 'kernel']
  sizes = [int(np.prod(shapes[p].shape)) for p in kernels]
  z = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
  flat = {p: np.full(s.shape, 1.0 if p[-1] in ('scale', 'var') else 0.0, np.float32)
          for p, s in shapes.items()}
  for path, start, size in zip(kernels, np.cumsum([0, *sizes[:-1]]), sizes):
    shape = shapes[path].shape
    flat[path] = z[start:start + size].reshape(shape) * np.float32(
        np.sqrt(2.0 / np.prod(shape[:-1])))
  return traverse_util.unflatten_dict(flat)


def _missing_weights(path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f'Inception weights not found at {path!r}. sde-jax never downloads them: fetch '
      f"pytorch-fid's FID Inception weights from {WEIGHTS_URL} and pass that file's path, "
      f'or an .npz converted from it once with '
      f'sde_jax.metrics.inception.convert_weights(pth_path, npz_path); see docs/evaluation.md.')


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict in ``path`` (pytorch-fid ``.pth`` or ``.npz``), as numpy arrays by key."""
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise _missing_weights(path)
  if path.endswith('.npz'):
    try:
      with epath.Path(path).open('rb') as f, np.load(f, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
      raise CheckpointError(f'cannot read {path} as an .npz of Inception weights: {e}') from e
  state = checkpoints.read_torch(path)
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise CheckpointError(f'{path} is not a state dict of tensors (pytorch-fid\'s '
                          f'pt_inception-2015-12-05 file is one).')
  return state


# Batch-norm step counters of a torchvision module; they play no part in inference.
_IGNORED_SUFFIX = '.num_batches_tracked'


def params_from_state_dict(state: Mapping[str, np.ndarray], model: InceptionV3 | None = None,
                           source: str = 'state dict') -> Any:
  """Flax parameters from a pytorch-fid state dict, strictly: every parameter filled with the
  tensor of the same shape, every tensor (but ``num_batches_tracked`` counters) used.

  Args:
    state: pytorch-fid state-dict tensors as numpy arrays by key, in PyTorch layout
      (convolutions OIHW, the dense kernel (out, in)); converted to float32 and Flax layout.
    model: the network the parameters are for; None for the real ``InceptionV3()``.
    source: what ``state`` was read from (e.g. the file path), for error messages.

  Returns:
    The Flax ``params`` tree of ``model``.

  Raises:
    CheckpointError: naming the tensors and parameters involved, and both shapes.
  """
  shapes = param_shapes(model)
  wanted = {torch_key(p): p for p in shapes}
  unknown = sorted(k for k in state if k not in wanted and not k.endswith(_IGNORED_SUFFIX))
  missing = sorted(k for k in wanted if k not in state)
  if unknown or missing:
    raise CheckpointError(
        f'{source} does not match the FID Inception network: {len(missing)} tensors missing '
        f'(first: {missing[:5]}), {len(unknown)} unexpected (first: {unknown[:5]}).')
  flat = {}
  for key, path in wanted.items():
    value = np.asarray(state[key])
    expected = to_torch_layout(np.empty(shapes[path].shape, np.uint8)).shape
    if value.shape != expected:
      raise CheckpointError(
          f'{source}: tensor {key} has shape {value.shape}, parameter {"/".join(path)} needs '
          f'{expected} (Flax layout {tuple(shapes[path].shape)}); check the width / num_classes '
          f'of the network.')
    flat[path] = checkpoints.to_flax_array(path, value.astype(np.float32))
  return traverse_util.unflatten_dict(flat)


def load_params(path: str | os.PathLike, model: InceptionV3 | None = None) -> Any:
  """The network's parameters from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
  (read without PyTorch) or an ``.npz`` of the same arrays under the same keys.

  Raises:
    FileNotFoundError: if ``path`` does not exist (the message says where to get the file).
    CheckpointError: if the file cannot be read or does not match the network.
  """
  return params_from_state_dict(read_weights(path), model, source=os.fspath(path))


def state_dict_from_params(params: Any) -> dict[str, np.ndarray]:
  """The inverse of :func:`params_from_state_dict` (for tests and the tiny variant's files)."""
  flat = traverse_util.flatten_dict(params)
  return {torch_key(p): to_torch_layout(np.asarray(v)) for p, v in flat.items()}


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Writes the weights in ``src`` (pytorch-fid's ``.pth``) to the ``.npz`` ``dst``, under the
  same keys and in the same layout, after checking that they fit the network (an ``.npz`` holds
  nothing but arrays, and loads without the pickle reader)."""
  params = load_params(src)
  np.savez(dst, **state_dict_from_params(params))
