"""Training of the noise-conditional classifier ``p_t(y | x_t)`` for class-conditional sampling.

``sde-jax train-classifier --config CONFIG --workdir DIR`` trains ``config.classifier`` on noisy
data of the config's own SDE: ``x_t = m(t) x_0 + s(t) z`` with ``t ~ U[eps, T]``, fed with the
noise level :func:`sde_jax.models.classifier.classifier_noise_level` (``s / m``) that
class-conditional sampling feeds it too. (The original trained on VE noise only and fed a VP
model's ``s(t)`` to that classifier.)

The job reuses the score-model trainer's pieces (:mod:`sde_jax.train`): the sharded
``TrainState``, Adam with warm-up, clipping and EMA, ``n_jitted_steps`` steps per compiled call,
restore-or-init, the SIGTERM / preemption save and the non-finite checks. Its files live under
``DIR/classifier/``: ``checkpoints/<step>/``, ``tensorboard/`` and ``accuracy.json`` (accuracy of
the EMA parameters on the eval split at a few times t), so the same DIR holds the score model.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from sde_jax import parallel, rng, train, workdir as workdir_lib
from sde_jax import data as data_lib
from sde_jax.controllable.classifier_checkpoint import SUBDIR
from sde_jax.controllable.classifier_loss import (EVAL_TIMES, classifier_loss_fn,
                                                  make_accuracy_fn)
from sde_jax.jobs import config_check
from sde_jax.models import classifier as classifier_lib
from sde_jax.score_model import ScoreModel


def evaluate_accuracy(config, accuracy, params, per_process: int, mesh,
                      seed: int) -> dict[str, float]:
  """Accuracy of ``params`` on the whole eval split at each time of :data:`EVAL_TIMES`, with
  ``accuracy`` from :func:`make_accuracy_fn`."""
  correct = count = 0
  key = jax.random.fold_in(jax.random.key(seed), rng.TRAIN_EVAL)
  for i, batch in enumerate(data_lib.get_dataset(config, 'eval', batch_size=per_process,
                                                 seed=config.seed)):
    batch = parallel.host_local_to_global(
        {k: batch[k] for k in ('image', 'label', 'mask')}, mesh)
    c, n = accuracy(params, jax.random.fold_in(key, i), batch)
    correct, count = correct + np.asarray(c), count + np.asarray(n)
  return {f't={t:g}': float(a) for t, a in zip(EVAL_TIMES, correct / np.maximum(count, 1))}


def train_classifier(config, workdir: str,
                     allow_config_change: tuple[str, ...] = ()) -> train.TrainState:
  """Trains ``config.classifier`` on noisy data of the config's SDE; resumes if it can.

  A resume is guarded as ``sde-jax train``'s is (:func:`sde_jax.train.fit`): a changed field
  outside the schedule (``classifier.training.n_iters``, cadences, ...) and
  ``allow_config_change`` is refused.

  Reads ``config.classifier`` (the network, ``ema_rate``, ``training``: batch_size, n_iters,
  n_jitted_steps, log_freq, eval_freq, snapshot_freq, snapshot_freq_for_preemption, keep_last,
  eps; ``optim``: as ``config.optim``), ``config.data``, ``config.training.sde`` and the SDE's
  noise fields of ``config.model``. Writes ``workdir/classifier/accuracy.json`` at the last step.

  Returns:
    The state at the last step trained (after a preemption: the step saved).
  """
  c = config.classifier
  mesh = parallel.mesh_from_config(config)
  config_check.check(config, 'train-classifier', mesh)  # every field, before the workdir
  per_process = parallel.check_batch_size(c.training.batch_size, mesh,
                                          'classifier.training.batch_size')
  last = train.final_step(c.training, 'classifier.training')
  job = ScoreModel.from_config(config, model=classifier_lib.get_classifier(config))
  directory = os.path.join(workdir, SUBDIR)
  accuracy = make_accuracy_fn(job.sde, job.model, job.scaler, float(c.training.eps))

  def evaluate(state, step):
    acc = evaluate_accuracy(config, accuracy, state.params_ema, per_process, mesh, config.seed)
    if step == last and jax.process_index() == 0:
      workdir_lib.write_json(os.path.join(directory, 'accuracy.json'),
                             {'step': step, 'accuracy': acc})
    # TensorBoard names: 'accuracy_t0.25' (no '=').
    return {f'accuracy_{k.replace("=", "")}': v for k, v in acc.items()}

  trainer = train.Trainer(
      name=c.name, source='sde-jax train-classifier', model=job.model,
      example_shape=job.image_shape,
      loss_fn=classifier_loss_fn(job.sde, job.model, job.scaler, float(c.training.eps)),
      training=c.training, optim=c.optim, ema_rate=c.ema_rate, batch_keys=('image', 'label'),
      evaluate=evaluate,
      meta={'sde': config.training.sde, 'config': json.loads(config.to_json_best_effort())})
  logging.info('Training the classifier on noisy data of the %s.', config.training.sde)
  return train.fit(config, trainer, directory, mesh, allow_config_change=allow_config_change)
