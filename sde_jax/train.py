"""Training: the sharded train state and step, ``train_and_evaluate`` and ``sample``.

One code path for one CPU, one GPU and a TPU pod: the state is created sharded over the mesh of
:mod:`sde_jax.parallel` (``jax.eval_shape`` + ``jit(init, out_shardings=...)``), the step is one
jitted program with in/out shardings and a donated state, and ``n_jitted_steps`` optimizer steps
run in one ``lax.scan``. See ``docs/training.md``.

Faults: a job resumes from its last checkpoint with the same data order and random stream (the
data iterator starts at the restored step, step ``s`` draws from ``fold_in(key, s)``); SIGTERM or
a TPU preemption notice saves the current step before a clean exit; a non-finite loss, gradient
or parameter stops training with an error naming the step, and is never written to a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from sde_jax import checkpoints, losses, models, parallel, sampling, viz
from sde_jax import data as data_lib
from sde_jax import sde as sde_lib

Array = jax.Array
# Stream ids folded into the key so that evaluation draws no training randomness.
EVAL_STREAM = 1


@flax.struct.dataclass
class TrainState:
  """Everything a training job carries from one step to the next.

  ``key`` is the base of the random stream: step ``s`` draws from ``fold_in(key, s)``, so a
  resumed job repeats the stream of an uninterrupted one.
  """

  step: Array
  params: Any
  opt_state: Any
  params_ema: Any
  key: Array


# --------------------------------------------------------------------------------------------
# Optimizer, state and steps.


def learning_rate_schedule(config) -> optax.Schedule:
  """``lr * min(step / warmup, 1)``, the original's linear warm-up (constant if warmup is 0)."""
  oc = config.optim
  if oc.warmup > 0:
    return optax.linear_schedule(0.0, float(oc.lr), int(oc.warmup))
  return optax.constant_schedule(float(oc.lr))


def make_optimizer(config) -> optax.GradientTransformation:
  """The original's optimizer: Adam, global-norm clipping, linear warm-up, decoupled decay.

  The original (flax.optim.Adam) decays as ``p <- p - lr (adam_update + weight_decay p)``, which
  is ``optax.adamw`` with the same learning rate; beta2 is flax's 0.999. Gradients are clipped to
  global norm ``grad_clip`` unless it is negative.
  """
  oc = config.optim
  if oc.get('optimizer', 'Adam') != 'Adam':
    raise ValueError(f"config.optim.optimizer={oc.optimizer!r}; only 'Adam' is supported.")
  adam = optax.adamw(learning_rate_schedule(config), b1=float(oc.beta1), b2=0.999,
                     eps=float(oc.eps), weight_decay=float(oc.weight_decay))
  if oc.grad_clip < 0:
    return adam
  return optax.chain(optax.clip_by_global_norm(float(oc.grad_clip)), adam)


def init_train_state(model, optimizer, shape: tuple[int, ...], key: Array) -> TrainState:
  """Step 0: fresh parameters (the EMA starts at them) and the base key of the random stream."""
  k_params, k_train = jax.random.split(key)
  params = models.init_params(model, k_params, shape)
  ema = jax.tree_util.tree_map(jnp.copy, params)  # its own buffers: the state is donated
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), ema, k_train)


def make_train_step(loss_fn, optimizer, ema_rate: float, schedule: optax.Schedule,
                    unroll: bool = False):
  """``train_steps(state, batches) -> (state, metrics)``: one optimizer step per leading index of
  ``batches`` (shape ``(n_steps, B, ...)``) in one ``lax.scan``.

  Step ``s`` draws its randomness from ``fold_in(state.key, s)``; the EMA follows
  ``e <- r e + (1 - r) p`` with the updated parameters. ``metrics`` holds per-step ``loss``,
  ``grad_norm`` (before clipping) and ``lr``, each of shape ``(n_steps,)``.

  ``unroll=True`` unrolls the scan: XLA:CPU runs convolution gradients inside a loop many times
  slower (13x for the digits DDPM++ on 2 cores), at the price of a compile time that grows with
  n_steps.
  """
  def one_step(state: TrainState, batch):
    key = jax.random.fold_in(state.key, state.step)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                 state.params_ema, params)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         params_ema=ema), metrics

  def train_steps(state: TrainState, batches):
    # unroll=0 unrolls every step; unroll=True would keep a one-trip loop when n_steps is 1.
    return jax.lax.scan(one_step, state, batches, unroll=0 if unroll else 1)

  return train_steps


