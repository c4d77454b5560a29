"""``sde-jax eval``: the evaluation of a workdir's checkpoints, stage after stage."""

from __future__ import annotations

import os

import jax
from absl import logging

from sde_jax import checkpoints, parallel, rng
from sde_jax import projection as projection_lib
from sde_jax import workdir as workdir_lib
from sde_jax.evaluate.bpd import eval_bpd
from sde_jax.evaluate.checkpoint_index import Checkpoint, CheckpointIndex, check_same_checkpoint
from sde_jax.evaluate.inception_net import load_data_pools, load_inception
from sde_jax.evaluate.loss import eval_loss
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.report import report_header, write_reports
from sde_jax.evaluate.samples import eval_samples
from sde_jax.evaluate.settings import EvalSettings, check_fingerprint, fingerprint, round_size
from sde_jax.jobs import config_check
from sde_jax.score_model import ScoreModel


def _ema_restorer(workdir: str, abstract, mesh, step: int):
  """``() -> the EMA parameters of step``, sharded over ``mesh`` as training shards them."""
  return lambda: checkpoints.restore_ema(workdir, abstract, mesh, step=step)[0]


def _projection(config, workdir: str, settings: EvalSettings, score_model, mesh,
                allow_mismatch: bool):
  """Predict-Project's network if the samples use it (else None), read once before any
  checkpoint's work. It was trained against one score checkpoint, so a range of several is
  refused here, before hours of work on the first (:func:`sde_jax.projection.check_pairing`
  refuses the others, checkpoint by checkpoint)."""
  if not settings.enable_sampling:
    return None
  projection = projection_lib.projection_if_used(config, workdir, score_model, mesh)
  if (projection is not None and settings.end_ckpt > settings.begin_ckpt
      and not allow_mismatch):
    raise ValueError(
        f'eval.begin_ckpt={settings.begin_ckpt} to eval.end_ckpt={settings.end_ckpt} with '
        "sampling.method='predict_project': the projection network of "
        f'{os.path.join(workdir, projection_lib.SUBDIR)} was trained against one score checkpoint '
        f'(step {projection.score_step}); evaluate that one checkpoint, or pair the projection '
        'with every checkpoint on purpose with --allow_projection_mismatch.')
  return projection


def evaluate(config, workdir: str, eval_folder: str = 'eval',
             config_name: str | None = None, allow_projection_mismatch: bool = False) -> dict:
  """Evaluates checkpoints ``eval.begin_ckpt .. eval.end_ckpt`` of ``workdir`` (EMA weights).

  Per checkpoint, as enabled: the eval loss, bits/dim, and samples with FID / IS / KID; each
  in rounds whose results are files, so that a killed job resumes at the first unfinished
  round. Waits for checkpoints that do not exist yet; skips, with a warning naming the step
  and file, a checkpoint that is damaged (:mod:`sde_jax.checkpoints.integrity`). See
  :mod:`sde_jax.evaluate` for the files.

  Args:
    config: the model's config with the ``eval`` fields.
    workdir: holds ``checkpoints/`` (trained or imported).
    eval_folder: the sub-folder of ``workdir`` for results.
    config_name: the config file, recorded in the report (``sde-jax compare`` reads it).
    allow_projection_mismatch: with ``sampling.method='predict_project'``, sample every
      checkpoint with the projection network, whichever score checkpoint it was trained against.

  Returns:
    The report: settings and one row per checkpoint evaluated in this folder so far (the rows
    only on process 0).

  Raises:
    FileNotFoundError: for missing Inception weights or data statistics, at start-up.
    ValueError: for bad settings (:func:`sde_jax.jobs.config_check.check`, all of them named, before
      anything is written or compiled), or an eval folder written with other settings; with
      ``sampling.method='predict_project'`` (unless ``allow_projection_mismatch``), for a
      range of checkpoints, or a checkpoint other than the projection network's score checkpoint.
  """
  config_check.check(config, 'eval')  # every field, before the workdir is touched
  settings = EvalSettings.from_config(config)
  mesh = parallel.mesh_from_config(config)
  batch = round_size(settings, mesh)
  eval_dir = os.path.join(workdir, eval_folder)
  score_model = ScoreModel.from_config(config)
  projection = _projection(config, workdir, settings, score_model, mesh,
                           allow_projection_mismatch)
  net = load_inception(settings, mesh) if settings.enable_sampling else None
  data_pools = None
  if net is not None:
    data_pools = load_data_pools(settings, config, net)  # checked on every process, kept on 0
    data_pools = data_pools if jax.process_index() == 0 else None
  check_fingerprint(eval_dir, fingerprint(config, settings, batch))
  header = report_header(config, settings, eval_dir, config_name, net)
  abstract = score_model.abstract_params()
  programs = EvalPrograms(config, score_model, settings, batch, mesh, projection)
  index = CheckpointIndex(workdir, settings.snapshot_freq)
  sample_key, eval_key = jax.random.key(config.seed), jax.random.key(config.seed + 1)
  logging.info('Evaluating checkpoints %d to %d of %s into %s: loss %s, bits/dim %s, %s.',
               settings.begin_ckpt, settings.end_ckpt, workdir, eval_dir, settings.enable_loss,
               settings.enable_bpd, f'{settings.num_samples} samples in rounds of {batch} with '
               f'{header["sampler"]}' if settings.enable_sampling else 'no sampling')
  report = {**header, 'checkpoints': []}
  try:
    for number in range(settings.begin_ckpt, settings.end_ckpt + 1):
      try:
        step, source = index.wait_for(number)
      except checkpoints.DamagedCheckpointError as e:
        logging.warning('Skipping checkpoint %d: %s', number, e)  # no row in the report
        continue
      if projection is not None:
        projection_lib.check_pairing(projection, step, workdir, allow_projection_mismatch)
      ckpt = Checkpoint(number, step, source, os.path.join(eval_dir, f'ckpt_{number}'),
                        _ema_restorer(workdir, abstract, mesh, step))
      check_same_checkpoint(ckpt)
      workdir_lib.remove_temporary(ckpt.directory)
      row = {'ckpt': number, 'step': step, 'source': source}
      if settings.enable_loss:
        row.update(eval_loss(ckpt, programs, config, jax.random.fold_in(eval_key, rng.EVAL_LOSS))
                   or {})
      if settings.enable_bpd:
        row.update(eval_bpd(ckpt, programs, config, settings,
                            jax.random.fold_in(eval_key, rng.EVAL_BPD)) or {})
      if settings.enable_sampling:
        row.update(eval_samples(ckpt, programs, settings, net, data_pools, sample_key) or {})
      if jax.process_index() == 0:
        # Stages off in this run keep the numbers of an earlier run (same recorded settings).
        row = {**workdir_lib.read_json(ckpt.path('report.json')), **row}
        workdir_lib.write_json(ckpt.path('report.json'), row)
        report = write_reports(eval_dir, header)
        logging.info('Checkpoint %d: %s', number, {k: v for k, v in row.items()
                                                   if isinstance(v, (int, float))})
  finally:
    index.close()
  return report
