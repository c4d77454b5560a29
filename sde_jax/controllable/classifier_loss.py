"""The noise-conditional classifier's loss and accuracy on noisy data of an SDE:
``x_t = m(t) x_0 + s(t) z`` with ``t ~ U[eps, T]``, fed with the noise level
:func:`sde_jax.models.classifier.classifier_noise_level` that class-conditional sampling feeds it
too (``sde-jax train-classifier``, :mod:`sde_jax.jobs.train_classifier`, trains with them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_jax import rng
from sde_jax import sde as sde_lib
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