def steps_sharding(mesh) -> NamedSharding:
  """Batches of shape ``(n_steps, B, ...)``: the batch axis split over every device."""
  return NamedSharding(mesh, P(None, parallel.BATCH_AXES))


def compile_train_step(train_steps, state_shardings, mesh):
  """``train_steps`` jitted with in/out shardings; the input state is donated."""
  return jax.jit(train_steps, in_shardings=(state_shardings, steps_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=0)


def compile_eval_step(loss_fn, state_shardings, mesh):
  """``eval_step(state, batch) -> loss``: the EMA parameters' mean loss over the examples of
  ``batch`` (``{'image', 'mask'}``) whose mask is set (eval batches are padded)."""
  def eval_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), EVAL_STREAM)
    per_example = loss_fn(state.params_ema, key, batch['image'])[1]['per_example']
    mask = batch['mask'].astype(per_example.dtype)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  return jax.jit(eval_step, in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


@jax.jit
def all_finite(tree) -> Array:
  """Whether every element of every array of ``tree`` is finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# --------------------------------------------------------------------------------------------
# What a job is built from, read from the config once.


@dataclasses.dataclass(frozen=True)
class Job:
  """The pieces a training or sampling job builds from its config."""

  model: Any
  sde: sde_lib.SDE
  score_fn: Callable
  image_shape: tuple[int, int, int]
  scaler: Callable
  inverse_scaler: Callable

  @classmethod
  def from_config(cls, config) -> 'Job':
    model = models.get_model(config)
    sde = sde_lib.from_config(config)
    d = config.data
    return cls(model, sde, models.get_score_fn(sde, model, continuous=config.training.continuous),
               (d.image_size, d.image_size, d.num_channels),
               data_lib.get_data_scaler(config), data_lib.get_data_inverse_scaler(config))

  def loss_fn(self, config, train: bool):
    """``loss(params, key, images)`` with images in [0, 1] (scaled to model space inside)."""
    loss = losses.get_loss_fn(config, self.sde, self.model, train=train)
    return lambda params, key, images: loss(params, key, self.scaler(images))

  def abstract_state(self, optimizer, seed: int) -> TrainState:
    return jax.eval_shape(self.init_fn(optimizer), jax.random.key(seed))

  def abstract_params(self):
    return jax.eval_shape(lambda key: models.init_params(self.model, key, (1, *self.image_shape)),
                          jax.random.key(0))

  def init_fn(self, optimizer):
    return functools.partial(init_train_state, self.model, optimizer, (1, *self.image_shape))


def with_shardings(abstract, shardings):
  """``abstract`` (ShapeDtypeStruct leaves) with the given shardings attached."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def final_step(config) -> int:
  """The last step: ``n_iters`` rounded down to a multiple of ``n_jitted_steps``.

  Raises:
    ValueError: if a logging / evaluation / checkpoint period is not a multiple of
      ``n_jitted_steps`` (the loop only sees every ``n_jitted_steps``-th step).
  """
  tc = config.training
  n = int(tc.n_jitted_steps)
  for name in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if n < 1 or tc[name] % n:
      raise ValueError(f'training.{name}={tc[name]} must be a multiple of '
                       f'training.n_jitted_steps={n}.')
  if tc.n_iters < n:
    raise ValueError(f'training.n_iters={tc.n_iters} is less than training.n_jitted_steps={n}.')
  return tc.n_iters // n * n


# --------------------------------------------------------------------------------------------
# Checkpoints.


def restore_or_init(manager, job: Job, optimizer, mesh, seed: int):
  """The latest checkpoint of ``manager`` restored sharded, or a fresh state at step 0.

  Returns:
    ``(state, state_shardings, step)`` with ``step`` a Python int.

  Raises:
    ValueError: if the latest checkpoint holds no optimizer state (an imported one).
  """
  abstract = job.abstract_state(optimizer, seed)
  shardings = parallel.param_shardings(mesh, abstract)
  step = manager.latest_step()
  if step is None:
    state = jax.jit(job.init_fn(optimizer), out_shardings=shardings)(jax.random.key(seed))
    return state, shardings, 0
  if not checkpoints.has_item(manager, step, 'opt_state'):
    raise ValueError(f'checkpoint {step} in {manager.directory} holds no optimizer state (was it '
                     'written by `sde-jax import`?); train in another --workdir.')
  target = with_shardings(abstract, shardings)
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


# --------------------------------------------------------------------------------------------
# Data.


def stacked_batches(config, per_process: int, n_steps: int, start_step: int, mesh,
                    keys: tuple[str, ...] = ('image',)) -> Iterator[dict]:
  """Global arrays ``{key: (n_steps, B, ...)}`` of ``n_steps`` training batches from
  ``start_step`` (images in [0, 1]), for one compiled call of a trainer.

  Each process reads its own part of each batch; batch ``s`` is the same whether the job started
  at 0 or resumed at ``s``.
  """
  it = data_lib.get_dataset(config, 'train', batch_size=per_process, seed=config.seed,
                            start_step=start_step)
  sharding = steps_sharding(mesh)
  while True:
    parts = [next(it) for _ in range(n_steps)]
    yield {k: jax.make_array_from_process_local_data(sharding, np.stack([p[k] for p in parts]))
           for k in keys}


def train_batches(config, per_process: int, start_step: int, mesh) -> Iterator[Array]:
  """The images of :func:`stacked_batches`, ``training.n_jitted_steps`` batches per item."""
  return (batch['image'] for batch in stacked_batches(
      config, per_process, config.training.n_jitted_steps, start_step, mesh))


def eval_batches(config, per_process: int, mesh) -> Iterator[dict]:
  """Global batches ``{'image', 'mask'}`` of the eval split (mask: real, not padding examples);
  starts over when the split ends."""
  while True:
    for batch in data_lib.get_dataset(config, 'eval', batch_size=per_process, seed=config.seed):
      yield parallel.host_local_to_global({'image': batch['image'], 'mask': batch['mask']}, mesh)


# --------------------------------------------------------------------------------------------
# Logging: metrics stay on the device until a log line, so logging never stalls the pipeline.


def format_duration(seconds: float) -> str:
  """``H:MM:SS``, or days for a day or more."""
  if seconds >= 86400:
    return f'{seconds / 86400:.1f} days'
  return time.strftime('%H:%M:%S', time.gmtime(seconds))


class MetricLog:
  """Per-step metrics, checked for finiteness and written to stdout and TensorBoard."""

  def __init__(self, workdir: str, global_batch: int, last_step: int):
    self.global_batch, self.last_step = global_batch, last_step
    self.pending: list[tuple[int, dict]] = []
    self.mark: tuple[int, float] | None = None  # (step, time) the speed is measured from
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def add(self, step: int, metrics: dict) -> None:
    """Keeps the metrics of the steps that end at ``step`` (arrays of shape (n_steps,))."""
    if self.mark is None:  # the first call has just been compiled: time from here
      self.mark = (step - metrics['loss'].shape[0], time.perf_counter())
    if self.pending:
      # The device still has this call queued, but the host goes no further ahead: a SIGTERM
      # or preemption notice is then answered within two calls, not at the next log line.
      jax.block_until_ready(self.pending[-1][1])
    self.pending.append((step, metrics))

  def check(self) -> dict[str, float]:
    """Fetches the pending metrics; their mean over the pending steps.

    Raises:
      FloatingPointError: naming the first step whose loss or gradient norm is not finite.
    """
    fetched = jax.device_get(self.pending)
    self.pending = []
    for end, metrics in fetched:
      first = end - len(metrics['loss']) + 1
      for name in ('loss', 'grad_norm'):
        bad = np.flatnonzero(~np.isfinite(metrics[name]))
        if bad.size:
          raise FloatingPointError(f'Non-finite {name} {metrics[name][bad[0]]} at step '
                                   f'{first + bad[0]}; training stopped.')
    if not fetched:
      return {}
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}

  def write(self, step: int) -> None:
    """Checks and logs the steps since the last line: loss, lr, grad norm, speed, ETA."""
    values = self.check()
    now = time.perf_counter()
    steps_per_s = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
    self.mark = (step, now)
    values.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * self.global_batch)
    logging.info('step %d/%d: loss %.5g, lr %.3g, grad norm %.3g, %.2f steps/s, %.1f images/s, '
                 'ETA %s', step, self.last_step, values.get('loss', math.nan),
                 values.get('lr', math.nan), values.get('grad_norm', math.nan), steps_per_s,
                 values['images_per_s'],
                 format_duration((self.last_step - step) / max(steps_per_s, 1e-9)))
    for name, value in values.items():
      self.scalar(f'train/{name}', value, step)

  def scalar(self, name: str, value: float, step: int, echo: bool = False) -> None:
    if echo:
      logging.info('step %d: %s %.5g', step, name, value)
    if self.writer is not None:
      self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


