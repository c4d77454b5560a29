"""Checkpoints: import of the original score_sde / score_sde_pytorch files, and orbax storage.

The original files are untrusted input. The Flax ones are msgpack (``flax.serialization``),
which holds only arrays and containers; the PyTorch ones are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
Import is strict: every parameter of the model must be found with its exact shape, and every
array of the file must be used, or the import fails with the names and shapes involved.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from absl import logging
import numpy as np
from flax import serialization, traverse_util

from sde_jax import parallel

Path = tuple[str, ...]
Params = Any


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read, or that does not match the model."""


@dataclasses.dataclass(frozen=True)
class ImportedState:
  """What the original checkpoints hold that sde-jax uses: weights, EMA weights, step."""

  params: Params
  params_ema: Params
  step: int


# --------------------------------------------------------------------------------------------
# The model's parameter template, in creation order.


def param_template(model, shape: tuple[int, ...]) -> tuple[Params, list[Path]]:
  """Shapes of ``model``'s parameters for inputs of ``shape`` (no allocation), and their paths
  in the order the model creates them (the order of the PyTorch port's ``all_modules``)."""
  order: list[Path] = []

  def init():
    variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(0)},
                           jnp.zeros(shape, jnp.float32), jnp.ones((shape[0],), jnp.float32),
                           train=False)
    order.extend(traverse_util.flatten_dict(variables['params']))
    return variables['params']

  return jax.eval_shape(init), order


# --------------------------------------------------------------------------------------------
# Error messages that point at the config.

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


def _fmt(path: Path) -> str:
  return '/'.join(path)


def check_tree(found: Mapping[Path, Any], template: Mapping[Path, Any], source: str) -> None:
  """Raises :class:`CheckpointError` unless ``found`` has exactly the template's paths/shapes."""
  missing = [p for p in template if p not in found]
  extra = [p for p in found if p not in template]
  if missing or extra:
    raise CheckpointError(
        f'{source} does not match the model built from the config: {len(missing)} parameters '
        f'missing (first: {[_fmt(p) for p in missing[:5]]}), {len(extra)} unexpected (first: '
        f'{[_fmt(p) for p in extra[:5]]}). Check model.name, model.num_res_blocks, model.ch_mult, '
        f'model.attn_resolutions, model.resblock_type, model.progressive, '
        f'model.progressive_input, model.conditional, model.embedding_type.')
  for path, leaf in template.items():
    got = tuple(np.shape(found[path]))
    if got != tuple(leaf.shape):
      raise CheckpointError(
          f'{source}: parameter {_fmt(path)} has shape {got}, the model expects '
          f'{tuple(leaf.shape)}; config fields that likely differ: {config_hint(path)}.')


# --------------------------------------------------------------------------------------------
# Reading the files.


def _is_torch_file(path: str) -> bool:
  with open(path, 'rb') as f:
    head = f.read(4)
  return head.startswith(b'PK') or head[:1] == b'\x80'


def read_torch(path: str) -> dict:
  """``torch.load(path, weights_only=True)`` with arrays as numpy and clear errors."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{path} is a PyTorch checkpoint; reading it needs torch: '
                      f"pip install 'sde-jax[torch]'") from e
  try:
    raw = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for truncated / corrupt / unsafe files.
    raise CheckpointError(f'cannot read PyTorch checkpoint {path}: {type(e).__name__}: {e}') from e
  return jax.tree_util.tree_map(
      lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, raw)


def read_flax(path: str) -> dict:
  """The msgpack State of a score_sde checkpoint (arrays and containers only)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types for truncated or corrupt input.
    raise CheckpointError(f'cannot read {path} as a score_sde (Flax msgpack) checkpoint: '
                          f'{type(e).__name__}: {e}') from e
  if not isinstance(state, dict):
    raise CheckpointError(f'{path}: expected a msgpack map (score_sde State), got '
                          f'{type(state).__name__}.')
  return state


def _require(mapping: Any, keys: tuple[str, ...], what: str) -> None:
  if not isinstance(mapping, dict) or any(k not in mapping for k in keys):
    present = sorted(mapping) if isinstance(mapping, dict) else type(mapping).__name__
    raise CheckpointError(f'{what} must hold {list(keys)}; found {present}.')


# --------------------------------------------------------------------------------------------
# score_sde (Flax): names are already ours.


def _flax_params(tree: Any, template: Mapping[Path, Any], source: str) -> Params:
  flat = traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {}
  check_tree(flat, template, source)
  return traverse_util.unflatten_dict({p: np.asarray(v, np.float32) for p, v in flat.items()})


def import_flax(path: str, template: Mapping[Path, Any]) -> ImportedState:
  """Params, EMA params and step of a score_sde checkpoint, checked against ``template``."""
  state = read_flax(path)
  _require(state, ('optimizer', 'params_ema', 'step'), f'{path} (score_sde State)')
  _require(state['optimizer'], ('target',), f'{path}: optimizer')
  return ImportedState(
      params=_flax_params(state['optimizer']['target'], template, f'{path} optimizer.target'),
      params_ema=_flax_params(state['params_ema'], template, f'{path} params_ema'),
      step=int(np.asarray(state['step'])))


