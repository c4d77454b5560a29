"""Where each parameter of an :class:`~sde_jax.models.ncsnv2.NCSNv2` lies in a score_sde_pytorch
state dict: the PyTorch networks keep their modules as named attributes (``res1.0.conv1``,
``refine2.adapt_convs.1``, ...), which this maps from the Flax submodule names and creation order.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

TORCH_BUFFERS = frozenset({'sigmas'})
"""State-dict keys of the PyTorch NCSNv2 networks that are buffers (NCSN has none)."""

# Stage names of the PyTorch networks (shallow to deep) and of their RefineBlocks (deep first).
_TORCH_STAGES = {
    4: (('res1', 'res2', 'res3', 'res4'), ('refine1', 'refine2', 'refine3', 'refine4')),
    5: (('res1', 'res2', 'res3', 'res4', 'res5'),
        ('refine1', 'refine2', 'refine3', 'refine4', 'refine5')),
    6: (('res1', 'res2', 'res3', 'res31', 'res4', 'res5'),
        ('refine1', 'refine2', 'refine31', 'refine3', 'refine4', 'refine5')),
}


def _split(name: str) -> tuple[str, int]:
  """'ResidualBlock_3' -> ('ResidualBlock', 3)."""
  kind, index = name.rsplit('_', 1)
  return kind, int(index)


def _residual_child(name: str, siblings, down: bool) -> str:
  """Torch attribute of a submodule of a residual block (creation order of the original)."""
  kind, i = _split(name)
  if 'Norm' in kind:
    return f'normalize{i + 1}'
  if kind == 'ConvMeanPool':
    return ('conv2', 'shortcut')[i]
  n_convs = sum(1 for k in siblings if k.startswith('Conv_'))
  if down:
    return ('conv1', 'conv2', 'shortcut')[i]
  # Without resampling, the shortcut (if any) is created before the two convolutions.
  return (('conv1', 'conv2') if n_convs == 2 else ('shortcut', 'conv1', 'conv2'))[i]


def _refine_child(name: str, siblings) -> str:
  """Torch attribute of a submodule of a RefineBlock: input RCUs, fusion, CRP, output RCU."""
  kind, i = _split(name)
  if 'MSF' in kind:
    return 'msf'
  if 'CRP' in kind:
    return 'crp'
  n_rcu = sum(1 for k in siblings if 'RCUBlock' in k)
  return 'output_convs' if i == n_rcu - 1 else f'adapt_convs.{i}'


def _child(parent: str, name: str, siblings, stages) -> str:
  """Torch attribute of the Flax submodule ``name`` of module ``parent`` ('' at the top)."""
  kind, i = _split(name)
  if not parent:
    if 'ResidualBlock' in kind:
      return f'{stages[0][i // 2]}.{i % 2}'
    if 'RefineBlock' in kind:
      return stages[1][i]
    return 'normalizer' if 'Norm' in kind else ('begin_conv', 'end_conv')[i]
  parent_kind, parent_index = _split(parent)
  if 'ResidualBlock' in parent_kind:
    return _residual_child(name, siblings, down=parent_index % 2 == 0 and parent_index > 0)
  if 'RefineBlock' in parent_kind:
    return _refine_child(name, siblings)
  if 'RCUBlock' in parent_kind:  # two stages per unit: '{unit}_{stage}_conv'
    return f'{i // 2 + 1}_{i % 2 + 1}_{"norm" if "Norm" in kind else "conv"}'
  if 'MSF' in parent_kind or 'CRP' in parent_kind:
    return f'{"norms" if "Norm" in kind else "convs"}.{i}'
  if parent_kind == 'ConvMeanPool':
    return 'conv'
  if parent_kind == 'ConditionalInstanceNorm2dPlus':
    return 'embed'
  raise ValueError(f'{parent}/{name} has no counterpart in the PyTorch networks.')


def _reshape_norm(v: np.ndarray) -> np.ndarray:
  """(C,) PyTorch normalisation parameter -> (1, 1, 1, C)."""
  return np.reshape(v, (1, 1, 1, -1))


def _leaf(module: str, leaf: str):
  """Torch name and conversion (or None) of parameter ``leaf`` of Flax module ``module``."""
  kind = _split(module)[0]
  if kind in ('Conv', 'Embed'):
    return {'kernel': 'weight', 'bias': 'bias', 'embedding': 'weight'}[leaf], None
  if kind == 'InstanceNorm2dPlus':
    return leaf, _reshape_norm
  if kind == 'VarianceNorm2d' and leaf == 'scale':
    return 'alpha', _reshape_norm
  raise ValueError(f'{module}/{leaf} has no counterpart in the PyTorch networks (they support '
                   'the InstanceNorm++ and VarianceNorm normalisations only).')


def torch_layout(template, torch_keys: Sequence[str]) -> dict[tuple[str, ...], Any]:
  """Where each Flax parameter of an :class:`NCSNv2` lies in a score_sde_pytorch state dict.

  The Module should be the PyTorch one, ``ncsnv2_from_config(config, flavour='pytorch')``.

  Args:
    template: the nested dict of the Flax params (arrays or ``jax.ShapeDtypeStruct``).
    torch_keys: the state-dict keys, ``module.`` prefix removed.

  Returns:
    ``{flax leaf path: torch key}``, or ``(torch key, fn)`` where the value needs ``fn`` (a
    numpy function) instead of the generic conversion: the (C,) InstanceNorm++ / VarianceNorm
    parameters become (1, 1, 1, C).
  """
  n_stages = sum(1 for k in template if 'RefineBlock' in k)
  if n_stages not in _TORCH_STAGES:
    raise ValueError(f'No PyTorch network has {n_stages} RefineBlocks.')
  stages = _TORCH_STAGES[n_stages]
  layout = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]:
    names = tuple(p.key for p in path)
    parts, node, parent = [], template, ''
    for name in names[:-1]:
      parts.append(_child(parent, name, node, stages))
      node, parent = node[name], name
    torch_leaf, fn = _leaf(names[-2], names[-1])
    key = '.'.join(parts + [torch_leaf])
    layout[names] = key if fn is None else (key, fn)
  _check_available(layout, torch_keys)
  return layout


def _check_available(layout: dict, torch_keys: Sequence[str]) -> None:
  """Raises KeyError naming the Flax leaves whose PyTorch source is missing."""
  available = set(torch_keys)
  missing = {'/'.join(path): source if isinstance(source, str) else source[0]
             for path, source in layout.items()}
  missing = {path: key for path, key in missing.items() if key not in available}
  if missing:
    shown = ', '.join(f'{p} <- {k!r}' for p, k in list(missing.items())[:5])
    raise KeyError(f'{len(missing)} parameters have no source in the PyTorch state dict: '
                   f'{shown}{", ..." if len(missing) > 5 else ""}')