# --------------------------------------------------------------------------------------------
# Preemption: SIGTERM on any host, or the TPU preemption notice shared by all hosts.


class Preemption:
  """Context manager that turns SIGTERM into a request to save and stop.

  In a multi-process job, JAX's preemption service receives SIGTERM on any host and agrees a
  step at which all hosts stop (``reached_preemption_sync_point``); a Python handler would
  replace its own, so one is installed only in single-process jobs.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> 'Preemption':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving the current step, then stopping.')
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step``; call at every step the loop sees."""
    if self.requested:
      return True
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # the preemption service is disabled
      return False


# --------------------------------------------------------------------------------------------
# Sampling.


def to_uint8(images) -> np.ndarray:
  """Images in [0, 1] -> uint8, truncating as the original does (``clip(x * 255).astype``).
  Non-finite values (a diverged sampler) become 0, with a warning that counts them."""
  images = np.asarray(images)
  bad = ~np.isfinite(images)
  if bad.any():
    logging.warning('%d of %d sample values are not finite (the sampler diverged); they are '
                    'written as 0.', int(bad.sum()), bad.size)
    images = np.where(bad, 0.0, images)
  return np.clip(images * 255.0, 0, 255).astype(np.uint8)


def sharded_sampler(config, job: Job, batch: int, mesh):
  """``draw(key, params, first_index) -> (images in [0, 1], nfe)``: a global batch split over
  devices, with the sampler the config names, and its score evaluations (replicated); example i
  uses ``fold_in(key, first_index + i)``. (Keeping ``nfe`` keeps the adaptive solver's
  did-not-finish check, which rides on it, in the program.)"""
  sampler = sampling.get_sampler_from_config(config, job.sde, (batch, *job.image_shape))

  def draw(key, params, first_index):
    x, nfe = sampler(key, job.score_fn, params, first_index=first_index)
    return job.inverse_scaler(x), jnp.asarray(nfe)

  return jax.jit(draw, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))


