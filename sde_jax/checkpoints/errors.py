"""How a checkpoint that does not fit the model is reported: :class:`CheckpointError`, with the
parameter's name, both shapes and the config fields most likely to explain the mismatch."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

Path = tuple[str, ...]


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read, or that does not match the model."""


_HINTS = (
    (r'GaussianFourierProjection', 'model.nf, model.embedding_type'),
    (r'^Dense_[01]', 'model.nf, model.embedding_type, model.conditional'),
    (r'^Conv_0$', 'data.num_channels, model.nf'),
    (r'Dense', 'model.nf, model.ch_mult, model.conditional'),
    (r'Combine|Downsample|Upsample', 'model.progressive, model.progressive_input, '
     'model.progressive_combine, model.resamp_with_conv, model.fir'),
    (r'', 'model.nf, model.ch_mult, model.num_res_blocks, model.attn_resolutions, '
     'model.resblock_type, data.num_channels'),
)


def config_hint(path: Path | str) -> str:
  """The config fields most likely to explain a mismatch at parameter ``path``."""
  name = path if isinstance(path, str) else '/'.join(path)
  return next(fields for pattern, fields in _HINTS if re.search(pattern, name))


def path_name(path: Path) -> str:
  """A parameter path as its message shows it: ``'Conv_0/kernel'``."""
  return '/'.join(path)


def check_tree(found: Mapping[Path, Any], template: Mapping[Path, Any], source: str) -> None:
  """Raises :class:`CheckpointError` unless ``found`` has exactly the template's paths/shapes.

  Args:
    found: flat parameters read from a checkpoint (path -> array).
    template: the model's flat parameters (path -> anything with ``.shape``).
    source: what ``found`` was read from, for the message.

  Raises:
    CheckpointError: a parameter missing, unexpected or of another shape.
  """
  missing = [p for p in template if p not in found]
  extra = [p for p in found if p not in template]
  if missing or extra:
    raise CheckpointError(
        f'{source} does not match the model built from the config: {len(missing)} parameters '
        f'missing (first: {[path_name(p) for p in missing[:5]]}), {len(extra)} unexpected '
        f'(first: {[path_name(p) for p in extra[:5]]}). Check model.name, model.num_res_blocks, '
        f'model.ch_mult, model.attn_resolutions, model.resblock_type, model.progressive, '
        f'model.progressive_input, model.conditional, model.embedding_type.')
  for path, leaf in template.items():
    got = tuple(np.shape(found[path]))
    if got != tuple(leaf.shape):
      raise CheckpointError(
          f'{source}: parameter {path_name(path)} has shape {got}, the model expects '
          f'{tuple(leaf.shape)}; config fields that likely differ: {config_hint(path)}.')


def require_keys(mapping: Any, keys: tuple[str, ...], what: str) -> None:
  """Raises :class:`CheckpointError` unless ``mapping`` is a dict holding all of ``keys``.

  Args:
    mapping: what a file holds at some level.
    keys: the keys it must hold.
    what: the level's name, for the message.
  """
  if not isinstance(mapping, dict) or any(k not in mapping for k in keys):
    present = sorted(mapping) if isinstance(mapping, dict) else type(mapping).__name__
    raise CheckpointError(f'{what} must hold {list(keys)}; found {present}.')
