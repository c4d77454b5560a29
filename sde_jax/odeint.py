"""Adaptive ODE integration inside ``jit``, reporting the real number of evaluations.

Two families: ``'rk45'``, the Dormand-Prince 5(4) pair with exactly the step-size rules of
``scipy.integrate.solve_ivp(method='RK45')`` (what the original code integrates with, so that
bits/dim and ODE samples reproduce the original's numbers to within float32 rounding, not only
to within the tolerance), and diffrax's ``'dopri5'`` / ``'tsit5'`` with its PI controller.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

MAX_STEPS = 16384  # the solvers' default bound on step attempts


class Solution(NamedTuple):
  """What :func:`solve` returns.

  Attributes:
    y1: the state at ``t1``; NaN in the examples that met a non-finite state.
    nfe: the number of vector-field evaluations spent (int32).
    t: the time reached: ``t1``, or where a non-finite state stopped the solve.
    unfinished: bool: ``max_steps`` attempts did not reach ``t1`` (``y1`` is then NaN).
  """

  y1: Any
  nfe: jax.Array
  t: jax.Array
  unfinished: jax.Array


def integrate(vector_field: Callable[[jax.Array, Any], Any], y0: Any, t0: float, t1: float, *,
              rtol: float = 1e-5, atol: float = 1e-5, solver: str = 'rk45',
              max_steps: int = MAX_STEPS) -> tuple[Any, jax.Array]:
  """``(y1, nfe)`` of :func:`solve`."""
  y1, nfe, _, _ = solve(vector_field, y0, t0, t1, rtol=rtol, atol=atol, solver=solver,
                        max_steps=max_steps)
  return y1, nfe


def solve(vector_field: Callable[[jax.Array, Any], Any], y0: Any, t0: float, t1: float, *,
          rtol: float = 1e-5, atol: float = 1e-5, solver: str = 'rk45',
          max_steps: int = MAX_STEPS) -> Solution:
  """Solves ``dy/dt = vector_field(t, y)`` from ``t0`` to ``t1`` (either direction).

  Args:
    vector_field: ``(t, y) -> dy/dt`` with scalar ``t`` and ``y`` any pytree of arrays.
    y0: the state at ``t0``.
    t0, t1: start and end time; ``t1 < t0`` integrates backwards.
    rtol, atol: tolerances of the PI step-size controller (the error norm is the RMS over all
      elements, as in scipy's ``solve_ivp``).
    solver: ``'rk45'`` (scipy's RK45, as the original code), ``'dopri5'`` (the same pair under
      diffrax's controller, which never shrinks an accepted step: fewer steps, larger error at
      the same tolerances) or ``'tsit5'``.
    max_steps: a bound on the number of steps; a solve that reaches it returns NaN and
      ``unfinished`` (the caller raises on the host: :func:`sde_jax.nonfinite.raise_if_any`).

  A NaN or infinity in the state or in a step's proposal ends the solve at once (an adaptive
  solver would reject the step and retry ever smaller ones until ``max_steps``): the entries of
  ``y1`` that are not finite become NaN and ``t`` is the time reached. The caller reports it
  (:mod:`sde_jax.nonfinite`; examples are indices along the leading axis of ``y0``'s leaves).

  Nothing here raises inside the program (no ``eqx.error_if``, diffrax's ``throw=False``): a
  callback that raises runs on one device of a sharded program and leaves the others waiting in
  their next collective, a hang that XLA ends by aborting the process.

  Returns:
    The :class:`Solution`.

  Raises:
    ValueError: for an unknown ``solver``.
  """
  if solver not in SOLVERS:
    raise ValueError(f'solver={solver!r} is not known; expected one of {sorted(SOLVERS)}.')
  return Solution(*SOLVERS[solver](vector_field, y0, t0, t1, rtol=rtol, atol=atol,
                                   max_steps=max_steps))


def diffrax_solver(solver_cls, evals_per_step: int) -> Callable:
  """``solve(vector_field, y0, t0, t1, *, rtol, atol, max_steps) -> (y1, nfe, t, unfinished)``
  with a
  diffrax solver under its PID step-size controller (ended early by a non-finite state).

  Args:
    solver_cls: a diffrax solver class (``diffrax.Dopri5``, ``diffrax.Tsit5``).
    evals_per_step: its vector-field evaluations per attempted step (6 for the first-same-as-last
      pairs: of their 7 stages the first reuses the last evaluation of the previous step).

  Returns:
    The solve function, with :func:`solve`'s arguments and results.
  """
  def solve(vector_field, y0, t0, t1, *, rtol, atol, max_steps):
    term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
    sol = diffrax.diffeqsolve(
        term, solver_cls(), t0=t0, t1=t1, dt0=None, y0=y0,
        stepsize_controller=StopOnNonFinite(diffrax.PIDController(rtol=rtol, atol=atol)),
        max_steps=max_steps, saveat=diffrax.SaveAt(t1=True, controller_state=True),
        throw=False)
    bad = sol.controller_state[1]
    # Anything but success or the stop of StopOnNonFinite (an event) did not reach t1.
    unfinished = ~((sol.result == diffrax.RESULTS.successful)
                   | (sol.result == diffrax.RESULTS.event_occurred))
    y1 = jax.tree_util.tree_map(lambda a, b: jnp.where(b | unfinished, jnp.nan, a[-1]), sol.ys,
                                bad)
    # The initial step-size selection evaluates once at t0; that value is the first stage too.
    nfe = jnp.asarray(evals_per_step * sol.stats['num_steps'] + _INIT_EVALS, jnp.int32)
    return y1, nfe, sol.ts[-1], unfinished

  return solve


class StopOnNonFinite(diffrax.AbstractAdaptiveStepSizeController):
  """``inner``'s step-size control, ending the solve at the first non-finite proposal.

  diffrax maps a NaN error estimate to infinity and rejects the step, then retries ever smaller
  steps until ``max_steps``. Here the step's result is ``event_occurred`` instead, which ends
  diffrax's loop as an event does, and the state carries which elements were non-finite (in
  the state, else in the proposal), for the caller's error.
  """

  inner: diffrax.PIDController
  rtol: float
  atol: float
  norm: Callable

  def __init__(self, inner: diffrax.PIDController):
    self.inner, self.rtol, self.atol, self.norm = inner, inner.rtol, inner.atol, inner.norm

  def wrap(self, direction):
    return StopOnNonFinite(self.inner.wrap(direction))

  def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
    tnext, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
    return tnext, (state, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, bool), y0))

  def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                      controller_state):
    *out, state, result = self.inner.adapt_step_size(
        t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state[0])
    in_state = jax.tree_util.tree_map(lambda a: ~jnp.isfinite(a), y0)
    in_proposal = jax.tree_util.tree_map(lambda a: ~jnp.isfinite(a), y1_candidate)
    state_bad = _any_leaf(in_state)
    bad = jax.tree_util.tree_map(lambda s, p: jnp.where(state_bad, s, p), in_state, in_proposal)
    stop = _any_leaf(bad)
    result = diffrax.RESULTS.where(stop, diffrax.RESULTS.event_occurred, result)
    return (*out, (state, bad), result)


def _any_leaf(tree) -> jax.Array:
  return jnp.any(jnp.stack([jnp.any(b) for b in jax.tree_util.tree_leaves(tree)]))


_INIT_EVALS = 1


# Dormand-Prince 5(4): nodes, stage coefficients, 5th-order weights, and the error weights
# (5th minus 4th order, including the first-same-as-last stage).
_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1])
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]]
_B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
_E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _EXPONENT = 0.9, 0.2, 10.0, -1 / 5


def _rms(x):
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def _first_evaluations(fun, t0, y0, direction, span, rtol, atol):
  """``(f0, h)``: the vector field at ``(t0, y0)`` and Hairer's starting step, as
  ``scipy.integrate._ivp.common.select_initial_step``. Its two evaluations run as a loop over
  one copy of ``fun`` (the second is at a point the first chooses), for the compile time."""
  scale = atol + jnp.abs(y0) * rtol

  def trial_step(f0):
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    return d1, jnp.minimum(jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1), span)

  def evaluate(i, fs):
    h0 = trial_step(fs[0])[1]
    t, y = jnp.where(i == 0, t0, t0 + h0 * direction), jnp.where(i == 0, y0,
                                                                   y0 + h0 * direction * fs[0])
    return fs.at[i].set(fun(t, y))

  f0, f1 = jax.lax.fori_loop(0, 2, evaluate, jnp.zeros((2, *y0.shape), y0.dtype))
  d1, h0 = trial_step(f0)
  d2 = _rms((f1 - f0) / scale) / h0
  h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(d1, d2)) ** (-_EXPONENT))
  h = jnp.minimum(jnp.minimum(100 * h0, h1), span)
  # A non-finite f1 would make every element of the first proposal NaN; with h0 the proposal is
  # NaN in the examples that are, and the error can name them.
  return f0, jnp.where(jnp.isfinite(h), h, jnp.where(jnp.isfinite(h0), h0, span))


# The seven evaluations of one step as a loop over stages: stage i (1..6) evaluates at
# t + _NODES[i] h and y + h sum_j _STAGES[i, j] k_j, the last one at the 5th-order solution
# (first-same-as-last). One copy of the vector field in the program instead of six: a score
# network's likelihood compiles in a third of the time. Each stage sums its terms in the order
# of the unrolled form (k_0 first); XLA fuses the loop otherwise, which moves results by
# rounding only (the VE reference likelihood of tests/test_reference.py: 2,972 evaluations
# became 2,978, its bits/dim moved by 8e-4, and it stays 5.6e-4 from the original's).
_NODES = np.array([0, *_C[1:], 1])
_STAGES = np.zeros((7, 7))
for _i, _row in enumerate([*_A[1:], list(_B[:6])], start=1):
  _STAGES[_i, :len(_row)] = _row


def _dopri_step(fun, t, y, f, h):
  """One Dormand-Prince step: (y_new, f_new, error estimate); six new evaluations."""
  stages = jnp.asarray(_STAGES, y.dtype)
  nodes = jnp.asarray(_NODES, y.dtype)

  def combination(row, k):
    total = row[0] * k[0]
    for j in range(1, 6):  # k_6 is never an input
      total = total + row[j] * k[j]
    return y + h * total

  def stage(i, k):
    return k.at[i].set(fun(t + nodes[i] * h, combination(stages[i], k)))

  k = jax.lax.fori_loop(1, 7, stage, jnp.zeros((7, *y.shape), y.dtype).at[0].set(f))
  y_new = combination(stages[6], k)
  f_new = k[6]
  err = h * sum(e * k[j] for j, e in enumerate(_E))
  return y_new, f_new, err


class _RK45State(NamedTuple):
  t: jax.Array
  y: jax.Array
  f: jax.Array
  h_abs: jax.Array
  rejected: jax.Array
  attempts: jax.Array
  bad: jax.Array  # per element of y: non-finite in the state, or in the last attempt's proposal


def rk45(vector_field, y0, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
         max_steps: int = MAX_STEPS):
  """``(y1, nfe)`` of :func:`rk45_solve` (``y1`` NaN if ``max_steps`` did not reach ``t1``)."""
  return rk45_solve(vector_field, y0, t0, t1, rtol=rtol, atol=atol, max_steps=max_steps)[:2]


def rk45_solve(vector_field, y0, t0: float, t1: float, *, rtol: float = 1e-5,
               atol: float = 1e-5, max_steps: int = MAX_STEPS):
  """scipy's ``solve_ivp(method='RK45')`` algorithm in a ``lax.while_loop``.

  Step control, per attempt with error ``e = rms(err / (atol + rtol max(|y|, |y_new|)))``:
  accept if ``e < 1`` and scale the step by ``min(10, 0.9 e^(-1/5))`` (at most 1 right after a
  rejection); otherwise retry with ``max(0.2, 0.9 e^(-1/5))`` times the step. The last step is
  cut at ``t1``. Evaluations: 2 to choose the first step, then 6 per attempted step.

  Args:
    vector_field: ``(t, y) -> dy/dt`` with scalar ``t`` and ``y`` a pytree of the structure of
      ``y0``; the state is integrated as one flat vector (``ravel_pytree``, one dtype).
    y0: the state at ``t0``, any pytree of arrays.
    t0, t1: start and end time, Python floats (their order, the direction, is read outside
      jit); ``t1 < t0`` integrates backwards.
    rtol, atol: relative and absolute tolerances; the error norm is the RMS over all elements of
      the flat state, as in scipy.
    max_steps: the most step attempts (accepted or rejected) before giving up.

  Returns:
    ``(y1, nfe, t, unfinished)``: the state at ``t1`` (structure of ``y0``; NaN where it met a
    non-finite state, and everywhere if unfinished), the int32 number of vector-field
    evaluations, ``2 + 6 * attempts``, the time reached (``t1``, or the last accepted time), and
    whether ``max_steps`` attempts ran out before ``t1`` (not for a non-finite state, which the
    caller reports from ``y1`` and ``t``).

  A NaN or infinity in the state or in an attempt's proposal ends the loop at once (a
  rejected non-finite step would otherwise be retried, ever smaller, until ``max_steps``).
  """
  flat0, unravel = ravel_pytree(y0)
  dtype = flat0.dtype
  fun = lambda t, y: ravel_pytree(vector_field(t, unravel(y)))[0]
  direction = 1.0 if t1 >= t0 else -1.0
  t0 = jnp.asarray(t0, dtype)
  t1 = jnp.asarray(t1, dtype)
  f0, h0 = _first_evaluations(fun, t0, flat0, direction, jnp.abs(t1 - t0), rtol, atol)

  def attempt(s: _RK45State) -> _RK45State:
    min_step = 10 * jnp.abs(jnp.nextafter(s.t, s.t + direction) - s.t)
    h_abs = jnp.maximum(s.h_abs, min_step)
    t_new = s.t + direction * h_abs
    t_new = jnp.where(direction * (t_new - t1) > 0, t1, t_new)
    h = t_new - s.t
    y_new, f_new, err = _dopri_step(fun, s.t, s.y, s.f, h)
    e = _rms(err / (atol + jnp.maximum(jnp.abs(s.y), jnp.abs(y_new)) * rtol))
    grow = jnp.where(e == 0, _MAX_FACTOR, jnp.minimum(_MAX_FACTOR, _SAFETY * e ** _EXPONENT))
    grow = jnp.where(s.rejected, jnp.minimum(1.0, grow), grow)
    shrink = jnp.maximum(_MIN_FACTOR, _SAFETY * e ** _EXPONENT)
    ok = e < 1
    return _RK45State(t=jnp.where(ok, t_new, s.t), y=jnp.where(ok, y_new, s.y),
                      f=jnp.where(ok, f_new, s.f), h_abs=jnp.abs(h) * jnp.where(ok, grow, shrink),
                      rejected=~ok, attempts=s.attempts + 1, bad=_non_finite(y_new, f_new))

  def running(s: _RK45State):
    # A non-finite proposal would only be rejected with ever smaller steps until max_steps.
    return (s.t != t1) & (s.attempts < max_steps) & ~jnp.any(s.bad)

  init = _RK45State(t0, flat0, f0, h0.astype(dtype), jnp.array(False), jnp.array(0, jnp.int32),
                    _non_finite(flat0, f0))
  final = jax.lax.while_loop(running, attempt, init)
  unfinished = (final.t != t1) & ~jnp.any(final.bad)
  y1 = jnp.where(final.bad | unfinished, jnp.nan, final.y)
  return unravel(y1), 2 + 6 * final.attempts, final.t, unfinished


def _non_finite(y, f):
  return ~jnp.isfinite(y) | ~jnp.isfinite(f)


# The solvers by name: scipy's RK45 as the original code uses it, and two diffrax pairs.
SOLVERS = {'rk45': rk45_solve, 'dopri5': diffrax_solver(diffrax.Dopri5, 6),
           'tsit5': diffrax_solver(diffrax.Tsit5, 6)}
