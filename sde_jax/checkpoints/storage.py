"""sde-jax's own checkpoints (orbax): DIR/checkpoints/<step>/{params, params_ema, meta}, plus
{opt_state, loop} in the checkpoints that `sde-jax train` writes (loop: step count and key), and
each step's manifest.json of hashes (:mod:`sde_jax.checkpoints.integrity`), checked before every
restore: a damaged step is skipped for the newest intact one, with a warning."""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from sde_jax import parallel, workdir as workdir_lib
from sde_jax.checkpoints import integrity
from sde_jax.checkpoints.imported_state import ImportedState

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

  Returns:
    An ``orbax.checkpoint.CheckpointManager`` whose saves write each step's manifest
    (:class:`~sde_jax.checkpoints.sealed_manager.SealedManager`); close it when done.
  """
  # Deferred: orbax (and sealed_manager, which imports it) loads in seconds; the jobs that only
  # read the originals' files or check a config do not need it.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import checkpoint_managers as policies  # pylint: disable=g-import-not-at-top
  from sde_jax.checkpoints import sealed_manager  # pylint: disable=g-import-not-at-top
  directory = workdir_lib.path(workdir) / 'checkpoints'
  policy = None
  if keep_last is not None:
    policy = policies.AnyPreservationPolicy([policies.LatestN(keep_last)] + (
        [policies.EveryNSteps(keep_every)] if keep_every else []))
  # Leftovers of a save that a killed job never finished are temporary directories; the writer
  # removes them.
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                         cleanup_tmp_directories=writer)
  return sealed_manager.SealedManager(directory, item_names=item_names, options=options)


def save_items(manager, step: int, trees: Mapping[str, Any], meta: dict) -> None:
  """Saves ``trees`` (item name -> pytree) and ``meta`` (JSON) as ``step``; asynchronous.

  Args:
    manager: from :func:`checkpoint_manager`, with ``trees``' item names and 'meta'.
    step: the checkpoint's step.
    trees: item name -> pytree of arrays.
    meta: JSON-serialisable metadata; ``'step'`` and ``'integrity'`` (that the step has a
      manifest) are added.

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
      **args, meta=ocp.args.JsonSave({**meta, 'step': step,
                                      integrity.META_FIELD: integrity.META_VALUE})))


def restore_items(manager, step: int, targets: Mapping[str, Any]) -> dict[str, Any]:
  """Restores the items named in ``targets`` and ``meta`` of ``step``, unchecked: choose the
  step with :func:`intact_step` (as every restore here does).

  ``targets`` maps an item name to its abstract pytree (``jax.ShapeDtypeStruct`` leaves, with a
  ``sharding`` to restore sharded arrays) or to None: the saved shapes and dtypes, whole on this
  process's first device, whatever the device layout of the job that saved them.

  Args:
    manager: from :func:`checkpoint_manager`.
    step: the checkpoint's step.
    targets: item name -> abstract pytree or None.

  Returns:
    Item name -> restored pytree, and 'meta'.
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
  """Whether checkpoint ``step`` holds ``item`` (imported checkpoints hold no optimizer state).

  Args:
    manager: from :func:`checkpoint_manager`.
    step: the checkpoint's step.
    item: an item name ('opt_state', ...).

  Returns:
    True if the item's directory exists.
  """
  return (manager.directory / str(step) / item).exists()


def save_imported(workdir: str | os.PathLike, state: ImportedState, meta: dict) -> str:
  """Writes ``state`` as step ``state.step`` of ``workdir``'s checkpoints; never overwrites.

  Args:
    workdir: the job's directory.
    state: the imported params, EMA params and step.
    meta: JSON-serialisable metadata (source file, model name, ...).

  Returns:
    The directory of the written checkpoint.

  Raises:
    FileExistsError: if the step exists already.
  """
  manager = checkpoint_manager(workdir, writer=True)
  save_items(manager, state.step, {'params': state.params, 'params_ema': state.params_ema}, meta)
  manager.wait_until_finished()
  manager.close()
  return os.fspath(manager.directory / str(state.step))


def latest_step(manager, step: int | None = None) -> int:
  """``step``, or the latest step of ``manager``; FileNotFoundError if there is none.
  (Unchecked: restores go through :func:`intact_step`.)"""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {manager.directory}.')
  return step


def intact_step(manager, step: int | None = None) -> int:
  """``step`` checked against its manifest, or the newest intact step of ``manager``.

  Damaged steps newer than the one returned are logged as warnings naming the step and file.

  Raises:
    FileNotFoundError: if there is no checkpoint (or no step ``step``).
    CheckpointError: if ``step`` is damaged, or every step is (naming each).
  """
  return integrity.choose_step(manager.directory, manager.all_steps(), step)[0]


def restore_meta(manager, step: int) -> dict:
  """The ``meta`` item of ``step`` (check the step first: :func:`intact_step`)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])


def restore(workdir: str | os.PathLike, step: int | None = None) -> tuple[ImportedState, dict]:
  """The newest intact (or given, checked) step of ``workdir``'s checkpoints, and its metadata.

  Raises:
    CheckpointError: if ``step`` is damaged, or (``step`` None) every checkpoint is.
  """
  manager = checkpoint_manager(workdir)
  step = intact_step(manager, step)
  out = restore_items(manager, step, {'params': None, 'params_ema': None})
  manager.close()
  return ImportedState(out['params'], out['params_ema'], step), dict(out['meta'])


def restore_params(workdir: str | os.PathLike, target: Any, item: str = 'params_ema',
                   step: int | None = None) -> tuple[Any, int]:
  """One parameter item (``params_ema`` by default) of the latest (or given) checkpoint,
  restored into ``target``'s shapes and shardings; and its step. Reads imported and trained
  checkpoints alike.

  Args:
    workdir: a directory with ``checkpoints/``.
    target: the item's abstract pytree (``jax.ShapeDtypeStruct`` leaves, with shardings).
    item: 'params_ema' or 'params'.
    step: the checkpoint; default the newest intact one.

  Returns:
    ``(params, step)``.

  Raises:
    CheckpointError: if ``step`` is damaged, or (``step`` None) every checkpoint is.
  """
  manager = checkpoint_manager(workdir)
  step = intact_step(manager, step)
  out = restore_items(manager, step, {item: target})
  manager.close()
  return out[item], step


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
