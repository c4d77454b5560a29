"""``sde-jax plan``: the jobs' programs compiled ahead of time for a TPU (or GPU) topology, on
any host.

The compile-only devices of the topology (:func:`sde_jax.parallel.topology_devices`) make
the job's ``(data, fsdp)`` mesh; each program is built by the code the jobs run (the trainer and
its compiled step, the eval-loss step, the sharded sampler, the bits/dim likelihood, the FID
Inception) from abstract arguments (``jax.eval_shape``: nothing is initialised, read or run), and
compiled. :mod:`sde_jax.compile_report` turns what XLA says about the compiled program into
memory per chip against the chip's HBM, FLOPs per image, bytes accessed and a roofline bound.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging
from flax import traverse_util

from sde_jax import compile_report, parallel, chips
from sde_jax.data import global_batches
from sde_jax.evaluate import inception_net
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.settings import EvalSettings
from sde_jax.jobs import config_check, score_trainer
from sde_jax.metrics import fid, inception
from sde_jax.projection import abstract_projection
from sde_jax.sampling import sharded
from sde_jax.score_model import ScoreModel
from sde_jax.train import loop
from sde_jax.train import state as state_lib

# Programs by name; the first three are the default (what training and sampling run).
PROGRAMS = ('train', 'eval_loss', 'sample', 'bpd', 'fid_features')
DEFAULT_PROGRAMS = PROGRAMS[:3]
# The config field each program's batch comes from (what --max_batch varies).
BATCH_FIELDS = {'train': 'training.batch_size', 'eval_loss': 'training.batch_size',
                'sample': 'eval.batch_size', 'bpd': 'eval.batch_size',
                'fid_features': 'eval.batch_size'}
LOOP_UNIT = 'sampler step'  # XLA counts a loop body once: one pass of the sampler's loop


def target(topology: str, devices=None) -> compile_report.Target:
  """The devices to compile for: ``topology``'s compile-only TPU or GPU devices, or
  ``devices`` (any platform, e.g. CPU devices to compare XLA:CPU's counts with) named
  ``topology``.

  Raises:
    ValueError: for an unknown topology, naming the accepted forms.
    RuntimeError: if its compiler (libtpu, JAX's CUDA plugin) is missing, with the command that
      installs it.
  """
  if devices is None:
    _cpu_default_backend()
    devices = parallel.topology_devices(topology)
  # None for CPU devices: no HBM to fit in, no peak to bound by.
  chip = chips.BY_DEVICE_KIND.get(devices[0].device_kind)
  return compile_report.Target(topology, tuple(devices), chip)


def _cpu_default_backend() -> None:
  """The host's own backend stays the CPU: with libtpu installed, JAX would otherwise try to
  claim TPU chips this process never runs on (failing, with noise, on a CPU host; taking them
  from a training job on a TPU VM). ``JAX_PLATFORMS`` set by the user wins."""
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')


def plan(config, topology: str, programs=DEFAULT_PROGRAMS, devices=None,
         batches: dict | None = None) -> list[compile_report.ProgramReport]:
  """Compiles ``programs`` of ``config`` for ``topology`` and reports each.

  Args:
    config: the job's config (its ``parallel.fsdp`` splits the mesh, its batch sizes are used).
    topology: a TPU or GPU topology (:data:`sde_jax.parallel.TOPOLOGY_FORMS`).
    programs: names from :data:`PROGRAMS`.
    devices: compile for these devices instead of the topology's (a CPU comparison).
    batches: global batches by program, instead of the config's (``--max_batch``).

  Returns:
    One report per program, in order.

  Raises:
    ValueError: for an unknown program or topology, or a bad config (every bad field named,
      a batch the mesh cannot split among them), before anything is compiled.
    RuntimeError: if the topology's compiler (libtpu, JAX's CUDA plugin) is missing.
  """
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise ValueError(f'--programs: {unknown} are not programs of sde-jax plan; expected some of '
                     f'{list(PROGRAMS)}.')
  where = target(topology, devices)
  mesh = parallel.make_mesh(config.parallel.fsdp, where.devices)
  config_check.check(config, 'plan', mesh)
  score_model = ScoreModel.from_config(config)
  reports = []
  for name in programs:
    batch = (batches or {}).get(name) or default_batch(config, name, mesh)
    parallel.check_batch_size(batch, mesh, BATCH_FIELDS[name])
    jitted, args, images, unit = BUILDERS[name](config, score_model, mesh, batch)
    logging.info('plan: compiling %s for %s (global batch %d)...', name, topology, batch)
    reports.append(compile_report.compile_and_report(name, jitted, args, where, batch, images,
                                                     unit))
    logging.info('plan: %s compiled in %.1f s: %s per chip, %s', name, reports[-1].compile_s,
                 compile_report.format_bytes(reports[-1].per_chip_bytes),
                 'fits' if reports[-1].fits else 'does not fit')
  return reports


def default_batch(config, program: str, mesh) -> int:
  """The global batch the jobs run ``program`` with: ``training.batch_size`` for the train and
  eval-loss steps; ``eval.batch_size`` rounded up to a multiple of the devices otherwise."""
  if BATCH_FIELDS[program] == 'training.batch_size':
    return int(config.training.batch_size)
  return sharded.sample_batch_size(config, int(config.eval.batch_size), mesh)


def _abstract_state(config, trainer, mesh):
  abstract, shardings = state_lib.abstract_state(loop.initializer(trainer), config.seed, mesh,
                                                 config.parallel.fsdp_min_size)
  return parallel.with_shardings(abstract, shardings), shardings


def _train(config, score_model, mesh, batch):
  trainer = score_trainer.score_trainer(config, score_model)
  state, shardings = _abstract_state(config, trainer, mesh)
  n = int(config.training.n_jitted_steps)
  batches = global_batches.abstract_stacked_batches(n, batch, score_model.image_shape, mesh)
  counted = n if loop.unrolls_steps(mesh) else 1  # XLA counts a scan's body once
  return (loop.compile_step(trainer, shardings, mesh), (state, batches),
          batch / mesh.size * counted, 'optimizer step')


def _eval_loss(config, score_model, mesh, batch):
  state, shardings = _abstract_state(config, score_trainer.score_trainer(config, score_model),
                                     mesh)
  step = state_lib.compile_eval_step(score_model.loss_fn(config, train=False), shardings, mesh)
  data = global_batches.abstract_eval_batch(batch, score_model.image_shape, mesh)
  return step, (state, data), batch / mesh.size, 'eval batch'


def _ema_params(score_model, mesh):
  """The EMA parameters as the sample and eval jobs restore them (``restore_ema``)."""
  abstract = score_model.abstract_params()
  return parallel.with_shardings(abstract, parallel.sharded_like(abstract, mesh))


def _sample(config, score_model, mesh, batch):
  params = _ema_params(score_model, mesh)
  projection = None
  if config.sampling.method.lower() == 'predict_project':
    projection = abstract_projection(config, score_model, mesh)
    params = (params, projection.params)
  draw = sharded.sharded_program(config, score_model, batch, mesh,
                                 None if projection is None else projection.fn)
  return draw, sharded.abstract_arguments(params, mesh), batch / mesh.size, LOOP_UNIT


def _bpd(config, score_model, mesh, batch):
  programs = EvalPrograms(config, score_model, EvalSettings.from_config(config, check=False),
                          batch, mesh)
  key, params, _ = sharded.abstract_arguments(_ema_params(score_model, mesh), mesh)
  data = jax.ShapeDtypeStruct((batch, *score_model.image_shape), jnp.float32,
                              sharding=parallel.batch_sharding(mesh))
  first = jax.ShapeDtypeStruct((), jnp.uint32, sharding=parallel.replicated(mesh))
  return (programs.likelihood.jitted, (key, score_model.score_fn, params, data, None, first),
          batch / mesh.size, 'ODE solver step')


def _fid_features(config, score_model, mesh, batch):
  model, apply_fn = inception_net.inception_network(EvalSettings.from_config(config, check=False))
  abstract = traverse_util.unflatten_dict(inception.param_shapes(model))  # as load_params nests
  params = parallel.with_shardings(
      abstract, jax.tree_util.tree_map(lambda _: parallel.replicated(mesh), abstract))
  images = jax.ShapeDtypeStruct((batch, *score_model.image_shape), jnp.uint8,
                                sharding=parallel.batch_sharding(mesh))
  return fid.sharded_feature_fn(apply_fn, mesh), (params, images), batch / mesh.size, 'batch'


BUILDERS: dict[str, Callable] = {'train': _train, 'eval_loss': _eval_loss, 'sample': _sample,
                                 'bpd': _bpd, 'fid_features': _fid_features}


def max_batch(config, topology: str, program: str = 'train', devices=None,
              limit: int = 2 ** 20) -> tuple[int | None, list[compile_report.ProgramReport]]:
  """The largest global batch (a multiple of the devices) at which ``program`` fits.

  Starts at the config's batch, doubles while it fits (or halves until it does), then bisects
  between the last batch that fits and the first that does not. Every candidate is one
  compile, logged with its verdict and time.

  Returns:
    ``(batch, reports)``: the largest batch that fits (None if not even one example per device
    does) and the report of every candidate, in the order compiled.

  Raises:
    ValueError: off TPU (no memory to fit in), and as :func:`plan`.
  """
  where = target(topology, devices)
  if where.chip is None:
    raise ValueError(f'--max_batch needs a TPU or GPU topology; {topology!r} has no memory '
                     'size to fit in.')
  step = parallel.make_mesh(config.parallel.fsdp, where.devices).size
  tried = []

  def fits(batch: int) -> bool:
    report = plan(config, topology, (program,), where.devices, {program: batch})[0]
    tried.append(report)
    logging.info('plan --max_batch: %s at global batch %d %s (%s per chip); compiled in %.1f s',
                 program, batch, 'fits' if report.fits else 'does not fit',
                 compile_report.format_bytes(report.per_chip_bytes), report.compile_s)
    return bool(report.fits)

  start = max(step, default_batch(config, program, parallel.make_mesh(
      config.parallel.fsdp, where.devices)) // step * step)
  return search_batch(fits, start, step, limit), tried


def search_batch(fits: Callable[[int], bool], start: int, step: int, limit: int) -> int | None:
  """The largest multiple of ``step`` up to ``limit`` for which ``fits`` holds (None if not
  even ``step`` fits), assuming every smaller batch fits when one does: from ``start``,
  doubling while it fits (halving until it does), then bisecting."""
  good, bad = _bracket(fits, start, step, limit)
  while good is not None and bad is not None and bad - good > step:
    middle = (good + bad) // (2 * step) * step
    good, bad = (middle, bad) if fits(middle) else (good, middle)
  return good


def _bracket(fits: Callable[[int], bool], start: int, step: int, limit: int):
  """``(good, bad)``: a batch that fits and one above it that does not (``bad`` None when
  ``limit`` fits; ``good`` None when ``step`` itself does not fit)."""
  if fits(start):
    good = start
    while True:
      larger = min(2 * good, limit // step * step)
      if larger <= good:
        return good, None
      if not fits(larger):
        return good, larger
      good = larger
  bad = start
  while bad > step:
    smaller = max(step, bad // (2 * step) * step)
    if fits(smaller):
      return smaller, bad
    bad = smaller
  return None, bad


def plan_text(config, topology: str, programs=DEFAULT_PROGRAMS, as_json: bool = False,
              search: bool = False) -> str:
  """What ``sde-jax plan`` prints: each program's report (:func:`plan`), or with ``search``
  the largest batch of each that fits (:func:`max_batch`) and its report; with ``as_json``,
  one JSON object per program and line."""
  if not search:
    reports = plan(config, topology, programs)
    return '\n'.join(json.dumps(r.to_json()) if as_json else r.describe() for r in reports)
  lines = []
  for program in programs:
    batch, tried = max_batch(config, topology, program)
    best = next((r for r in tried if r.batch == batch and r.fits), None)
    seconds = sum(r.compile_s for r in tried)
    if as_json:
      lines.append(json.dumps({'program': program, 'topology': topology, 'max_batch': batch,
                               'compiles': len(tried), 'compile_s': seconds,
                               'report': best.to_json() if best else None}))
    else:
      lines.append(f'{program}: the largest global batch that fits on {topology} is {batch} '
                   f'({len(tried)} compiles, {seconds:.0f} s)')
      lines += [best.describe()] if best else []
  return '\n'.join(lines)
