"""score_sde (Flax) checkpoints: a msgpack ``State`` whose parameter names are already ours.

The files are untrusted input; msgpack (``flax.serialization``) holds only arrays and containers.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from etils import epath
from flax import serialization, traverse_util

from sde_jax.checkpoints.errors import CheckpointError, Path, check_tree, require_keys
from sde_jax.checkpoints.imported_state import ImportedState, Params


def read_flax(path: str) -> dict:
  """The msgpack State of a score_sde checkpoint (arrays and containers only)."""
  data = epath.Path(path).read_bytes()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types for truncated or corrupt input.
    raise CheckpointError(f'cannot read {path} as a score_sde (Flax msgpack) checkpoint: '
                          f'{type(e).__name__}: {e}') from e
  if not isinstance(state, dict):
    raise CheckpointError(f'{path}: expected a msgpack map (score_sde State), got '
                          f'{type(state).__name__}.')
  return state


def _flax_params(tree: Any, template: Mapping[Path, Any], source: str) -> Params:
  flat = traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {}
  check_tree(flat, template, source)
  return traverse_util.unflatten_dict({p: np.asarray(v, np.float32) for p, v in flat.items()})


def import_flax(path: str, template: Mapping[Path, Any]) -> ImportedState:
  """Params, EMA params and step of a score_sde checkpoint, checked against ``template``."""
  state = read_flax(path)
  require_keys(state, ('optimizer', 'params_ema', 'step'), f'{path} (score_sde State)')
  require_keys(state['optimizer'], ('target',), f'{path}: optimizer')
  return ImportedState(
      params=_flax_params(state['optimizer']['target'], template, f'{path} optimizer.target'),
      params_ema=_flax_params(state['params_ema'], template, f'{path} params_ema'),
      step=int(np.asarray(state['step'])))
