"""Predict-Project sampling (Ghimire et al., "Geometry of Score Based Generative Models", 2023,
Alg. 1): Euler-Maruyama on the reverse SDE with a learned projection step before each noise draw.

On the grid ``t_i = linspace(T, eps, N)`` with ``dt = T / N`` (the PC sampler's), one step is

  ``x_pred = x + (g(t_i)^2 s(x, t_i) - f(x, t_i)) dt``                 (predict: the EM drift)
  ``x_proj = x_pred + step_size dt sqrt(g(t_i)^2 / 2) T(x_pred, t_i)``  (project)
  ``x      = x_proj + g(t_i) sqrt(dt) z``                               (diffuse)

and ``x_proj`` of the last step is the sample when denoising. ``T`` is the projection network of
:mod:`sde_jax.projection`, evaluated at ``t_i`` (never outside ``[eps, T]``). Randomness is the
PC sampler's (:mod:`sde_jax.sampling.pc`): example i's prior from ``fold_in(k_i, PRIOR)``, its
noise of step n from ``fold_in(fold_in(k_i, PREDICTOR), n)``, so with ``T = 0`` and the same key
the samples are exactly those of ``get_pc_sampler(predictor='euler_maruyama',
corrector='none')``. See docs/predict_project.md.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, rng
from sde_jax.sampling.pc import ParamScoreFn, check_shape, prior_sample
from sde_jax.sde import SDE, batch_mul

Array = jax.Array
# projection_fn(projection_params, x, t) -> T(x, t), shaped like x.
ProjectionFn = Callable[[Any, Array, Array], Array]


def option_problems(n_steps: int | None, step_size: float) -> list[str]:
  """What is wrong with these options of :func:`get_predict_project_sampler`, one line each
  (checked without building anything: ``sde_jax.jobs.config_check`` calls this too)."""
  problems = []
  if n_steps is not None and not (isinstance(n_steps, int) and n_steps >= 1):
    problems.append(f'n_steps={n_steps!r} must be an integer >= 1 (or None: the SDE\'s N).')
  if not (math.isfinite(step_size) and step_size >= 0):
    problems.append(f'step_size={step_size!r} must be finite and >= 0 (0: Euler-Maruyama).')
  return problems


def predict(sde: SDE, score_fn, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
  """The predict step ``x_pred = x + (g(t)^2 s(x, t) - f(x, t)) dt`` and ``g(t)``.

  Computed as the Euler-Maruyama predictor computes it, so that a zero projection gives its
  values bit for bit; the projection's loss (:mod:`sde_jax.projection`) calls this too.

  Args:
    sde: the forward SDE.
    score_fn: ``(x, t) -> score``, params bound.
    x: the state, (B, ...).
    t: its time, (B,).
    dt: the step, a float or per example (B,) (the trainer mixes step counts).

  Returns:
    ``(x_pred, g(t))``.
  """
  drift, diffusion = sde.reverse(score_fn).sde(x, t)
  return x + batch_mul(-jnp.asarray(dt), drift), diffusion  # reverse drift over -dt


def projection_step(sde: SDE, score_fn, projection_fn, dt: float, step_size: float):
  """One predict-project step without its noise: ``(x, t) -> (x_proj, g(t))``, with
  ``x_proj = x_pred + step_size dt sqrt(g^2 / 2) T(x_pred, t)`` (:func:`predict` gives
  ``x_pred``), ``score_fn(x, t)`` and ``projection_fn(x, t)`` bound."""

  def step(x, t):
    x_pred, diffusion = predict(sde, score_fn, x, t, dt)
    gain = step_size * dt * jnp.sqrt(diffusion**2 / 2)
    return x_pred + batch_mul(gain, projection_fn(x_pred, t)), diffusion

  return step


def get_predict_project_sampler(sde: SDE, shape: tuple[int, ...], projection_fn: ProjectionFn,
                                n_steps: int | None = None, step_size: float = 1.0,
                                eps: float = 1e-3, denoise: bool = True):
  """Builds a Predict-Project sampler (this module's docstring has the step).

  Args:
    sde: the forward SDE (VE, VP or sub-VP; for VE ``m = 1`` and ``beta = g^2 / 2`` still).
    shape: ``(B, ...)``, the shape of one batch of samples.
    projection_fn: ``projection_fn(projection_params, x, t) -> T(x, t)``; jitted as a static
      part of the program, its params are an argument.
    n_steps: N, the steps of the grid; None: ``sde.N``.
    step_size: the projection's weight; 0 is Euler-Maruyama.
    eps: the last time of the grid.
    denoise: return ``x_proj`` of the last step (no noise added after it).

  Returns:
    ``sampler(key, score_fn, params, projection_params, first_index=0) -> (x, nfe)``: ``x`` in
    model space, ``nfe = 2 N`` (one score and one projection evaluation per step), a Python int.
    A non-finite state raises a FloatingPointError naming the examples and the time of the step
    that met it (:mod:`sde_jax.nonfinite`); ``sampler.reporting`` returns ``(x, nfe, report)``.

  Raises:
    ValueError: for a bad shape, ``n_steps`` or ``step_size``.
  """
  shape = check_shape(shape)
  problems = option_problems(n_steps, step_size)
  if problems:
    raise ValueError(' '.join(problems))
  n = sde.N if n_steps is None else n_steps
  dt = sde.T / n

  def sample(key, score_fn, params, projection_params, first_index):
    step = projection_step(sde, functools.partial(score_fn, params),
                           functools.partial(projection_fn, projection_params), dt, step_size)
    keys = rng.per_example_keys(key, shape[0], first_index)
    noise_keys = rng.fold_in_all(keys, rng.PREDICTOR)
    times = jnp.linspace(sde.T, eps, n)

    def body(carry, i):
      x, _ = carry
      x_proj, diffusion = step(x, jnp.full(shape[:1], times[i]))
      noise = rng.normal(rng.fold_in_all(noise_keys, i), x.shape, x.dtype)
      return (x_proj + batch_mul(diffusion * jnp.sqrt(dt), noise), x_proj), None

    x = prior_sample(sde, keys, shape)
    (x, x_proj), _, seen = nonfinite.scan(body, (x, x), jnp.arange(n), lambda i: times[i])
    out = x_proj if denoise else x
    return out, nonfinite.watch_report(seen, out, eps)

  compiled = jax.jit(sample, static_argnums=1)

  def run(key: Array, score_fn: ParamScoreFn, params: Any, projection_params: Any,
          first_index: int | Array = 0):
    return compiled(key, score_fn, params, projection_params, first_index)

  return nonfinite.fixed_steps(run, 2 * n, 'predict_project', shape[0])
