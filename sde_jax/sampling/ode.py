"""Sampling by integrating the probability-flow ODE from T to eps with an adaptive solver."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, odeint, rng
from sde_jax.sampling.compile import compile_sampler
from sde_jax.sampling.pc import check_shape, lookup, prior_sample
from sde_jax.sampling.predictors import reverse_diffusion
from sde_jax.sde import SDE

Array = jax.Array


def _flow(sde: SDE, score_fn, batch: int):
  """The probability-flow vector field ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` on a batch."""
  rsde = sde.reverse(score_fn, probability_flow=True)
  return lambda t, x: rsde.sde(x, jnp.full((batch,), t, x.dtype))[0]


def option_problems(rtol: float, atol: float) -> list[str]:
  """What is wrong with these options of :func:`get_ode_sampler`, one line each (checked
  without building anything: ``sde_jax.jobs.config_check`` calls this too)."""
  return [f'{name}={value} must be positive.'
          for name, value in dict(rtol=rtol, atol=atol).items() if value <= 0]


def get_ode_sampler(sde: SDE, shape: tuple[int, ...], rtol: float = 1e-5, atol: float = 1e-5,
                    eps: float = 1e-3, denoise: bool = False, solver: str = 'rk45',
                    max_steps: int = odeint.MAX_STEPS):
  """Builds a probability-flow ODE sampler: ``x(eps)`` from ``x(T) ~ p_T`` (or a given ``z``).

  The whole batch is one ODE state, so the solver's error norm (RMS over all elements) and its
  step sizes are shared by the batch: a sample depends on the other samples of its batch, within
  the tolerances ``rtol, atol``. The prior draw itself is per example (as in the PC sampler).

  Args:
    sde: the forward SDE.
    shape: ``(B, ...)``, the shape of one batch.
    rtol, atol: tolerances of the adaptive step-size controller.
    eps: the end time of the integration.
    denoise: finish with one reverse-diffusion step of the reverse SDE at ``eps`` without its
      noise, ``x <- x - f_rev(x, eps)`` (one more score evaluation).
    solver: a name in :data:`sde_jax.odeint.SOLVERS`.
    max_steps: the solver's bound on step attempts; a solve that reaches it raises a
      RuntimeError on the host.

  Returns:
    ``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``. With ``z`` given,
    ``key`` is not used and ``x`` is the deterministic decoding of ``z``. ``x`` is in model space;
    ``nfe`` (int32 array) counts the score evaluations the solver really spent. A NaN or
    infinity in any example ends the solve at once: the call raises a FloatingPointError naming
    the examples and the time reached (:mod:`sde_jax.nonfinite`).

  Raises:
    ValueError: for an unknown solver, tolerances that are not positive, or a bad shape.
  """
  shape = check_shape(shape)
  lookup(odeint.SOLVERS, solver, 'solver')
  problems = option_problems(rtol=rtol, atol=atol)
  if problems:
    raise ValueError(' '.join(problems))
  denoiser = reverse_diffusion(sde, probability_flow=False)

  def sample(key, score_fn, params, z, first_index):
    score = functools.partial(score_fn, params)
    keys = rng.per_example_keys(key, shape[0], first_index)
    x = prior_sample(sde, keys, shape) if z is None else z
    x, nfe, t, unfinished = odeint.solve(_flow(sde, score, shape[0]), x, sde.T, eps, rtol=rtol,
                                         atol=atol, solver=solver, max_steps=max_steps)
    bad = nonfinite.example_mask(x) & ~unfinished
    report = nonfinite.report(bad, t, unfinished, max_steps)
    x = jnp.where(jnp.any(bad), jnp.nan, x)  # the others stopped at t, not at eps
    if denoise:
      # x_mean of the step does not use the noise, so these keys cost nothing after XLA's DCE.
      _, x = denoiser.update(score, keys, x, jnp.full(shape[:1], eps, x.dtype))
      nfe = nfe + denoiser.evals
    return x, nfe, report

  return compile_sampler(sample, shape, name=f'ode ({solver})')
