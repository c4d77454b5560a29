"""Noise levels and time grids shared by the fast samplers.

All three SDEs have Gaussian perturbation kernels ``x_t = m(t) x_0 + s(t) z`` (``m, s`` from
``sde.marginal_prob``). The fast samplers work with

* the half log-SNR ``lambda(t) = log(m(t) / s(t))``, decreasing in t for VE, VP and sub-VP;
* EDM's noise level ``sigma(t) = s(t) / m(t) = exp(-lambda(t))``, the std of the scaled state
  ``x / m(t) = x_0 + sigma(t) z`` (the VE form of any of the three SDEs);
* the data prediction (Tweedie's posterior mean) ``D(x, t) = E[x_0 | x_t = x] =
  (x + s(t)^2 score(x, t)) / m(t)``.

In these terms the probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` of all three
SDEs reads ``d(x / s) / d lambda = exp(lambda) D`` (DPM-Solver++, Lu et al. 2022) or
``d(x / m) / d sigma = (x / m - D) / sigma`` (EDM, Karras et al. 2022), because
``f = (log m)' x`` and ``g^2 = (s^2)' - 2 (log m)' s^2 = -2 s^2 lambda'``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_jax.sde import SDE, ScoreFn, batch_mul

Array = jax.Array

# Time grids of the fixed-step samplers (DPM-Solver's names): uniform in lambda, in t, in sqrt(t).
TIME_SCHEDULES = ('logsnr', 'time_uniform', 'time_quadratic')
# Bisection steps of the inversion t(lambda); 2^-48 of [eps, T] is below float32 resolution.
_BISECTION_STEPS = 48


def scale_std(sde: SDE, t: Array) -> tuple[Array, Array]:
  """``(m(t), s(t))`` of the perturbation kernel, elementwise for ``t`` of any shape."""
  t = jnp.asarray(t)
  return sde.marginal_prob(jnp.ones_like(t), t)


def log_snr(sde: SDE, t: Array) -> Array:
  """``lambda(t) = log(m(t) / s(t))``, half the log signal-to-noise ratio."""
  m, s = scale_std(sde, t)
  return jnp.log(m) - jnp.log(s)


def time_at_log_snr(sde: SDE, lam: Array, eps: float) -> Array:
  """The ``t`` in ``[eps, T]`` with ``lambda(t) = lam`` (elementwise, by bisection).

  Targets outside ``[lambda(T), lambda(eps)]`` give the nearer end of the interval.

  Args:
    sde: the forward SDE (``lambda`` decreasing in t).
    lam: target half log-SNRs, any shape, a float dtype.
    eps: the lower end of the search interval ``[eps, T]``.

  Returns:
    Times of the shape and dtype of ``lam``, after 48 bisection steps.
  """
  lam = jnp.asarray(lam)
  lo = jnp.full(lam.shape, eps, lam.dtype)
  hi = jnp.full(lam.shape, sde.T, lam.dtype)

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = log_snr(sde, mid) > lam  # lambda decreases in t: the root lies later than mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lo, hi))
  return 0.5 * (lo + hi)


def time_grid(sde: SDE, schedule: str, n: int, eps: float) -> Array:
  """``n + 1`` times from ``T`` down to ``eps`` (both exact), spaced by ``schedule``.

  ``'logsnr'``: uniform in ``lambda(t)`` (for VE uniform in t, since log sigma is linear in t);
  ``'time_uniform'``: uniform in t; ``'time_quadratic'``: uniform in ``sqrt(t)``.

  Args:
    sde: the forward SDE; gives ``T`` and, for ``'logsnr'``, ``lambda(t)``.
    schedule: one of :data:`TIME_SCHEDULES`.
    n: the number of steps.
    eps: the last time.

  Returns:
    The decreasing times, shape (n + 1,), float32.

  Raises:
    ValueError: for an unknown ``schedule``.
  """
  frac = jnp.linspace(0.0, 1.0, n + 1)
  if schedule == 'logsnr':
    ends = log_snr(sde, jnp.array([sde.T, eps]))
    ts = time_at_log_snr(sde, ends[0] + frac * (ends[1] - ends[0]), eps)
  elif schedule == 'time_uniform':
    ts = sde.T + frac * (eps - sde.T)
  elif schedule == 'time_quadratic':
    ts = (sde.T**0.5 + frac * (eps**0.5 - sde.T**0.5))**2
  else:
    raise ValueError(f'schedule={schedule!r} is not known; expected one of {TIME_SCHEDULES}.')
  return ts.at[0].set(sde.T).at[-1].set(eps)


def karras_sigmas(sigma_max: Array, sigma_min: Array, n: int, rho: float) -> Array:
  """EDM's ``n + 1`` noise levels ``(sigma_max^(1/rho) + i / n (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho``, ``i = 0..n``: from sigma_max down to sigma_min.

  Args:
    sigma_max: the first (largest) level, EDM's ``sigma(T)``; a scalar.
    sigma_min: the last (smallest) level, ``sigma(eps)``; a scalar.
    n: the number of steps.
    rho: the grid's exponent (EDM: 7, denser near ``sigma_min``); 1 gives a uniform grid.

  Returns:
    The levels, shape (n + 1,).
  """
  frac = jnp.linspace(0.0, 1.0, n + 1)
  inv = 1.0 / rho
  return (sigma_max**inv + frac * (sigma_min**inv - sigma_max**inv))**rho


def data_prediction(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
  """Tweedie's ``D(x, t) = (x + s(t)^2 score(x, t)) / m(t)`` for ``t`` of shape (B,).

  Args:
    sde: the forward SDE; gives ``m(t)`` and ``s(t)``.
    score_fn: ``(x, t) -> score`` with the params bound, of the shape of ``x``.
    x: the noisy state ``x_t`` in model space, shape (B, ...).
    t: the times, shape (B,).

  Returns:
    The posterior mean ``E[x_0 | x_t = x]`` in model space, shape of ``x``; one score
    evaluation.
  """
  m, s = scale_std(sde, t)
  return batch_mul(1.0 / m, x + batch_mul(s**2, score_fn(x, t)))
