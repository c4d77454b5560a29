"""The training loop every trainer here runs: flat, read top to bottom.

A :class:`Trainer` says what is trained (network, loss, config sections, what to evaluate);
:func:`fit` runs it: set-up and checks, restore-or-init, the compiled step, then per compiled
call of ``n_jitted_steps`` optimizer steps: metrics, evaluation, checkpoints, preemption.

Faults: a job resumes from its newest intact checkpoint with the same data order and random
stream (the data iterator starts at the restored step, step ``s`` draws from
``fold_in(key, s)``), and only with the config it was trained with, schedule aside
(:mod:`sde_jax.train.config_guard`); SIGTERM or a TPU preemption notice saves the current step
before a clean exit; a non-finite loss, gradient or parameter stops training with an error
naming the step, and is never written to a checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from absl import logging

from sde_jax import checkpoints, parallel
from sde_jax.data import global_batches
from sde_jax.train import resume
from sde_jax.train import state as state_lib
from sde_jax.train.metric_log import MetricLog
from sde_jax.train.preemption import Preemption
from sde_jax.train.schedule import schedule_problems



@dataclasses.dataclass(frozen=True)
class Trainer:
  """What one training job trains; :func:`fit` does the rest.

  Attributes:
    name: the network's name, for the log and the checkpoints' metadata.
    source: the command, for the metadata (``'sde-jax train'``).
    model: the flax module.
    example_shape: the shape of one input example, (H, W, C).
    loss_fn: ``(params, key, batch) -> (loss, aux)``; ``batch`` holds ``batch_keys``.
    training: the config section with batch_size, n_iters, n_jitted_steps, the periods of
      :data:`~sde_jax.train.schedule.PERIODS` and keep_last (``config.training``,
      ``config.classifier.training``).
    optim: the optimizer section (``config.optim``, ``config.classifier.optim``).
    ema_rate: the EMA's rate.
    batch_keys: the fields of the data set's batches that the loss reads.
    evaluate: ``(state, step) -> {name: value}``, run every ``training.eval_freq`` steps and at
      the last; logged as ``eval/<name>``.
    after_keep: ``(state, step)``, run after each checkpoint kept for good (every
      ``training.snapshot_freq`` steps) and the last one: the snapshot sample grids.
    meta: more metadata for the checkpoints; its ``'config'`` (the job's config as JSON) is
      what a resume is checked against (:mod:`sde_jax.train.config_guard`).
  """

  name: str
  source: str
  model: Any
  example_shape: tuple[int, ...]
  loss_fn: Callable
  training: Any
  optim: Any
  ema_rate: float
  batch_keys: tuple[str, ...] = ('image',)
  evaluate: Callable | None = None
  after_keep: Callable | None = None
  meta: dict = dataclasses.field(default_factory=dict)


def final_step(training, prefix: str = 'training') -> int:
  """The last step: ``training.n_iters`` rounded down to a multiple of ``n_jitted_steps``.

  Args:
    training: a schedule section (``config.training``, ``config.classifier.training``).
    prefix: its place in the config, for the message.

  Raises:
    ValueError: if a logging / evaluation / checkpoint period is not a positive multiple of
      ``n_jitted_steps`` (the loop only sees every ``n_jitted_steps``-th step), and the rest of
      :func:`sde_jax.train.schedule.schedule_problems`, all of them named.
  """
  problems = schedule_problems(training, prefix)
  if problems:
    raise ValueError(' '.join(problems))
  n = int(training.n_jitted_steps)
  return training.n_iters // n * n


def unrolls_steps(mesh) -> bool:
  """Whether the compiled step unrolls its ``n_jitted_steps`` optimizer steps: on CPU only
  (:func:`sde_jax.train.state.make_train_step`)."""
  return mesh.devices.flat[0].platform == 'cpu'


def compile_step(trainer: Trainer, state_shardings, mesh):
  """The trainer's jitted ``train_steps(state, batches) -> (state, metrics)`` over ``mesh``
  (:func:`sde_jax.train.state.compile_train_step`): what :func:`fit` runs, and what
  ``sde-jax plan`` compiles ahead of time."""
  return state_lib.compile_train_step(state_lib.make_train_step(
      trainer.loss_fn, state_lib.make_optimizer(trainer.optim), float(trainer.ema_rate),
      state_lib.learning_rate_schedule(trainer.optim), unroll=unrolls_steps(mesh)),
      state_shardings, mesh)


def initializer(trainer: Trainer):
  """``init(key) -> TrainState`` of the trainer's network and optimizer at step 0."""
  return state_lib.state_initializer(trainer.model, state_lib.make_optimizer(trainer.optim),
                                     trainer.example_shape)


def fit(config, trainer: Trainer, directory: str, mesh,
        allow_config_change: Iterable[str] = ()) -> state_lib.TrainState:
  """Trains ``trainer`` into ``directory``, resuming from its newest intact checkpoint if any.

  A resume compares ``trainer.meta['config']`` with the config saved in that checkpoint: a
  changed field that is not schedule-only (:data:`sde_jax.train.config_guard.SCHEDULE_ONLY`)
  and not in ``allow_config_change`` stops the job before anything is compiled or written.
  Damaged checkpoints newer than the one resumed are moved aside
  (:func:`sde_jax.train.resume.move_aside`).

  Writes ``directory/checkpoints/<step>/`` (every ``snapshot_freq_for_preemption`` steps, the
  last ``keep_last`` kept, plus every ``snapshot_freq``-th kept for good) and TensorBoard events
  under ``directory/tensorboard/``.

  Args:
    config: the job's config (``seed``, ``data`` and ``parallel.fsdp_min_size`` are read here).
    trainer: what to train.
    directory: where its checkpoints and events go.
    mesh: the device mesh (``parallel.make_mesh``).
    allow_config_change: guarded config fields (or sections, or ``'all'``) that may differ
      from the checkpoint's (``sde-jax train --allow_config_change``); each change is logged.

  Returns:
    The state at the last step trained (after a preemption: the step saved).

  Raises:
    ValueError: for a batch size the devices do not divide, or bad periods, at start-up.
    ConfigChangeError: a resume with a changed model / objective / SDE / data / optimizer field.
    CheckpointError: if every checkpoint in ``directory`` is damaged.
    FloatingPointError: at the first non-finite loss, gradient norm or parameter (naming the
      step); the checkpoints written before it stay as they are.
  """
  tc = trainer.training
  # --- Checks: everything that can be wrong with the config fails before anything is written.
  per_process = parallel.check_batch_size(tc.batch_size, mesh)
  last = final_step(tc)
  state_lib.make_optimizer(trainer.optim)  # refuses an unknown optimizer before any write

  # --- State: the latest checkpoint, or step 0.
  manager = checkpoints.checkpoint_manager(directory, keep_last=tc.keep_last,
                                           keep_every=tc.snapshot_freq,
                                           item_names=checkpoints.TRAIN_ITEMS, writer=True)
  init = initializer(trainer)
  state, shardings, step = resume.restore_or_init(
      manager, init, mesh, config.seed, config.parallel.fsdp_min_size,
      config=trainer.meta.get('config'), allow_config_change=allow_config_change)
  if mesh.shape['fsdp'] > 1:
    logging.info('FSDP parameters: %s', parallel.fsdp_summary(state.params,
                                                              config.parallel.fsdp_min_size))
  meta = {'source': trainer.source, 'model': trainer.name,
          'num_params': checkpoints.num_params(state.params), **trainer.meta}

  # --- The compiled step and the data from `step` on.
  train_step = compile_step(trainer, shardings, mesh)
  batches = global_batches.stacked_batches(config, per_process, tc.n_jitted_steps, step, mesh,
                                           keys=trainer.batch_keys)
  log = MetricLog(directory, tc.batch_size, last)
  logging.info('Training %s (%d parameters) from step %d to %d on a %s mesh, %d images per '
               'process per step.', trainer.name, meta['num_params'], step, last,
               dict(mesh.shape), per_process)

  # --- The loop: one compiled call is n_jitted_steps optimizer steps.
  try:
    with Preemption() as preemption:
      while step < last:
        state, metrics = train_step(state, next(batches))
        step += tc.n_jitted_steps
        log.add(step, metrics)
        if step % tc.log_freq == 0:
          log.write(step)

        if trainer.evaluate is not None and (step % tc.eval_freq == 0 or step == last):
          for name, value in trainer.evaluate(state, step).items():
            log.scalar(f'eval/{name}', value, step, echo=True)

        # Checkpoints: on the preemption cadence, the keep cadence, the end, or a preemption;
        # pending metrics are checked first, so a non-finite step is never saved.
        preempted = preemption.reached()
        keep = step % tc.snapshot_freq == 0 or step == last
        if preempted or keep or step % tc.snapshot_freq_for_preemption == 0:
          log.fetch_and_check()
          resume.save_state(manager, state, step, meta)
          log.flush()
        if keep and trainer.after_keep is not None:
          trainer.after_keep(state, step)
        if preempted:
          logging.warning('Preempted: saved step %d; stopping.', step)
          break
  finally:
    # A failure must leave the checkpoints written so far complete.
    manager.wait_until_finished()
    manager.close()
    log.close()
  return state
