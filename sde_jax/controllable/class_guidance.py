"""Class-conditional PC sampling: the score plus the gradient of ``log p_t(y | x_t)`` of a
noise-conditional classifier."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, sampling
from sde_jax.models.classifier import classifier_noise_level
from sde_jax.sampling import pc
from sde_jax.sde import SDE

Array = jax.Array
ParamScoreFn = pc.ParamScoreFn
# logit_fn(classifier_params, x, t) -> logits (B, num_classes)
LogitFn = Callable[[Any, Array, Array], Array]


@functools.lru_cache(maxsize=None)
def _guided_score_fn(score_fn: ParamScoreFn, logit_fn: LogitFn, scale: float) -> ParamScoreFn:
  """``(params, x, t) -> score + scale grad log p_t(labels | x)`` with
  ``params = (score_params, classifier_params, labels)``; cached so that it stays one static
  argument of the jitted sampler."""

  def guided(params, x, t):
    score_params, classifier_params, labels = params

    def log_prob(v):
      logp = jax.nn.log_softmax(logit_fn(classifier_params, v, t), axis=-1)
      return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return score_fn(score_params, x, t) + scale * jax.grad(log_prob)(x)

  return guided


def get_pc_conditional_sampler(sde: SDE, shape: tuple[int, ...], guidance_scale: float = 1.0,
                               **options):
  """Class-conditional PC sampler: the score ``grad log p_t(x) + w grad log p_t(y | x)``.

  ``w = guidance_scale`` (1: the exact conditional score given an exact classifier; ``w > 1``
  sharpens ``p(y | x)`` as a temperature ``1 / w`` would). With ``w = 0`` the samples are those
  of :func:`sde_jax.sampling.get_pc_sampler` with the same options and key.

  Args:
    sde, shape: as for the PC sampler.
    guidance_scale: the weight ``w`` of the classifier gradient.
    **options: the options of :func:`sde_jax.sampling.get_pc_sampler`.

  Returns:
    ``sampler(key, score_fn, params, logit_fn, classifier_params, labels, first_index=0) ->
    (x, nfe)`` with ``logit_fn(classifier_params, x, t) -> logits`` (build it once, e.g. with
    :func:`get_logit_fn`: it is a static argument) and ``labels`` int (B,). ``nfe`` counts
    score evaluations; the classifier is differentiated as many times. A non-finite state
    raises a FloatingPointError as the PC sampler's does.
  """
  base = sampling.get_pc_sampler(sde, shape, **options)
  scale = float(guidance_scale)

  def reporting(key, score_fn, params, logit_fn, classifier_params, labels, first_index=0):
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (shape[0],):
      raise ValueError(f'labels has shape {labels.shape}; expected ({shape[0]},).')
    return base.reporting(key, _guided_score_fn(score_fn, logit_fn, scale),
                          (params, classifier_params, labels), first_index=first_index)

  return nonfinite.Checked(reporting, 'pc (class-conditional)', base.batch)


def get_logit_fn(sde: SDE, classifier) -> LogitFn:
  """``logit_fn(classifier_params, x, t)``: the classifier at the noise level of ``sde`` at t
  (:func:`sde_jax.models.classifier.classifier_noise_level`)."""

  def logit_fn(params, x, t):
    return classifier.apply({'params': params}, x, classifier_noise_level(sde, t), train=False)

  return logit_fn
