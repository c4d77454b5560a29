"""score_sde_pytorch checkpoints: a layout maps each Flax leaf to a state_dict key; values are
converted by the Flax leaf's name and rank.

The files are untrusted input; they are read without PyTorch by :mod:`torch_pickle`, which runs
nothing in them and refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from sde_jax.checkpoints import torch_pickle
from sde_jax.checkpoints.errors import (CheckpointError, Path, check_tree, config_hint, path_name,
                                        require_keys)
from sde_jax.checkpoints.imported_state import ImportedState, Params
from sde_jax.models import ddpm, ncsnv2_torch_layout

Layout = Callable[[list[Path], list[str]], dict[Path, Any]]
_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight'}


def is_torch_file(path: str) -> bool:
  """Whether ``path`` starts as a ``torch.save`` file does (zip, or a legacy pickle)."""
  with epath.Path(path).open('rb') as f:
    head = f.read(4)
  return head.startswith(b'PK') or head[:1] == b'\x80'


def read_torch(path: str, max_bytes: int | None = None) -> Any:
  """What ``torch.save`` wrote to ``path``, every tensor a numpy array, read without PyTorch.

  The same tree as ``torch.load(path, weights_only=True)`` gives (see :func:`torch_pickle.load`
  for the few differences); raises :class:`CheckpointError` for a damaged or unsafe file, or
  one whose arrays would take more than ``max_bytes`` (by default 4 times its size plus 16 MiB:
  raise it for a file you trust).
  """
  return torch_pickle.load(epath.Path(path).read_bytes(), str(path), max_bytes)


def to_flax_array(path: Path, value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax leaf at ``path``.

  Convolution weights OIHW -> HWIO; dense weights (out, in) -> (in, out); anything else as is.
  """
  leaf = path[-1]
  if leaf in ('kernel', 'weight') and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf == 'kernel' and value.ndim == 2:
    return value.T
  return value


def all_modules_layout(order: list[Path], torch_keys: list[str]) -> dict[Path, str]:
  """Layout of networks whose PyTorch port keeps its layers in ``all_modules`` (a ModuleList
  in creation order): the k-th top-level Flax module with parameters is the k-th entry of
  ``all_modules`` with parameters, and inside it the submodule names agree
  (``ResnetBlockBigGANpp_3/Conv_1/kernel`` <- ``all_modules.7.Conv_1.weight``)."""
  indices = sorted({int(m.group(1)) for k in torch_keys
                    if (m := re.match(r'all_modules\.(\d+)\.', k))})
  tops = list(dict.fromkeys(p[0] for p in order))
  if len(tops) != len(indices):
    raise CheckpointError(
        f'the PyTorch checkpoint has {len(indices)} layers with parameters in all_modules, the '
        f'model built from the config has {len(tops)}; config fields that likely differ: '
        f'{config_hint("")}.')
  index_of = dict(zip(tops, indices))
  return {p: '.'.join(['all_modules', str(index_of[p[0]]), *p[1:-1],
                       _TORCH_LEAF.get(p[-1], p[-1])]) for p in order}


def unused_time_projections(order: list[Path], torch_keys: list[str]) -> set[str]:
  """Arrays a PyTorch NCSN++ / DDPM++ checkpoint holds but never uses: with
  ``conditional=False`` the port still creates each residual block's time projection
  (``all_modules.i.Dense_0``), and its forward pass skips it. Empty for conditional models."""
  if any(p[0] == 'Dense_0' for p in order):
    return set()
  return {k for k in torch_keys if re.fullmatch(r'all_modules\.\d+\.Dense_0\.(weight|bias)', k)}


def _strip_module_prefix(state_dict: Mapping[str, Any], source: str) -> dict[str, Any]:
  prefixed = [k.startswith('module.') for k in state_dict]
  if any(prefixed) and not all(prefixed):
    raise CheckpointError(f'{source}: some keys have the DataParallel prefix "module." and '
                          f'some do not.')
  return {(k[len('module.'):] if k.startswith('module.') else k): v
          for k, v in state_dict.items()}


