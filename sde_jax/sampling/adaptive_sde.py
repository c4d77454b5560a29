"""Adaptive-step solver of the reverse SDE (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast").

Each example has its own time ``t`` and step ``h``. One attempt, with ``(F, G)`` the drift and
diffusion of the reverse SDE in forward-time units (``sde.reverse(score).sde``) and one draw
``z ~ N(0, I)`` shared by both stages:

  ``K1 = -h F(x, t) + G(t) sqrt(h) z``,           ``x' = x + K1``   (Euler-Maruyama)
  ``K2 = -h F(x', t - h) + G(t - h) sqrt(h) z``,  ``x'' = x + (K1 + K2) / 2``   (stochastic Heun)

The local error is estimated by extrapolation, ``E = ||(K2 - K1) / 2 / delta||_2 / sqrt(d)``
over the example's d elements, with the mixed tolerance
``delta = max(atol, rtol max(|x'|, |x'_prev|))`` (``x'_prev``: the Euler proposal of the
example's last accepted step). The attempt is accepted if ``E <= 1``, and then the higher-order
``x''`` is kept (local extrapolation). Either way the next step is
``h = min(t - eps, safety h E^(-exponent))``. Finished examples (``t = eps``) take steps of
size 0, which change nothing. A rejected attempt draws new noise, as in the paper.

Low dimensions. ``E`` grows with the example's own noise draw (``|K2 - K1| ~ h^(3/2) |z|``), so
whether an attempt is accepted depends on ``z``: accepted steps carry smaller noise than they
should, and the samples are under-dispersed. Over the thousands of elements of an image the RMS
of z is ~1 whatever the draw and the effect vanishes; in d = 2 it does not shrink with the
tolerance (docs/fast_samplers.md has measurements). The factory warns below 100 dimensions.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import nonfinite, rng
from sde_jax.sampling import schedules
from sde_jax.sampling.compile import compile_sampler
from sde_jax.sampling.pc import check_shape, prior_sample
from sde_jax.sde import SDE, batch_mul

Array = jax.Array
# Below this many dimensions per example the accept/reject decisions visibly select the noise.
MIN_DIM = 100


class _State(NamedTuple):
  x: Array  # (B, ...)
  x_prev: Array  # the Euler proposal of each example's last accepted step
  t: Array  # (B,)
  h: Array  # (B,)
  attempts: Array  # int32 scalar: loop iterations (each evaluates the score twice)
  bad: Array  # (B,): the last attempt's error estimate was NaN or infinite


def _rms(x: Array) -> Array:
  """Root mean square of each example, shape (B,)."""
  return jnp.sqrt(jnp.mean(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))


def attempt_step(rsde, state: _State, z: Array, *, rtol: float, atol: float, safety: float,
                 exponent: float, eps: float) -> _State:
  """One attempted step of every example (see the module docstring).

  Args:
    rsde: the reverse SDE, ``sde.reverse(score)`` (params bound); two evaluations of its
      ``sde(x, t)`` per attempt.
    state: the current ``(x, x_prev, t, h, attempts)``, ``x`` of shape (B, ...) and ``t, h`` of
      shape (B,).
    z: the attempt's standard normal noise, shape of ``x``, shared by both stages.
    rtol: relative tolerance of the error estimate.
    atol: absolute tolerance, in the units of ``x`` (model space).
    safety: the factor of the step-size rule ``h <- safety h E^(-exponent)``.
    exponent: its exponent.
    eps: the end time; steps are cut so that no example goes below it.

  Returns:
    The next state: accepted examples advance to ``t - h`` with the Heun value, rejected ones
    stay; every example gets its next ``h``; ``attempts`` grows by one; ``bad`` marks the
    examples whose error estimate is not finite (a NaN or infinity in the state or a stage).
  """
  x, t, h = state.x, state.t, state.h
  drift, diffusion = rsde.sde(x, t)
  k1 = batch_mul(-h, drift) + batch_mul(diffusion * jnp.sqrt(h), z)
  x_euler = x + k1
  drift2, diffusion2 = rsde.sde(x_euler, t - h)
  k2 = batch_mul(-h, drift2) + batch_mul(diffusion2 * jnp.sqrt(h), z)
  scale = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_euler), jnp.abs(state.x_prev)))
  err = _rms(0.5 * (k2 - k1) / scale)
  accept = err <= 1.0
  t_new = jnp.where(accept, jnp.where(h >= t - eps, eps, t - h), t)
  # err = 0 only for a finished example (h = 0) and leaves its step at 0.
  factor = jnp.where(err > 0, err**-exponent, 1.0)
  mask = accept.reshape(accept.shape + (1,) * (x.ndim - 1))
  keep = lambda new, old: jnp.where(mask, new, old)
  return _State(x=keep(x + 0.5 * (k1 + k2), x), x_prev=keep(x_euler, state.x_prev), t=t_new,
                h=jnp.minimum(t_new - eps, safety * h * factor), attempts=state.attempts + 1,
                bad=~jnp.isfinite(err))


def option_problems(rtol: float, atol: float, h_init: float, safety: float, exponent: float,
                    max_steps: int = 100_000) -> list[str]:
  """What is wrong with these options of :func:`get_adaptive_sde_sampler`, one line each
  (checked without building anything: ``sde_jax.jobs.config_check`` calls this too)."""
  values = dict(rtol=rtol, atol=atol, h_init=h_init, safety=safety, exponent=exponent,
                max_steps=max_steps)
  return [f'{name}={value} must be positive.' for name, value in values.items() if value <= 0]


def get_adaptive_sde_sampler(sde: SDE, shape: tuple[int, ...], rtol: float = 0.05,
                             atol: float = 0.0078, h_init: float = 0.01, safety: float = 0.9,
                             exponent: float = 0.9, max_steps: int = 100_000,
                             denoise: bool = True, eps: float = 1e-3):
  """Builds the "Gotta Go Fast" adaptive sampler of the reverse SDE, T to eps.

  Args:
    sde: the forward SDE.
    shape: ``(B, ...)``, the shape of one batch.
    rtol, atol: relative and absolute tolerances of the error estimate. The paper uses
      ``atol = 0.0078`` (2 / 256, for data in [-1, 1]; 0.0039 for [0, 1]) and ``rtol`` of 0.01
      (best samples) to 0.1 (fastest); 0.05 by default here.
    h_init: the first step of every example.
    safety, exponent: the step-size rule ``h <- safety h E^(-exponent)``.
    max_steps: a bound on the loop iterations; exceeding it is an error (a RuntimeError,
      raised on the host from the program's report; the samples are then NaN). A non-finite error estimate in any example (a NaN or
      infinity in its state or a stage) ends the loop at once: the samples are NaN and the call
      raises a FloatingPointError naming the example(s) and their time (:mod:`sde_jax.nonfinite`).
    denoise: finish with Tweedie's ``D(x(eps), eps) = E[x_0 | x_eps]`` (one evaluation).
    eps: the end time.

  Returns:
    ``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``. ``nfe`` (int32
    array) counts the batched score evaluations: 2 per loop iteration, the loop running until
    the slowest example of the batch reaches eps, plus 1 for ``denoise``. Example i draws its
    prior from ``fold_in(k_i, 0)`` and the noise of its n-th attempt from
    ``fold_in(fold_in(k_i, 2), n)``; its error norm and steps are its own, so a sample does not
    depend on its batch.

  Raises:
    ValueError: for non-positive tolerances or steps, or a bad shape.
  """
  shape = check_shape(shape)
  problems = option_problems(rtol=rtol, atol=atol, h_init=h_init, safety=safety,
                             exponent=exponent, max_steps=max_steps)
  if problems:
    raise ValueError(' '.join(problems))
  controller = dict(rtol=rtol, atol=atol, safety=safety, exponent=exponent, eps=eps)
  dim = int(np.prod(shape[1:]))
  if dim < MIN_DIM:
    warnings.warn(
        f"method='adaptive_sde' accepts or rejects each step on the error norm of the example's "
        f'own {dim} dimensions, which then depends on its noise draw and biases the samples '
        f'(under-dispersed) for d < {MIN_DIM}; put several independent points in one example, '
        f"or use 'pc' or a probability-flow sampler for low-dimensional data.", stacklevel=2)

  def sample(key, score_fn, params, z, first_index):
    score = functools.partial(score_fn, params)
    rsde = sde.reverse(score)
    keys = rng.per_example_keys(key, shape[0], first_index)
    noise_keys = rng.fold_in_all(keys, rng.PREDICTOR)
    x = prior_sample(sde, keys, shape) if z is None else z

    def body(state):
      z = rng.normal(rng.fold_in_all(noise_keys, state.attempts), x.shape, x.dtype)
      return attempt_step(rsde, state, z, **controller)

    def running(state):
      # A non-finite error estimate rejects the step and retries it forever: stop at once.
      return jnp.any(state.t > eps) & (state.attempts < max_steps) & ~jnp.any(state.bad)

    t0 = jnp.full(shape[:1], sde.T, x.dtype)
    h0 = jnp.minimum(jnp.full_like(t0, h_init), sde.T - eps)
    no = jnp.zeros(shape[:1], bool)
    final = jax.lax.while_loop(running, body,
                               _State(x, x, t0, h0, jnp.zeros((), jnp.int32), no))
    unfinished = jnp.any(final.t > eps) & ~jnp.any(final.bad)
    # Unfinished samples become NaN, so that a caller who drops the report cannot miss them.
    x = jnp.where(unfinished | jnp.any(final.bad), jnp.nan, final.x)
    nfe = 2 * final.attempts
    report = nonfinite.report(final.bad, final.t, unfinished, max_steps)
    if denoise:
      x = schedules.data_prediction(sde, score, x, jnp.full(shape[:1], eps, x.dtype))
      nfe = nfe + 1
    return x, nfe, report

  return compile_sampler(sample, shape, name='adaptive_sde')
