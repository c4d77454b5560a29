"""The train state in checkpoints: restore-or-init at start, finite-only saves."""

from __future__ import annotations

from typing import Callable

import jax
from absl import logging

from sde_jax import checkpoints, parallel
from sde_jax.train.state import TrainState, all_finite


def restore_or_init(manager, init_fn: Callable, mesh, seed: int):
  """The latest checkpoint of ``manager`` restored sharded, or a fresh state at step 0.

  Args:
    manager: an orbax CheckpointManager over the train items (``checkpoints.TRAIN_ITEMS``).
    init_fn: ``init(key) -> TrainState`` (:func:`sde_jax.train.state.state_initializer`).
    mesh: the device mesh; the state is sharded by ``parallel.param_shardings``.
    seed: the job's seed; a fresh state starts from ``key(seed)``.

  Returns:
    ``(state, state_shardings, step)`` with ``step`` a Python int.

  Raises:
    ValueError: if the latest checkpoint holds no optimizer state (an imported one).
  """
  abstract = jax.eval_shape(init_fn, jax.random.key(seed))
  shardings = parallel.param_shardings(mesh, abstract)
  step = manager.latest_step()
  if step is None:
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(seed))
    return state, shardings, 0
  if not checkpoints.has_item(manager, step, 'opt_state'):
    raise ValueError(f'checkpoint {step} in {manager.directory} holds no optimizer state (was it '
                     'written by `sde-jax import`?); train in another --workdir.')
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
