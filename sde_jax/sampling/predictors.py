"""Predictors of the predictor-corrector sampler: one step of a reverse-time discretisation.

A predictor factory takes ``(sde, probability_flow)`` and returns a :class:`Predictor`: a pure
``update(score_fn, keys, x, t) -> (x, x_mean)`` and the number of score evaluations one update
spends. ``score_fn(x, t)`` has the params already bound, ``keys`` holds one key per example
(:mod:`sde_jax.rng`) and ``t`` has shape (B,). ``x_mean`` is the step without its noise term, the
value a sampler returns when it denoises.

The step goes from ``t`` to ``t - T / N``; the samplers' time grid runs from T down to eps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from sde_jax import rng
from sde_jax.sde import SDE, VESDE, VPSDE, ScoreFn, batch_mul

Array = jax.Array
Update = Callable[[ScoreFn, Array, Array, Array], tuple[Array, Array]]


class SamplerStep(NamedTuple):
  """A predictor or corrector update and its cost.

  Attributes:
    update: ``(score_fn, keys, x, t) -> (x, x_mean)``.
    evals: score evaluations spent by one call of ``update``.
  """

  update: Update
  evals: int


Predictor = SamplerStep


def _noise(keys: Array, x: Array) -> Array:
  return rng.normal(keys, x.shape, x.dtype)


def euler_maruyama(sde: SDE, probability_flow: bool = False) -> Predictor:
  """Euler–Maruyama for the reverse process with ``dt = -T / N``.

  ``x_mean = x + f_rev(x, t) dt``, ``x = x_mean + g_rev(t) sqrt(-dt) z``, where ``f_rev, g_rev``
  are drift and diffusion of ``sde.reverse`` (``g_rev = 0`` for the probability-flow ODE).
  """
  dt = -sde.T / sde.N

  def update(score_fn, keys, x, t):
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x + drift * dt
    return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), _noise(keys, x)), x_mean

  return Predictor(update, evals=1)


def reverse_diffusion(sde: SDE, probability_flow: bool = False) -> Predictor:
  """The forward chain ``x_{i+1} = x_i + f_i + G_i z`` run backwards (Song et al., eq. 46).

  ``x_mean = x - f_rev``, ``x = x_mean + G_rev z`` with ``(f_rev, G_rev) =
  sde.reverse(score_fn).discretize(x, t)``, i.e. ``f_rev = f_i - G_i^2 score``.
  """

  def update(score_fn, keys, x, t):
    f, g = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    return x_mean + batch_mul(g, _noise(keys, x)), x_mean

  return Predictor(update, evals=1)


def _ancestral_ve(sde: VESDE) -> Update:
  """SMLD ancestral step: with ``(s, s') = (sigma_i, sigma_{i-1})``,

  ``x_mean = x + (s^2 - s'^2) score``, ``x = x_mean + sqrt(s'^2 (s^2 - s'^2) / s^2) z``.
  """

  def update(score_fn, keys, x, t):
    sigma, adjacent = sde.adjacent_sigmas(t)
    x_mean = x + batch_mul(sigma**2 - adjacent**2, score_fn(x, t))
    std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    return x_mean + batch_mul(std, _noise(keys, x)), x_mean

  return update


def _ancestral_vp(sde: VPSDE) -> Update:
  """DDPM ancestral step: ``x_mean = (x + beta_i score) / sqrt(1 - beta_i)``,

  ``x = x_mean + sqrt(beta_i) z``.
  """

  def update(score_fn, keys, x, t):
    beta = sde.discrete_betas[sde.timestep(t)]
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score_fn(x, t)))
    return x_mean + batch_mul(jnp.sqrt(beta), _noise(keys, x)), x_mean

  return update


# Ancestral sampling exists only for SDEs that are limits of a known discrete chain.
_ANCESTRAL = {VESDE: _ancestral_ve, VPSDE: _ancestral_vp}


def ancestral_sampling(sde: SDE, probability_flow: bool = False) -> Predictor:
  """Ancestral sampling of the discrete chain behind the SDE (SMLD for VE, DDPM for VP).

  Raises:
    ValueError: for an SDE without such a chain (sub-VP), or with ``probability_flow=True``.
  """
  if type(sde) not in _ANCESTRAL:
    valid = sorted(name for name in PREDICTORS if name != 'ancestral_sampling')
    raise ValueError(
        f"predictor='ancestral_sampling' is defined only for VESDE and VPSDE, not "
        f'{type(sde).__name__}; use one of {valid}.')
  if probability_flow:
    raise ValueError("predictor='ancestral_sampling' has no probability-flow form; use "
                     "'euler_maruyama' or 'reverse_diffusion' with probability_flow=True.")
  return Predictor(_ANCESTRAL[type(sde)](sde), evals=1)


def none(sde: SDE, probability_flow: bool = False) -> Predictor:
  """The identity: ``(x, x)``, no score evaluation (corrector-only sampling)."""
  del sde, probability_flow
  return Predictor(lambda score_fn, keys, x, t: (x, x), evals=0)


PREDICTORS = {
    'euler_maruyama': euler_maruyama,
    'reverse_diffusion': reverse_diffusion,
    'ancestral_sampling': ancestral_sampling,
    'none': none,
}