def gather(x: Array) -> np.ndarray:
  """A global array as one numpy array on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def fresh_path(path: str) -> str:
  """``path``, or ``path`` with ``-1``, ``-2``, ... before its extension if it exists."""
  stem, ext = os.path.splitext(path)
  n = 0
  while os.path.exists(path):
    n += 1
    path = f'{stem}-{n}{ext}'
  return path


def keep_previous_outputs(directory: str, names) -> None:
  """Moves the files ``names`` of an earlier run into ``directory/previous-<time>/``."""
  existing = [f for f in names if os.path.exists(os.path.join(directory, f))]
  if existing:
    backup = fresh_path(os.path.join(directory, time.strftime('previous-%Y%m%d-%H%M%S')))
    os.makedirs(backup)
    for f in existing:
      shutil.move(os.path.join(directory, f), os.path.join(backup, f))
    logging.warning('Moved the outputs of an earlier run to %s', backup)


def sample_batch_size(config, num_samples: int, mesh) -> int:
  """``eval.batch_size`` (at most ``num_samples``) rounded up to a multiple of the devices."""
  batch = min(int(config.eval.batch_size), num_samples)
  return -(-batch // mesh.size) * mesh.size


# --------------------------------------------------------------------------------------------
# The jobs.


def _snapshot(draw, seed: int, params, workdir: str, step: int) -> np.ndarray:
  """Samples a batch with the EMA parameters, writes ``samples/step_<step>.png``, returns it."""
  images = to_uint8(gather(draw(jax.random.key(seed), params, 0)[0]))
  if jax.process_index() == 0:
    path = fresh_path(os.path.join(workdir, 'samples', f'step_{step}.png'))
    viz.image_grid_png(path, images)
    logging.info('Wrote snapshot samples to %s', path)
  return images


def judge_snapshot(config, images: np.ndarray, workdir: str, step: int) -> str | None:
  """For the embedded digits: what a classifier trained on real digits says of ``images``.

  Appends a row to ``workdir/samples/quality.md`` and returns it; None for other data sets,
  which have no embedded judge (their quality is measured by ``sde-jax eval``).
  """
  if config.data.dataset not in data_lib.DIGITS_DATASETS or jax.process_index() != 0:
    return None
  from sde_jax.metrics import digits  # pylint: disable=g-import-not-at-top
  j = digits.judge_digits(digits.intensity(images.astype(np.float32) / 255.0))
  path = os.path.join(workdir, 'samples', 'quality.md')
  if not os.path.exists(path):
    with open(path, 'w') as f:
      f.write('Samples judged by an SVM trained on real digits (sde_jax/metrics/digits.py); the '
              f'same judge on held-out real digits: {j.real_accuracy:.1%} accurate, '
              f'{j.real_confident_fraction:.1%} confident (top class p >= 0.9).\n\n'
              '| step | samples | confident | mean top p | classes covered | count per class 0-9 |\n'
              '|---:|---:|---:|---:|---:|---|\n')
  row = (f'| {step} | {len(images)} | {j.confident_fraction:.1%} | {j.mean_top_probability:.3f} '
         f'| {j.classes_covered}/10 | {" ".join(map(str, j.class_counts))} |')
  with open(path, 'a') as f:
    f.write(row + '\n')
  logging.info('Digits judge at step %d: %.1f%% of %d samples labelled confidently (real digits: '
               '%.1f%%), %d/10 classes covered; see %s', step, 100 * j.confident_fraction,
               len(images), 100 * j.real_confident_fraction, j.classes_covered, path)
  return row


def _meta(config, state: TrainState) -> dict:
  count = checkpoints.num_params(state.params)
  return {'source': 'sde-jax train', 'model': config.model.name, 'num_params': count,
          'config': json.loads(config.to_json_best_effort())}


def _programs(config, job: Job, optimizer, shardings, mesh):
  """The jitted train step, eval step and snapshot sampler (None without snapshot sampling)."""
  cpu = mesh.devices.flat[0].platform == 'cpu'
  train_step = compile_train_step(
      make_train_step(job.loss_fn(config, train=True), optimizer, float(config.model.ema_rate),
                      learning_rate_schedule(config), unroll=cpu), shardings, mesh)
  eval_step = compile_eval_step(job.loss_fn(config, train=False), shardings, mesh)
  tc = config.training
  draw = (sharded_sampler(config, job, sample_batch_size(config, tc.snapshot_num_samples, mesh),
                          mesh) if tc.snapshot_sampling else None)
  return train_step, eval_step, draw


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains the config's model, resuming from ``workdir``'s latest checkpoint if there is one.

  Writes ``workdir/checkpoints/<step>/`` (every ``snapshot_freq_for_preemption`` steps, the last
  ``training.keep_last`` kept, plus every ``snapshot_freq``-th kept for good), TensorBoard events
  under ``workdir/tensorboard/`` and snapshot sample grids under ``workdir/samples/``.

  Returns:
    The state at the last step trained (after a preemption: the step saved).

  Raises:
    ValueError: for a batch size the devices do not divide, or bad periods, at start-up.
    FloatingPointError: at the first non-finite loss, gradient norm or parameter (naming the
      step); the checkpoints written before it stay as they are.
  """
  tc = config.training
  parallel.initialize()
  mesh = parallel.make_mesh(config.parallel.fsdp)
  per_process = parallel.check_batch_size(tc.batch_size, mesh)
  last = final_step(config)
  job = Job.from_config(config)
  optimizer = make_optimizer(config)
  manager = checkpoints.checkpoint_manager(workdir, keep_last=tc.keep_last,
                                           keep_every=tc.snapshot_freq,
                                           item_names=checkpoints.TRAIN_ITEMS, writer=True)
  state, shardings, step = restore_or_init(manager, job, optimizer, mesh, config.seed)
  train_step, eval_step, draw = _programs(config, job, optimizer, shardings, mesh)
  batches = train_batches(config, per_process, step, mesh)
  evals = eval_batches(config, per_process, mesh)
  os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
  log = MetricLog(workdir, tc.batch_size, last)
  meta = _meta(config, state)
  logging.info('Training %s (%d parameters) from step %d to %d on a %s mesh, %d images per '
               'process per step.', config.model.name, meta['num_params'], step, last,
               dict(mesh.shape), per_process)

  def evaluate(state, step):
    if step % tc.eval_freq == 0:
      log.scalar('eval/loss', float(eval_step(state, next(evals))), step, echo=True)

  def snapshot(state, step):
    if draw is not None:
      judge_snapshot(config, _snapshot(draw, config.seed, state.params_ema, workdir, step),
                     workdir, step)

  return run_steps(state, step, last, tc, train_step, batches, manager, log, meta,
                   after_step=evaluate, after_snapshot=snapshot)


