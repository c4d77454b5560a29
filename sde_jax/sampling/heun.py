"""EDM's second-order Heun sampler (Karras et al. 2022, Alg. 1 and 2) for VE, VP and sub-VP.

Any of the three SDEs becomes EDM's form in the scaled state ``y = x / m(t)`` and the noise level
``sigma(t) = s(t) / m(t)`` (:mod:`sde_jax.sampling.schedules`): ``y = x_0 + sigma z``, whose
probability-flow ODE is ``dy / d sigma = (y - D(y; sigma)) / sigma`` with the data prediction
``D``. The sampler takes Heun steps (explicit trapezoidal rule, 2 evaluations, global order 2)
on EDM's grid ``sigma_i = (sigma_max^(1/rho) + i / n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
with ``sigma_max = sigma(T)``, ``sigma_min = sigma(eps)``, evaluating the score at the times
``t_i`` with ``sigma(t_i) = sigma_i``.

Stochastic churn (Alg. 2): before step i, with ``gamma_i = min(churn / n, sqrt(2) - 1)`` where
``s_tmin <= sigma_i <= s_tmax`` and 0 elsewhere, the level is raised to
``sigma_hat = sigma_i (1 + gamma_i)`` by adding noise of std ``s_noise sqrt(sigma_hat^2 -
sigma_i^2)``, and the step starts from ``sigma_hat``. Here ``sigma_hat`` is capped at
``sigma(T)`` so that the score is never evaluated beyond T.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, rng
from sde_jax.sampling import schedules
from sde_jax.sampling.compile import compile_sampler
from sde_jax.sampling.pc import check_shape, prior_sample
from sde_jax.sde import SDE, batch_mul

Array = jax.Array


def heun_step_counts(nfe: int, denoise: bool) -> tuple[int, int]:
  """``(n_euler, n_heun)`` steps spending exactly ``nfe`` evaluations.

  Heun steps cost 2, Euler steps 1, the final denoising 1. An odd remainder is spent on one
  Euler step at the start, where the trajectory is nearly straight; a single first-order step
  adds an ``O(h^2)`` error, so the sampler stays second order.
  """
  budget = nfe - int(denoise)
  return budget % 2, budget // 2


def _denoiser(sde: SDE, score, batch: int):
  """``D(y, t)`` in the scaled state ``y = x / m(t)``, for a scalar time ``t``."""

  def denoise(y, t):
    t = jnp.full((batch,), t)
    m = schedules.scale_std(sde, t)[0]
    return schedules.data_prediction(sde, score, batch_mul(m, y), t)

  return denoise


def option_problems(nfe: int, rho: float, churn: float, denoise: bool) -> list[str]:
  """What is wrong with these options of :func:`get_heun_sampler`, one line each (checked
  without building anything: ``sde_jax.jobs.config_check`` calls this too)."""
  problems = []
  if sum(heun_step_counts(nfe, denoise)) < 1:
    problems.append(f'nfe={nfe} leaves no step (denoise={denoise} takes one evaluation).')
  if rho <= 0:
    problems.append(f'rho={rho} must be positive.')
  if churn < 0:
    problems.append(f'churn={churn} must be non-negative.')
  return problems


def get_heun_sampler(sde: SDE, shape: tuple[int, ...], nfe: int = 35, rho: float = 7.0,
                     churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float('inf'),
                     s_noise: float = 1.0, denoise: bool = True, eps: float = 1e-3):
  """Builds EDM's Heun sampler (deterministic, or stochastic with ``churn > 0``).

  Args:
    sde: the forward SDE (VE, VP or sub-VP).
    shape: ``(B, ...)``, the shape of one batch.
    nfe: the budget of score evaluations, all of which are spent: ``n`` Heun steps (2 each),
      one Euler step first if ``nfe - denoise`` is odd, and the final denoising.
      ``nfe = 35`` with ``denoise=True`` is EDM's 18-level sampler (17 Heun steps, then the
      Euler step to sigma = 0, which is exactly the denoising ``D``).
    rho: the exponent of EDM's grid (7: denser near sigma_min).
    churn: ``S_churn``; 0 gives the deterministic sampler.
    s_tmin, s_tmax: the range of ``sigma`` (EDM units) where churn applies.
    s_noise: ``S_noise``, the std factor of the churn noise.
    denoise: return ``D(x(eps), eps) = E[x_0 | x_eps]`` (EDM's last step to sigma = 0).
    eps: the end time.

  Returns:
    ``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``, ``nfe`` a Python
    int equal to the budget. Example i draws its prior from ``fold_in(k_i, 0)`` (as the PC
    sampler) and the churn noise of step n from ``fold_in(fold_in(k_i, 2), n)``; with ``z``
    given the prior is not drawn. A non-finite state raises a FloatingPointError naming the
    examples and the time of the step that met it (:mod:`sde_jax.nonfinite`).

  Raises:
    ValueError: for a budget with no step, ``rho <= 0``, ``churn < 0``, or a bad shape.
  """
  shape = check_shape(shape)
  problems = option_problems(nfe=nfe, rho=rho, churn=churn, denoise=denoise)
  if problems:
    raise ValueError(' '.join(problems))
  n_euler, n_heun = heun_step_counts(nfe, denoise)
  n = n_euler + n_heun
  gamma_max = min(churn / n, 2**0.5 - 1)

  def sample(key, score_fn, params, z, first_index):
    d_fn = _denoiser(sde, functools.partial(score_fn, params), shape[0])
    keys = rng.per_example_keys(key, shape[0], first_index)
    x = prior_sample(sde, keys, shape) if z is None else z
    bounds = schedules.log_snr(sde, jnp.array([sde.T, eps]))
    sigma_max, sigma_min = jnp.exp(-bounds[0]), jnp.exp(-bounds[1])
    sigmas = schedules.karras_sigmas(sigma_max, sigma_min, n, rho)
    ts = schedules.time_at_log_snr(sde, -jnp.log(sigmas), eps).at[0].set(sde.T).at[-1].set(eps)
    noise_keys = rng.fold_in_all(keys, rng.PREDICTOR)

    def churned(y, i):
      """``(y, sigma_hat, t_hat)``: step i's start after the churn noise."""
      if gamma_max == 0:
        return y, sigmas[i], ts[i]
      active = (sigmas[i] >= s_tmin) & (sigmas[i] <= s_tmax)
      # ratio = sigma_hat / sigma_i >= 1; sigmas[0] may exceed sigma_max by round-off.
      ratio = jnp.clip(sigma_max / sigmas[i], 1.0, 1.0 + jnp.where(active, gamma_max, 0.0))
      sigma_hat = ratio * sigmas[i]
      t_hat = schedules.time_at_log_snr(sde, -jnp.log(sigma_hat), eps)
      noise = rng.normal(rng.fold_in_all(noise_keys, i), y.shape, y.dtype)
      std = s_noise * sigmas[i] * jnp.sqrt(ratio**2 - 1.0)  # exactly 0 for ratio 1
      return y + std * noise, sigma_hat, jnp.where(ratio > 1.0, t_hat, ts[i])

    def step(y, i, second_order):
      """Euler or Heun from ``sigma_hat`` (after the churn) to ``sigma_{i+1}``."""
      y, sigma_hat, t_hat = churned(y, i)
      h = sigmas[i + 1] - sigma_hat
      slope = (y - d_fn(y, t_hat)) / sigma_hat
      y_next = y + h * slope
      if second_order:
        slope_next = (y_next - d_fn(y_next, ts[i + 1])) / sigmas[i + 1]
        y_next = y + h * 0.5 * (slope + slope_next)
      return y_next

    y = batch_mul(1.0 / schedules.scale_std(sde, jnp.full(shape[:1], sde.T))[0], x)
    seen = nonfinite.watch(shape[0])
    if n_euler:
      y = step(y, 0, second_order=False)
      seen = nonfinite.record(seen, y, ts[0])
    y, _, seen = nonfinite.scan(lambda y, i: (step(y, i, True), None), y,
                                jnp.arange(n_euler, n), lambda i: ts[i], seen)
    x = d_fn(y, ts[-1]) if denoise else batch_mul(
        schedules.scale_std(sde, jnp.full(shape[:1], eps))[0], y)
    return x, nonfinite.watch_report(seen, x, ts[-1])

  return compile_sampler(sample, shape, nfe, name='heun')
