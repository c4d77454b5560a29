"""DPM-Solver++ (Lu et al. 2022): multistep exponential integrators of the probability-flow ODE.

With ``lambda = log(m / s)`` and the data prediction ``D`` (:mod:`sde_jax.sampling.schedules`),
the probability-flow ODE of VE, VP and sub-VP is solved exactly by the variation-of-constants
formula

  ``x_t = (s_t / s_u) x_u + s_t int_{lambda_u}^{lambda_t} exp(lambda) D(lambda) d lambda``.

Expanding ``D`` in a Taylor series about ``lambda_u`` (``h = lambda_t - lambda_u``) gives

  ``x_t = (s_t / s_u) x_u + m_t [phi_1(h) D + phi_2(h) D' + phi_3(h) D'']``,

  ``phi_1 = 1 - exp(-h)``, ``phi_2 = h - phi_1``, ``phi_3 = h^2 / 2 - phi_2``,

with derivatives in lambda. The k-step method (DPM-Solver++(kM)) takes ``D'`` and ``D''`` from the
polynomial through the last k data predictions (Newton's divided differences on the non-uniform
lambda grid): one score evaluation per step, local error ``O(h^(k+1))``, global order k. Order 1
is DDIM. For VE (``m = 1``, ``s = sigma``) the same formula is the exponential integrator in
``lambda = -log sigma``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, rng
from sde_jax.sampling import schedules
from sde_jax.sampling.compile import compile_sampler
from sde_jax.sampling.pc import check_shape, prior_sample
from sde_jax.sde import SDE

Array = jax.Array

# As DPM-Solver++ in diffusers: with fewer steps than this the last steps drop to lower orders;
# with few, long steps the extrapolated derivatives of D are least reliable near eps.
LOWER_ORDER_FINAL_BELOW = 15


def phi_functions(h: Array) -> tuple[Array, Array, Array]:
  """``phi_1 = 1 - exp(-h)``, ``phi_2 = h - phi_1``, ``phi_3 = h^2 / 2 - phi_2``.

  For small h the last two lose relative accuracy to cancellation, but their absolute error
  stays at the round-off of h itself (``~1e-7 h`` in float32), which is what the update needs.
  """
  phi1 = -jnp.expm1(-h)
  phi2 = h - phi1
  return phi1, phi2, 0.5 * h**2 - phi2


def step_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
  """Order of each step: ``min(order, i + 1)`` (the history grows), and with
  ``lower_order_final`` and fewer than 15 steps at most ``steps - i`` (the last step is first
  order).

  Args:
    steps: the number of steps.
    order: the method's order, 1 to 3.
    lower_order_final: lower the order of the last steps when ``steps < 15``.

  Returns:
    The order of each step, a list of ``steps`` ints.
  """
  orders = [min(order, i + 1) for i in range(steps)]
  if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
    orders = [min(k, steps - i) for i, k in enumerate(orders)]
  return orders


def multistep_update(x, d0, d1, d2, lam, m_next, s_ratio, order):
  """One step of DPM-Solver++(kM), ``k = order`` (a traced int in 1..3):

  ``x_next = (s_next / s_0) x + m_next [phi_1 D + phi_2 D' + phi_3 D'']`` with
  ``h = lambda_next - lambda_0``, ``D = d0`` and, from the divided differences
  ``delta_1 = (d0 - d1) / h_1``, ``delta_2 = (d1 - d2) / h_2``, ``q = (delta_1 - delta_2) /
  (h_1 + h_2)`` (``h_1, h_2`` the previous two steps): ``D' = delta_1 + h_1 q`` and
  ``D'' = 2 q`` for k = 3, ``D' = delta_1`` and ``D'' = 0`` for k = 2, both 0 for k = 1.

  Args:
    x: the state at ``lambda_0``.
    d0, d1, d2: data predictions at ``lambda_0, lambda_{-1}, lambda_{-2}`` (the current and
      two previous ones; those the order does not use may hold anything finite).
    lam: ``(lambda_{-2}, lambda_{-1}, lambda_0, lambda_next)``, a length-4 array; entries the
      order does not use are ignored.
    m_next: ``m`` at the target time.
    s_ratio: ``s_next / s_0``.
    order: ``k``, 1 to 3, a Python or traced int.

  Returns:
    ``x_next``, the state at ``lambda_next``, shape of ``x``.
  """
  h, h1, h2 = lam[3] - lam[2], lam[2] - lam[1], lam[1] - lam[0]
  safe = lambda a: jnp.where(a > 0, a, 1.0)
  delta1 = (d0 - d1) / safe(h1)
  delta2 = (d1 - d2) / safe(h2)
  curvature = (delta1 - delta2) / safe(h1 + h2)  # D'' / 2
  first = jnp.where(order >= 2, delta1 + jnp.where(order >= 3, h1 * curvature, 0.0), 0.0)
  second = jnp.where(order >= 3, 2.0 * curvature, 0.0)
  phi1, phi2, phi3 = phi_functions(h)
  return s_ratio * x + m_next * (phi1 * d0 + phi2 * first + phi3 * second)


def option_problems(nfe: int, order: int, schedule: str, denoise: bool) -> list[str]:
  """What is wrong with these options of :func:`get_dpm_solver_sampler`, one line each
  (checked without building anything: ``sde_jax.jobs.config_check`` calls this too)."""
  problems = []
  if order not in (1, 2, 3):
    problems.append(f"method='dpm_solver++' needs order 1, 2 or 3, got {order!r}.")
  if schedule not in schedules.TIME_SCHEDULES:
    problems.append(f'schedule={schedule!r} is not known; expected one of '
                    f'{schedules.TIME_SCHEDULES}.')
  if nfe - int(denoise) < 1:
    problems.append(f'nfe={nfe} leaves no step (denoise={denoise} takes one evaluation).')
  return problems


def get_dpm_solver_sampler(sde: SDE, shape: tuple[int, ...], nfe: int = 20, order: int = 2,
                           schedule: str = 'logsnr', lower_order_final: bool = True,
                           denoise: bool = False, eps: float = 1e-3):
  """Builds a DPM-Solver++(2M) / (3M) sampler of the probability-flow ODE, T to eps.

  Args:
    sde: the forward SDE (VE, VP or sub-VP).
    shape: ``(B, ...)``, the shape of one batch.
    nfe: the budget of score evaluations, all of which are spent: ``nfe - denoise`` steps of
      one evaluation each, plus the final denoising evaluation.
    order: 1 (DDIM), 2 (2M) or 3 (3M).
    schedule: the time grid, one of :data:`schedules.TIME_SCHEDULES` (uniform in log-SNR, in t,
      in sqrt(t)).
    lower_order_final: with fewer than 15 steps, lower the order of the last steps (the last
      step is first order), as DPM-Solver++ does for few-step sampling.
    denoise: return ``D(x(eps), eps) = E[x_0 | x_eps]`` (Tweedie) instead of ``x(eps)``; one
      of the ``nfe`` evaluations.
    eps: the end time.

  Returns:
    ``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``. The prior draw is
    per example (as in the PC sampler) and is the only randomness; with ``z`` given, ``key`` is
    unused. ``nfe`` is a Python int equal to the budget. A non-finite state raises a
    FloatingPointError naming the examples and the time of the step that met it
    (:mod:`sde_jax.nonfinite`).

  Raises:
    ValueError: for an order outside 1..3, an unknown schedule, a budget below ``1 + denoise``,
      or a bad shape.
  """
  shape = check_shape(shape)
  problems = option_problems(nfe=nfe, order=order, schedule=schedule, denoise=denoise)
  if problems:
    raise ValueError(' '.join(problems))
  steps = nfe - int(denoise)
  orders = jnp.array(step_orders(steps, order, lower_order_final))

  def sample(key, score_fn, params, z, first_index):
    score = functools.partial(score_fn, params)
    predict = lambda x, t: schedules.data_prediction(sde, score, x, jnp.full(shape[:1], t))
    if z is None:
      z = prior_sample(sde, rng.per_example_keys(key, shape[0], first_index), shape)
    x = z
    ts = schedules.time_grid(sde, schedule, steps, eps).astype(x.dtype)
    m, s = schedules.scale_std(sde, ts)
    lam = jnp.log(m) - jnp.log(s)
    lam = jnp.concatenate([jnp.full((2,), lam[0]), lam])  # two dummies before the first step

    def step(carry, i):
      x, d1, d2 = carry
      d0 = predict(x, ts[i])
      x = multistep_update(x, d0, d1, d2, jax.lax.dynamic_slice(lam, (i,), (4,)), m[i + 1],
                           s[i + 1] / s[i], orders[i])
      return (x, d0, d1), None

    (x, _, _), _, seen = nonfinite.scan(step, (x, jnp.zeros_like(x), jnp.zeros_like(x)),
                                        jnp.arange(steps), lambda i: ts[i])
    x = predict(x, ts[-1]) if denoise else x
    return x, nonfinite.watch_report(seen, x, ts[-1])

  return compile_sampler(sample, shape, nfe, name='dpm_solver++')
