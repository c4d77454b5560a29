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
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sde_jax import checkpoints, parallel, rng, train
from sde_jax import data as data_lib
from sde_jax import sde as sde_lib
# restore_classifier: re-exported, the trained classifier's reader lives with its users.
from sde_jax.controllable.classifier_checkpoint import SUBDIR, restore_classifier  # noqa: F401
from sde_jax.models import classifier as classifier_lib
from sde_jax.sde import batch_mul

Array = jax.Array
EVAL_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)  # accuracy is reported at these t (0 means eps)


def _perturb(sde: sde_lib.SDE, x0: Array, t: Array, key: Array) -> Array:
  """``x_t = m(t) x_0 + s(t) z``, example i's noise from ``fold_in(key, i)``."""
  mean, std = sde.marginal_prob(x0, t)
  return mean + batch_mul(std, rng.normal(rng.per_example_keys(key, x0.shape[0]), x0.shape))


def classifier_loss_fn(sde: sde_lib.SDE, classifier, scaler, eps: float = 1e-5):
  """Cross-entropy of ``classifier`` on ``x_t ~ p_{0t}(. | x_0)``, ``t ~ U[eps, T]``.

  Returns:
    ``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch = {'image': [0, 1] images,
    'label': int (B,)}``; ``aux`` holds ``per_example`` losses, ``t``, ``correct`` (bool (B,))
    and the ``noise_level`` fed to the network.
  """

  def loss_fn(params, key, batch):
    x0, labels = scaler(batch['image']), batch['label']
    k_t, k_z = jax.random.split(key)
    b = x0.shape[0]
    t = rng.uniform(rng.per_example_keys(k_t, b), (b,)) * (sde.T - eps) + eps
    level = classifier_lib.classifier_noise_level(sde, t)
    logits = classifier.apply({'params': params}, _perturb(sde, x0, t, k_z), level, train=True)
    logp = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    aux = {'per_example': losses, 't': t, 'noise_level': level,
           'correct': jnp.argmax(logits, axis=-1) == labels}
    return jnp.mean(losses), aux

  return loss_fn


def make_accuracy_fn(sde: sde_lib.SDE, classifier, scaler, t_min: float):
  """``accuracy(params, key, batch) -> (correct, count)``, each of shape
  ``(len(EVAL_TIMES),)``: hits at each time of :data:`EVAL_TIMES` (at least ``t_min``) over the
  examples of ``batch = {'image', 'label', 'mask'}`` whose mask is set."""
  times = jnp.maximum(jnp.asarray(EVAL_TIMES, jnp.float32), t_min)

  def at_time(params, key, batch, t):
    x0 = scaler(batch['image'])
    t = jnp.full(x0.shape[:1], t)
    logits = classifier.apply({'params': params}, _perturb(sde, x0, t, key),
                              classifier_lib.classifier_noise_level(sde, t), train=False)
    hits = (jnp.argmax(logits, axis=-1) == batch['label']) & batch['mask']
    return jnp.sum(hits), jnp.sum(batch['mask'])

  def accuracy(params, key, batch):
    return jax.vmap(lambda t: at_time(params, key, batch, t))(times)

  return jax.jit(accuracy)


def _view(config) -> ml_collections.ConfigDict:
  """``config.classifier``'s training and optim sections where the trainer's helpers read
  ``config.training`` and ``config.optim``."""
  c = config.classifier
  return ml_collections.ConfigDict({'training': c.training.to_dict(), 'optim': c.optim.to_dict()})


def _job(config) -> train.Job:
  """The trainer's Job with the classifier in place of the score model (no score function)."""
  d = config.data
  return train.Job(classifier_lib.get_classifier(config), sde_lib.from_config(config), None,
                   (d.image_size, d.image_size, d.num_channels),
                   data_lib.get_data_scaler(config), data_lib.get_data_inverse_scaler(config))


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


def train_classifier(config, workdir: str) -> train.TrainState:
  """Trains ``config.classifier`` on noisy data of the config's SDE; resumes if it can.

  Reads ``config.classifier`` (the network, ``ema_rate``, ``training``: batch_size, n_iters,
  n_jitted_steps, log_freq, eval_freq, snapshot_freq, snapshot_freq_for_preemption, keep_last,
  eps; ``optim``: as ``config.optim``), ``config.data``, ``config.training.sde`` and the SDE's
  noise fields of ``config.model``.

  Returns:
    The state at the last step trained (after a preemption: the step saved).
  """
  view = _view(config)
  tc = view.training
  parallel.initialize()
  mesh = parallel.make_mesh(config.parallel.fsdp)
  per_process = parallel.check_batch_size(tc.batch_size, mesh)
  last = train.final_step(view)
  job = _job(config)
  optimizer = train.make_optimizer(view)
  directory = os.path.join(workdir, SUBDIR)
  manager = checkpoints.checkpoint_manager(directory, keep_last=tc.keep_last,
                                           keep_every=tc.snapshot_freq,
                                           item_names=checkpoints.TRAIN_ITEMS, writer=True)
  state, shardings, step = train.restore_or_init(manager, job, optimizer, mesh, config.seed)
  loss_fn = classifier_loss_fn(job.sde, job.model, job.scaler, float(tc.eps))
  cpu = mesh.devices.flat[0].platform == 'cpu'
  train_step = train.compile_train_step(
      train.make_train_step(loss_fn, optimizer, float(config.classifier.ema_rate),
                            train.learning_rate_schedule(view), unroll=cpu), shardings, mesh)
  accuracy = make_accuracy_fn(job.sde, job.model, job.scaler, float(tc.eps))
  batches = train.stacked_batches(config, per_process, tc.n_jitted_steps, step, mesh,
                                  keys=('image', 'label'))
  log = train.MetricLog(directory, tc.batch_size, last)
  count = checkpoints.num_params(state.params)
  meta = {'source': 'sde-jax train-classifier', 'model': config.classifier.name,
          'num_params': count, 'sde': config.training.sde,
          'config': json.loads(config.to_json_best_effort())}
  logging.info('Training the classifier %s (%d parameters) on noisy %s from step %d to %d.',
               config.classifier.name, count, config.training.sde, step, last)
  def evaluate(state, step):
    if step % tc.eval_freq == 0 or step == last:
      acc = evaluate_accuracy(config, accuracy, state.params_ema, per_process, mesh, config.seed)
      logging.info('step %d: eval accuracy (EMA) %s', step,
                   ', '.join(f'{k} {v:.3f}' for k, v in acc.items()))
      for k, v in acc.items():
        log.scalar(f'eval/accuracy_{k.replace("=", "")}', v, step)  # t0.25: a legal name
      if step == last and jax.process_index() == 0:
        with open(os.path.join(directory, 'accuracy.json'), 'w') as f:
          json.dump({'step': step, 'accuracy': acc}, f, indent=1)

  return train.run_steps(state, step, last, tc, train_step, batches, manager, log, meta,
                         after_step=evaluate)