# --------------------------------------------------------------------------------------------
# score_sde_pytorch: a layout maps each Flax leaf to a state_dict key; values are converted by
# the Flax leaf's name and rank.

Layout = Callable[[list[Path], list[str]], dict[Path, Any]]
_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight'}


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
      raise CheckpointError(f'{source}: no array {key!r} for parameter {_fmt(path)}; config '
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
  _require(ema, ('shadow_params',), f'{source}: ema')
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
                 buffers: frozenset[str] = frozenset()) -> ImportedState:
  """Params, EMA params and step of a score_sde_pytorch checkpoint."""
  raw = read_torch(path)
  _require(raw, ('model', 'ema', 'step'), f'{path} (score_sde_pytorch checkpoint)')
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


# --------------------------------------------------------------------------------------------
# The entry point.


def _torch_layouts() -> dict[str, tuple[Layout, frozenset[str]]]:
  """Per model name: the PyTorch layout and the state_dict buffers that hold no parameter."""
  from sde_jax.models import ddpm, ncsnv2  # pylint: disable=g-import-not-at-top

  def by_template(torch_layout):
    return lambda order, keys: torch_layout(
        traverse_util.unflatten_dict({p: 0 for p in order}), keys)

  ncsn = (by_template(ncsnv2.torch_layout), ncsnv2.TORCH_BUFFERS)
  return {'ncsnpp': (all_modules_layout, frozenset({'sigmas'})),
          'ddpm': (all_modules_layout, ddpm.TORCH_BUFFERS),
          'ncsnv2_64': ncsn, 'ncsnv2_128': ncsn, 'ncsnv2_256': ncsn, 'ncsn': ncsn}


def import_original(path: str | os.PathLike, config) -> ImportedState:
  """Reads a checkpoint of score_sde (Flax ``checkpoint_N``) or score_sde_pytorch (``.pth``).

  Args:
    path: the checkpoint file; the format is recognised from its first bytes.
    config: the config the checkpoint was trained with (``model.*``, ``data.*``).

  Returns:
    An :class:`ImportedState` with ``params``, ``params_ema`` (numpy trees in sde-jax's layout,
    which is the original Flax layout) and ``step``.

  Raises:
    CheckpointError: unreadable file, or any parameter missing, unexpected or of another shape
      (the message names it, both shapes and the config fields that likely differ).
  """
  from sde_jax import models  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist.')
  model = models.get_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  template, order = param_template(model, shape)
  flat_template = traverse_util.flatten_dict(template)
  if not _is_torch_file(path):
    return import_flax(path, flat_template)
  layouts = _torch_layouts()
  name = config.model.name
  if name not in layouts:
    raise CheckpointError(f'no PyTorch layout for model.name={name!r}; known: {sorted(layouts)}.')
  if name.startswith('ncsn') and name != 'ncsnpp' and config.model.get('flavour') != 'pytorch':
    raise CheckpointError(
        f'{path} is a score_sde_pytorch checkpoint of {name}, whose PyTorch network differs from '
        "the JAX original's; set --config.model.flavour=pytorch (and keep it for sampling).")
  layout, buffers = layouts[name]
  return import_torch(path, flat_template, order, layout, buffers)


# --------------------------------------------------------------------------------------------
# sde-jax's own checkpoints (orbax): DIR/checkpoints/<step>/{params, params_ema, meta}, plus
# {opt_state, loop} in the checkpoints that `sde-jax train` writes (loop: step count and key).

ITEMS = ('params', 'params_ema', 'meta')
TRAIN_ITEMS = ITEMS + ('opt_state', 'loop')


def checkpoint_manager(workdir: str | os.PathLike, *, keep_last: int | None = None,
                       keep_every: int | None = None, item_names: tuple[str, ...] = ITEMS,
                       writer: bool = False):
  """The orbax CheckpointManager of ``workdir`` (``workdir/checkpoints``).

  Args:
    workdir: the job's directory.
    keep_last: keep only the last ``keep_last`` checkpoints, besides those that ``keep_every``
      keeps; None keeps every checkpoint.
    keep_every: with ``keep_last``, also keep every checkpoint whose step is a multiple of it.
    item_names: the items the manager saves.
    writer: whether this manager's job is the one writing ``workdir``'s checkpoints. Only a
      writer removes the temporary directories of unfinished saves (a killed writer's
      leftovers); a reader (``sample``, ``eval``) must not, since a live trainer may be saving.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import checkpoint_managers as policies  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.path.join(os.fspath(workdir), 'checkpoints'))
  policy = None
  if keep_last is not None:
    policy = policies.AnyPreservationPolicy([policies.LatestN(keep_last)] + (
        [policies.EveryNSteps(keep_every)] if keep_every else []))
  # Leftovers of a save that a killed job never finished are temporary directories; the writer
  # removes them.
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                         cleanup_tmp_directories=writer)
  return ocp.CheckpointManager(directory, item_names=item_names, options=options)


def save_items(manager, step: int, trees: Mapping[str, Any], meta: dict) -> None:
  """Saves ``trees`` (item name -> pytree) and ``meta`` (JSON) as ``step``; asynchronous.

  Raises:
    FileExistsError: if ``step`` exists already (checkpoints are never overwritten).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if step in manager.all_steps():
    raise FileExistsError(f'{manager.directory} already holds step {step}; choose another '
                          '--workdir (existing checkpoints are never overwritten).')
  args = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
  # force: the caller decides when to save; orbax's own interval policy must not skip a step.
  manager.save(step, force=True, args=ocp.args.Composite(
      **args, meta=ocp.args.JsonSave({**meta, 'step': step})))