def run_steps(state: TrainState, step: int, last: int, tc, train_step, batches, manager,
              log: MetricLog, meta: dict, *, after_step=None, after_snapshot=None) -> TrainState:
  """The loop of every trainer here, from ``step`` to ``last``; closes ``manager`` and ``log``.

  Per compiled call (``tc.n_jitted_steps`` optimizer steps): the metrics to ``log`` (written
  every ``tc.log_freq``), ``after_step(state, step)``, then a checkpoint on the preemption
  cadence (``tc.snapshot_freq_for_preemption``), the keep cadence (``tc.snapshot_freq``), the
  last step or SIGTERM / a TPU preemption notice, each after ``log.check()`` (non-finite
  values stop before anything is saved); ``after_snapshot(state, step)`` after the keep-cadence
  and last saves. A preemption stops the loop after its save.

  Returns:
    The state at the last step trained (after a preemption: the step saved).
  """
  try:
    with Preemption() as preemption:
      while step < last:
        # --- one compiled call: n_jitted_steps optimizer steps.
        state, metrics = train_step(state, next(batches))
        step += tc.n_jitted_steps
        log.add(step, metrics)
        if step % tc.log_freq == 0:
          log.write(step)
        if after_step is not None:
          after_step(state, step)
        # --- checkpoints: on the preemption cadence, the keep cadence, the end, or SIGTERM.
        preempted = preemption.reached(step)
        snapshot = step % tc.snapshot_freq == 0 or step == last
        if preempted or snapshot or step % tc.snapshot_freq_for_preemption == 0:
          log.check()
          save_state(manager, state, step, meta)
        if snapshot and after_snapshot is not None:
          after_snapshot(state, step)
        if preempted:
          logging.warning('Preempted: saved step %d; stopping.', step)
          break
  finally:
    # A failure must leave the checkpoints written so far complete.
    manager.wait_until_finished()
    manager.close()
    log.close()
  return state


