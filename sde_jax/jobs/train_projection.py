"""``sde-jax train-projection --config C --workdir W``: trains the projection network of
Predict-Project sampling against the frozen EMA score network of W's latest checkpoint.

The job is the score trainer's loop (:func:`sde_jax.train.fit`): the sharded ``TrainState``,
Adam with warm-up, clipping and EMA, ``n_jitted_steps`` steps per compiled call, restore-or-init,
the SIGTERM / preemption save, non-finite checks and TensorBoard logs. Its files live under
``W/projection/`` (``checkpoints/<step>/``, ``tensorboard/``), beside the score model's.

A resume is guarded as ``sde-jax train``'s is, on the config the projection was trained with:
the score network's fields and the ``projection`` section (its schedule aside), recorded as
``projection_job`` (score training never reads ``projection``, so its own guard skips it), with
the score checkpoint's step (``score_step``): a projection is never continued against another
score network; and the two sampler fields that the loss reads, as it reads them
(``projection_job.sampling``: ``pp_n_steps``, the N trained on when ``projection.train_n_steps``
is None, and ``eps``, defaults filled in), since the guard of score training leaves the whole
``sampling`` section free. ``--allow_config_change=sampling.eps`` names them as the config does.
"""

from __future__ import annotations

import json
import os

from absl import logging

from sde_jax import checkpoints, parallel, sampling, train
from sde_jax.jobs import config_check
from sde_jax.projection.loss import projection_loss_fn
from sde_jax.projection.network import SUBDIR, get_projection_fn, get_projection_model
from sde_jax.score_model import ScoreModel

_SCHEDULE = ('n_iters', 'n_jitted_steps', 'log_freq', 'eval_freq', 'snapshot_freq',
             'snapshot_freq_for_preemption', 'keep_last')


def trained_n_steps(config, sde) -> tuple[int, ...]:
  """``projection.train_n_steps``, or the sampler's N (``sampling.pp_n_steps`` or ``sde.N``)."""
  steps = config.projection.get('train_n_steps')
  if steps is None:
    steps = (config.sampling.get('pp_n_steps') or sde.N,)
  return tuple(int(n) for n in steps)


def sampler_fields(config, n_steps: tuple[int, ...], eps: float) -> dict:
  """The fields of ``config.sampling`` the projection is trained on, with the values used:
  ``pp_n_steps`` (only when ``projection.train_n_steps`` leaves the N to it) and ``eps``."""
  fields = {'eps': eps}
  if config.projection.get('train_n_steps') is None:
    fields['pp_n_steps'] = n_steps[0]
  return fields


def guarded_config(config, score_step: int, sampler: dict) -> dict:
  """The config a resume is checked against (module docstring); ``sampler`` is
  :func:`sampler_fields`."""
  out = json.loads(config.to_json_best_effort())
  job = out.pop('projection')
  for name in _SCHEDULE:
    job['training'].pop(name, None)
  return {**out, 'projection_job': {**job, 'score_step': score_step, 'sampling': sampler}}


def _allowed(names) -> tuple[str, ...]:
  """``--allow_config_change`` names with ``projection.`` and ``sampling.`` read as
  ``projection_job.`` and ``projection_job.sampling.`` (both name fields of the guarded config as
  the user's config does)."""
  out = []
  for name in names:
    for section, guarded in (('projection', 'projection_job'),
                             ('sampling', 'projection_job.sampling')):
      if name == section or name.startswith(section + '.'):
        name = guarded + name[len(section):]
        break
    out.append(name)
  return tuple(out)


def restore_score(config, workdir: str, score_model, mesh):
  """The frozen EMA score parameters of ``workdir``'s latest checkpoint and their step.

  Raises:
    FileNotFoundError: naming the folder, if ``workdir`` holds no score checkpoint.
  """
  try:
    return checkpoints.restore_ema(workdir, score_model.abstract_params(), mesh)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'sde-jax train-projection trains against the score model in '
        f'{os.path.join(workdir, "checkpoints")}, which holds no checkpoint ({e}); train one '
        f'first (sde-jax train --config ... --workdir {workdir}) or import one.') from e


def train_projection(config, workdir: str,
                     allow_config_change: tuple[str, ...] = ()) -> train.TrainState:
  """Trains ``config.projection`` against the frozen score network of ``workdir``.

  Reads ``config.projection`` (network: ``name``, ``width``, ``model``; ``train_n_steps``,
  ``ema_rate``, ``training``, ``optim``), the score network's fields, ``config.data`` and the
  sampler's ``eps`` (``sampling.eps``, default by SDE).

  Returns:
    The state at the last step trained (after a preemption: the step saved).

  Raises:
    ValueError: for bad config values (:func:`sde_jax.jobs.config_check.check`, all named), before
      anything is read, compiled or written.
    FileNotFoundError: if ``workdir`` holds no score checkpoint.
  """
  p = config.projection
  mesh = parallel.mesh_from_config(config)
  config_check.check(config, 'train-projection', mesh)
  score_model = ScoreModel.from_config(config)
  score_params, score_step = restore_score(config, workdir, score_model, mesh)
  model = get_projection_model(config)
  n_steps = trained_n_steps(config, score_model.sde)
  eps = sampling.config_fields(config, score_model.sde)['eps']
  loss_fn = projection_loss_fn(score_model.sde, score_model.score_fn, score_params,
                               get_projection_fn(score_model.sde, model), score_model.scaler,
                               n_steps, eps)
  trainer = train.Trainer(
      name=f'projection ({model.__class__.__name__})', source='sde-jax train-projection',
      model=model, example_shape=score_model.image_shape, loss_fn=loss_fn,
      training=p.training, optim=p.optim, ema_rate=p.ema_rate,
      meta={'score_step': score_step, 'train_n_steps': list(n_steps), 'eps': eps,
            'config': guarded_config(config, score_step, sampler_fields(config, n_steps, eps))})
  logging.info('Training the projection for N in %s against the score network of step %d.',
               n_steps, score_step)
  directory = os.path.join(workdir, SUBDIR)
  return train.fit(config, trainer, directory, mesh,
                   allow_config_change=_allowed(allow_config_change))