def _torch_params(state_dict, layout, template, buffers, source) -> Params:
  """Flax params from ``state_dict``; keys in ``buffers`` are the only ones allowed unused."""
  used = {(v if isinstance(v, str) else v[0]) for v in layout.values()}
  unknown = [k for k in state_dict if k not in used and k not in buffers]
  if unknown:
    raise CheckpointError(f'{source}: arrays the model has no place for: {unknown[:8]}; '
                          f'config fields that likely differ: {config_hint("")}.')
  flat = {}
  for path, entry in layout.items():
    key, convert = (entry, to_flax_array) if isinstance(entry, str) else entry
    if key not in state_dict:
      raise CheckpointError(f'{source}: no array {key!r} for parameter {path_name(path)}; config '
                            f'fields that likely differ: {config_hint(path)}.')
    value = np.asarray(state_dict[key], np.float32)
    flat[path] = convert(path, value) if convert is to_flax_array else convert(value)
  check_tree(flat, template, source)
  return traverse_util.unflatten_dict(flat)


def _ema_state_dict(state_dict, ema, layout, frozen, unused, source) -> dict[str, Any]:
  """The model's state_dict with the EMA shadow params in place of the trainable ones.

  ``ema['shadow_params']`` lists the parameters that require grad in module order, which is
  the state_dict order without buffers and without frozen parameters (Fourier features); the
  ``unused`` (but trainable) arrays of the PyTorch network hold places in it too.
  """
  require_keys(ema, ('shadow_params',), f'{source}: ema')
  keys = {(v if isinstance(v, str) else v[0]): p for p, v in layout.items()}
  trainable = [k for k in state_dict if (k in keys and keys[k] not in frozen) or k in unused]
  shadow = ema['shadow_params']
  if len(shadow) != len(trainable):
    raise CheckpointError(f'{source}: ema.shadow_params has {len(shadow)} arrays, the model '
                          f'has {len(trainable)} trainable parameters; config fields that '
                          f'likely differ: {config_hint("")}.')
  out = dict(state_dict)
  for key, value in zip(trainable, shadow):
    if tuple(np.shape(value)) != tuple(np.shape(state_dict[key])):
      raise CheckpointError(f'{source}: ema.shadow_params entry for {key} has shape '
                            f'{np.shape(value)}, the model weight has {np.shape(state_dict[key])}.')
    out[key] = value
  return out


def import_torch(path: str, template: Mapping[Path, Any], order: list[Path], layout: Layout,
                 buffers: frozenset[str] = frozenset(),
                 max_bytes: int | None = None) -> ImportedState:
  """Params, EMA params and step of a score_sde_pytorch checkpoint.

  Args:
    path: the ``.pth`` file (``{'model', 'ema', 'step', ...}``).
    template: the model's flat parameters (path -> anything with ``.shape``).
    order: the parameter paths in the model's creation order.
    layout: maps ``(order, state_dict keys)`` to where each Flax leaf lies in the state_dict.
    buffers: state_dict keys that hold no parameter (allowed unused).
    max_bytes: the reader's budget for the file's arrays (:func:`read_torch`).

  Returns:
    The :class:`ImportedState`, in sde-jax's (the original Flax) layout.

  Raises:
    CheckpointError: unreadable file, or arrays missing, unused or of other shapes.
  """
  raw = read_torch(path, max_bytes)
  require_keys(raw, ('model', 'ema', 'step'), f'{path} (score_sde_pytorch checkpoint)')
  state_dict = _strip_module_prefix(raw['model'], path)
  mapping = layout(order, list(state_dict))
  unused = (unused_time_projections(order, list(state_dict)) if layout is all_modules_layout
            else set())
  if unused:
    logging.warning('%s: dropping %d arrays of per-block time projections that the PyTorch '
                    'network creates with conditional=False but never uses.', path, len(unused))
  frozen = {p for p in order if p[0].startswith('GaussianFourierProjection')}
  ema_dict = _ema_state_dict(state_dict, raw['ema'], mapping, frozen, unused, path)
  skip = buffers | unused
  return ImportedState(
      params=_torch_params(state_dict, mapping, template, skip, f'{path} model'),
      params_ema=_torch_params(ema_dict, mapping, template, skip, f'{path} ema'),
      step=int(np.asarray(raw['step'])))


def torch_layouts() -> dict[str, tuple[Layout, frozenset[str]]]:
  """Per model name: the PyTorch layout and the state_dict buffers that hold no parameter."""
  def by_template(torch_layout):
    return lambda order, keys: torch_layout(
        traverse_util.unflatten_dict({p: 0 for p in order}), keys)

  ncsn = (by_template(ncsnv2_torch_layout.torch_layout), ncsnv2_torch_layout.TORCH_BUFFERS)
  return {'ncsnpp': (all_modules_layout, frozenset({'sigmas'})),
          'ddpm': (all_modules_layout, ddpm.TORCH_BUFFERS),
          'ncsnv2_64': ncsn, 'ncsnv2_128': ncsn, 'ncsnv2_256': ncsn, 'ncsn': ncsn}