def sample(config, workdir: str, num_samples: int) -> str:
  """Draws ``num_samples`` images with the EMA weights of ``workdir``'s latest checkpoint.

  Sample i comes from ``fold_in(key(config.seed), i)`` whatever the batch size or device count.
  Writes ``workdir/samples/samples.npz`` (``samples``: uint8, NHWC) and ``grid.png`` (the first
  64); outputs of an earlier call move to ``samples/previous-<time>/``.

  Returns:
    The path of ``samples.npz``.
  """
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples} must be positive.')
  parallel.initialize()
  mesh = parallel.make_mesh(config.parallel.fsdp)
  job = Job.from_config(config)
  abstract = job.abstract_params()
  target = with_shardings(abstract, parallel.param_shardings(mesh, abstract))
  params, step = checkpoints.restore_params(workdir, target)
  batch = sample_batch_size(config, num_samples, mesh)
  draw = sharded_sampler(config, job, batch, mesh)
  logging.info('Sampling %d images from checkpoint %d in batches of %d with %s.', num_samples,
               step, batch, sampling.describe_from_config(config))
  key, parts = jax.random.key(config.seed), []
  with tqdm(total=num_samples, unit='img', disable=jax.process_index() != 0) as bar:
    for first in range(0, num_samples, batch):
      parts.append(to_uint8(gather(draw(key, params, first)[0]))[:num_samples - first])
      bar.update(len(parts[-1]))
  images = np.concatenate(parts)
  out = os.path.join(workdir, 'samples')
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    keep_previous_outputs(out, ('samples.npz', 'grid.png'))
    np.savez(os.path.join(out, 'samples.npz'), samples=images)
    viz.image_grid_png(os.path.join(out, 'grid.png'), images[:64])
  return os.path.join(out, 'samples.npz')