def restore_items(manager, step: int, targets: Mapping[str, Any]) -> dict[str, Any]:
  """Restores the items named in ``targets`` and ``meta`` of ``step``.

  ``targets`` maps an item name to its abstract pytree (``jax.ShapeDtypeStruct`` leaves, with a
  ``sharding`` to restore sharded arrays) or to None: the saved shapes and dtypes, whole on this
  process's first device, whatever the device layout of the job that saved them.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  args = {name: ocp.args.StandardRestore(
      _saved_on_one_device(manager, step, name) if target is None else target)
          for name, target in targets.items()}
  return dict(manager.restore(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonRestore())))


def _saved_on_one_device(manager, step: int, item: str) -> Any:
  """The abstract tree of ``item`` as saved, placed whole on this process's first device.

  orbax restores a target-less item onto the device layout it was saved from, which fails when a
  checkpoint written by an 8-device job is read by a 1-device one (or by another host count).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  metadata = ocp.StandardCheckpointer().metadata(manager.directory / str(step) / item)
  tree = getattr(metadata, 'item_metadata', metadata)
  return on_one_device(getattr(tree, 'tree', tree))


def num_params(tree: Any) -> int:
  """The number of parameters in ``tree`` (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def on_one_device(tree: Any) -> Any:
  """A restore target: the shapes and dtypes of ``tree``'s leaves (arrays, ShapeDtypeStructs or
  orbax metadata) as ShapeDtypeStructs placed whole on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=device), tree,
      is_leaf=lambda leaf: hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'))


def has_item(manager, step: int, item: str) -> bool:
  """Whether checkpoint ``step`` holds ``item`` (imported checkpoints hold no optimizer state)."""
  return (manager.directory / str(step) / item).exists()


def save_imported(workdir: str | os.PathLike, state: ImportedState, meta: dict) -> str:
  """Writes ``state`` as step ``state.step`` of ``workdir``'s checkpoints; never overwrites."""
  manager = checkpoint_manager(workdir, writer=True)
  save_items(manager, state.step, {'params': state.params, 'params_ema': state.params_ema}, meta)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(str(manager.directory), str(state.step))


def latest_step(manager, step: int | None = None) -> int:
  """``step``, or the latest step of ``manager``; FileNotFoundError if there is none."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {manager.directory}.')
  return step


def restore(workdir: str | os.PathLike, step: int | None = None) -> tuple[ImportedState, dict]:
  """The latest (or given) step of ``workdir``'s checkpoints, and its metadata."""
  manager = checkpoint_manager(workdir)
  step = latest_step(manager, step)
  out = restore_items(manager, step, {'params': None, 'params_ema': None})
  manager.close()
  return ImportedState(out['params'], out['params_ema'], step), dict(out['meta'])


def restore_params(workdir: str | os.PathLike, target: Any, item: str = 'params_ema',
                   step: int | None = None) -> tuple[Any, int]:
  """One parameter item (``params_ema`` by default) of the latest (or given) checkpoint,
  restored into ``target``'s shapes and shardings; and its step. Reads imported and trained
  checkpoints alike."""
  manager = checkpoint_manager(workdir)
  step = latest_step(manager, step)
  out = restore_items(manager, step, {item: target})
  manager.close()
  return out[item], step


def import_to_workdir(config, checkpoint: str, workdir: str) -> str:
  """``sde-jax import``: reads an original checkpoint and stores it as an orbax checkpoint."""
  state = import_original(checkpoint, config)
  count = num_params(state.params)
  path = save_imported(workdir, state, {'source': os.path.abspath(checkpoint),
                                        'model': config.model.name, 'num_params': count})
  print(f'Imported {checkpoint} (step {state.step}, {count:,} parameters, EMA included) '
        f'into {path}')
  return path


def restore_ema(workdir: str | os.PathLike, abstract: Any, mesh=None,
                step: int | None = None) -> tuple[Any, int]:
  """The EMA parameters of ``workdir``'s latest (or given) checkpoint, placed for use.

  Args:
    workdir: a directory with ``checkpoints/``.
    abstract: the parameters' shapes and dtypes (``ScoreModel.abstract_params()``).
    mesh: shard them as training does over this mesh; None: whole on the first local device.
    step: the checkpoint; default the latest.

  Returns:
    ``(params, step)``.
  """
  target = parallel.with_shardings(abstract, parallel.sharded_like(abstract, mesh))
  return restore_params(workdir, target, step=step)
