"""Adaptive ODE integration inside ``jit`` (diffrax), reporting the real number of evaluations."""

from __future__ import annotations

from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp

SOLVERS = {'dopri5': diffrax.Dopri5, 'tsit5': diffrax.Tsit5}
# Evaluations of the vector field per attempted step. Both solvers are first-same-as-last: of
# their 7 stages the first reuses the last evaluation of the previous accepted step.
_EVALS_PER_STEP = {'dopri5': 6, 'tsit5': 6}


def integrate(vector_field: Callable[[jax.Array, Any], Any], y0: Any, t0: float, t1: float, *,
              rtol: float = 1e-5, atol: float = 1e-5, solver: str = 'dopri5',
              max_steps: int = 16384) -> tuple[Any, jax.Array]:
  """Solves ``dy/dt = vector_field(t, y)`` from ``t0`` to ``t1`` (either direction).

  Args:
    vector_field: ``(t, y) -> dy/dt`` with scalar ``t`` and ``y`` any pytree of arrays.
    y0: the state at ``t0``.
    t0, t1: start and end time; ``t1 < t0`` integrates backwards.
    rtol, atol: tolerances of the PI step-size controller (the error norm is the RMS over all
      elements, as in scipy's ``solve_ivp``).
    solver: ``'dopri5'`` (the RK45 pair of scipy and the original code) or ``'tsit5'``.
    max_steps: a bound on the number of steps; exceeding it is an error.

  Returns:
    ``(y1, nfe)``: the state at ``t1`` and the number of vector-field evaluations spent.
  """
  if solver not in SOLVERS:
    raise ValueError(f'solver={solver!r} is not known; expected one of {sorted(SOLVERS)}.')
  term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
  sol = diffrax.diffeqsolve(
      term, SOLVERS[solver](), t0=t0, t1=t1, dt0=None, y0=y0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      max_steps=max_steps, saveat=diffrax.SaveAt(t1=True))
  y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
  # The initial step-size selection evaluates once at t0; that value is the first stage too.
  nfe = _EVALS_PER_STEP[solver] * sol.stats['num_steps'] + _INIT_EVALS
  return y1, jnp.asarray(nfe, jnp.int32)


_INIT_EVALS = 1
