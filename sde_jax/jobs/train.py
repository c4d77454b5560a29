"""``sde-jax train``: the score model's :class:`~sde_jax.train.loop.Trainer`, its eval loss and
its snapshot sample grids (judged by the digits classifier on the embedded digits)."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from sde_jax import images as images_lib
from sde_jax import parallel, viz, workdir as workdir_lib
from sde_jax import data as data_lib
from sde_jax.sampling import sharded
from sde_jax.score_model import ScoreModel
from sde_jax.train import loop
from sde_jax.train import state as state_lib
from sde_jax.data import global_batches
from sde_jax.jobs import config_check, score_trainer
from sde_jax.metrics import digits

SAMPLES_DIR = 'samples'


def write_sample_grid(draw, seed: int, params, workdir: str, step: int) -> np.ndarray:
  """Samples a batch with ``params``, writes ``samples/step_<step>.png``, returns the uint8 images.

  Args:
    draw: a sampler of :func:`sde_jax.sampling.sharded.sharded_sampler`.
    seed: the job's seed.
    params: the EMA parameters.
    workdir: the job's directory.
    step: the step, for the file name.

  Returns:
    The images, uint8 NHWC.
  """
  images = images_lib.to_uint8(parallel.gather(draw(jax.random.key(seed), params, 0)[0]))
  if jax.process_index() == 0:
    path = workdir_lib.fresh_path(workdir_lib.path(workdir) / SAMPLES_DIR / f'step_{step}.png')
    viz.image_grid_png(path, images)
    logging.info('Wrote snapshot samples to %s', path)
  return images


def judge_samples(config, images: np.ndarray, workdir: str, step: int) -> str | None:
  """For the embedded digits: what a classifier trained on real digits says of ``images``.

  Appends a row to ``workdir/samples/quality.md`` and returns it; None for other data sets,
  which have no embedded judge (their quality is measured by ``sde-jax eval``).

  Args:
    config: the job's config.
    images: uint8 samples (N, H, W, C).
    workdir: the job's directory.
    step: the step the samples are of.

  Returns:
    The table row, or None.
  """
  if config.data.dataset not in data_lib.DIGITS_DATASETS or jax.process_index() != 0:
    return None
  j = digits.judge_digits(digits.intensity(images.astype(np.float32) / 255.0))
  path = workdir_lib.path(workdir) / SAMPLES_DIR / 'quality.md'
  if not path.exists():
    workdir_lib.write_text(path, (
        'Samples judged by an SVM trained on real digits (sde_jax/metrics/digits.py); the '
        f'same judge on held-out real digits: {j.real_accuracy:.1%} accurate, '
        f'{j.real_confident_fraction:.1%} confident (top class p >= 0.9).\n\n'
        '| step | samples | confident | mean top p | classes covered | count per class 0-9 |\n'
        '|---:|---:|---:|---:|---:|---|\n'))
  row = (f'| {step} | {len(images)} | {j.confident_fraction:.1%} | {j.mean_top_probability:.3f} '
         f'| {j.classes_covered}/10 | {" ".join(map(str, j.class_counts))} |')
  workdir_lib.append_text(path, row + '\n')
  logging.info('Digits judge at step %d: %.1f%% of %d samples labelled confidently (real digits: '
               '%.1f%%), %d/10 classes covered; see %s', step, 100 * j.confident_fraction,
               len(images), 100 * j.real_confident_fraction, j.classes_covered, path)
  return row


def train_and_evaluate(config, workdir: str,
                       allow_config_change: tuple[str, ...] = ()) -> state_lib.TrainState:
  """Trains the config's score model, resuming from ``workdir``'s newest intact checkpoint.

  A resume whose config differs from the saved one in a field that is not schedule-only
  (:data:`sde_jax.train.config_guard.SCHEDULE_ONLY`) is refused, naming each field with its
  saved and new value, unless ``allow_config_change`` names it (or is ``('all',)``).

  Writes ``workdir/checkpoints/<step>/``, TensorBoard events under ``workdir/tensorboard/`` (see
  :func:`sde_jax.train.loop.fit`) and, with ``training.snapshot_sampling``, a grid of samples of
  the EMA parameters at each checkpoint kept for good under ``workdir/samples/`` (with the
  digits judge's ``quality.md`` on the embedded digits). The eval loss of the EMA parameters on
  one eval batch is logged every ``training.eval_freq`` steps.

  Returns:
    The state at the last step trained (after a preemption: the step saved).

  Raises:
    ValueError: for bad config values (:func:`sde_jax.jobs.config_check.check`, all of them named),
      before anything is written or compiled.
  """
  tc = config.training
  mesh = parallel.mesh_from_config(config)
  config_check.check(config, 'train', mesh)  # every field, before the workdir is touched
  per_process = parallel.check_batch_size(tc.batch_size, mesh)
  loop.final_step(tc)
  score_model = ScoreModel.from_config(config)

  evals = global_batches.eval_batches(config, per_process, mesh)
  eval_loss = score_model.loss_fn(config, train=False)
  eval_steps = {}

  def evaluate(state, step):
    del step
    if not eval_steps:  # compiled at the first use, for the state's shardings
      shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
      eval_steps['loss'] = state_lib.compile_eval_step(eval_loss, shardings, mesh)
    return {'loss': float(eval_steps['loss'](state, next(evals)))}

  draw = None
  if tc.snapshot_sampling:
    draw = sharded.sharded_sampler(
        config, score_model, sharded.sample_batch_size(config, tc.snapshot_num_samples, mesh),
        mesh)

  def sample_grid(state, step):
    images = write_sample_grid(draw, config.seed, state.params_ema, workdir, step)
    judge_samples(config, images, workdir, step)

  (workdir_lib.path(workdir) / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
  trainer = score_trainer.score_trainer(config, score_model, evaluate=evaluate,
                                        after_keep=sample_grid if draw is not None else None)
  return loop.fit(config, trainer, workdir, mesh, allow_config_change=allow_config_change)
