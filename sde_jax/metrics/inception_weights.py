"""Weights of the FID Inception network: pytorch-fid's state dict <-> Flax parameters.

Weights are never downloaded: :func:`load_params` reads pytorch-fid's released state dict (with
``checkpoints.read_torch``, which needs no PyTorch and runs nothing in the file) or an ``.npz`` of
the same arrays, and maps every tensor strictly onto the Flax parameters.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sde_jax import checkpoints
from sde_jax.checkpoints import CheckpointError
from sde_jax.metrics.inception_network import InceptionV3

WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')

# --------------------------------------------------------------------------------------------
# The state-dict layout.


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
