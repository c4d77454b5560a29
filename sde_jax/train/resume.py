"""The train state in checkpoints: restore-or-init at start (the newest intact step, whose saved
config must match), damaged steps moved aside, finite-only saves."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import jax
from absl import logging
from jax.experimental import multihost_utils

from sde_jax import checkpoints, parallel, workdir as workdir_lib
from sde_jax.checkpoints import integrity
from sde_jax.train import config_guard
from sde_jax.train.state import TrainState, abstract_state, all_finite

DAMAGED_PREFIX = 'damaged-'


def move_aside(manager, damaged: list) -> None:
  """Renames each damaged step ``checkpoints/<s>`` to ``checkpoints/damaged-<s>-<time>/`` (not a
  step name, so orbax neither lists, overwrites nor deletes it), on process 0; all processes
  then see the remaining steps.

  Args:
    manager: the trainer's (writing) CheckpointManager.
    damaged: :class:`~sde_jax.checkpoints.DamagedCheckpointError` of each step to move.
  """
  if not integrity.agreed(len(damaged)):  # the list is known on process 0 alone
    return
  if jax.process_index() == 0:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for error in damaged:
      target = error.directory.parent / f'{DAMAGED_PREFIX}{error.directory.name}-{stamp}'
      workdir_lib.move(error.directory, target)
      logging.warning('Moved damaged checkpoint %s (%s: %s) aside to %s; training resumes from '
                      'an older step and will write this step anew.', error.directory,
                      error.file, error.problem, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('sde-jax: damaged checkpoints moved aside')
  manager.reload()


def restore_or_init(manager, init_fn: Callable, mesh, seed: int,
                    fsdp_min_size: int = parallel.FSDP_MIN_SIZE, *,
                    config: Mapping[str, Any] | None = None,
                    allow_config_change: Iterable[str] = ()):
  """The newest intact checkpoint of ``manager`` restored sharded, or a fresh state at step 0.

  Each step newer than the one restored is damaged (:mod:`sde_jax.checkpoints.integrity`): it
  is named in a warning and moved aside (:func:`move_aside`), so that training writes that step
  again instead of failing on it or letting it push intact steps out of ``keep_last``.

  Args:
    manager: an orbax CheckpointManager over the train items (``checkpoints.TRAIN_ITEMS``).
    init_fn: ``init(key) -> TrainState`` (:func:`sde_jax.train.state.state_initializer`).
    mesh: the device mesh; the state is sharded by ``parallel.param_shardings``.
    seed: the job's seed; a fresh state starts from ``key(seed)``.
    fsdp_min_size: the smallest array split over the mesh's ``fsdp`` axis
      (``config.parallel.fsdp_min_size``).
    config: the job's config as JSON; if given, it is checked against the restored step's
      ``meta['config']`` before anything is moved or restored (:mod:`config_guard`).
    allow_config_change: guarded fields (or sections, or ``'all'``) allowed to differ.

  Returns:
    ``(state, state_shardings, step)`` with ``step`` a Python int.

  Raises:
    ValueError: if the checkpoint holds no optimizer state (an imported one).
    CheckpointError: if every checkpoint is damaged.
    ConfigChangeError: if the config changed in a guarded field not allowed.
  """
  abstract, shardings = abstract_state(init_fn, seed, mesh, fsdp_min_size)
  if not manager.all_steps():
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(seed))
    return state, shardings, 0
  step, damaged = integrity.choose_step(manager.directory, manager.all_steps())
  if not checkpoints.has_item(manager, step, 'opt_state'):
    raise ValueError(f'checkpoint {step} in {manager.directory} holds no optimizer state (was it '
                     'written by `sde-jax import`?); train in another --workdir.')
  if config is not None:
    config_guard.check_resume(checkpoints.restore_meta(manager, step).get('config'), config,
                              allow_config_change, f'checkpoint {step} of {manager.directory}')
  move_aside(manager, damaged)
  target = parallel.with_shardings(abstract, shardings)
  out = checkpoints.restore_items(manager, step, {
      'params': target.params, 'params_ema': target.params_ema, 'opt_state': target.opt_state,
      'loop': {'step': target.step, 'key': target.key}})
  logging.info('Restored checkpoint %d from %s.', step, manager.directory)
  return TrainState(out['loop']['step'], out['params'], out['opt_state'], out['params_ema'],
                    out['loop']['key']), shardings, step


def save_state(manager, state: TrainState, step: int, meta: dict) -> None:
  """Saves ``state`` as ``step`` (asynchronously) after checking that it is finite.

  Raises:
    FloatingPointError: if the parameters or EMA parameters hold a non-finite value.
  """
  if not bool(all_finite((state.params, state.params_ema))):
    raise FloatingPointError(f'Non-finite parameters at step {step}; not saved. The last '
                             f'checkpoint is {manager.latest_step()}.')
  checkpoints.save_items(manager, step, {
      'params': state.params, 'params_ema': state.params_ema, 'opt_state': state.opt_state,
      'loop': {'step': state.step, 'key': state.key}}, meta)
