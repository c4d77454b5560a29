"""Non-finite states of the samplers and solvers: which examples, and when.

Every sampler returns a :class:`Report` beside its result, and its Python wrapper
(:class:`Checked`) raises :func:`raise_if_any` on the host. An adaptive solver that meets a NaN
or an infinity rejects the step and retries with a smaller one, forever: those solvers end their
loop at the first non-finite state and report the time reached. The fixed-step samplers run
their steps through :func:`scan`, which keeps, per example, whether its state went non-finite
and the time of the step that first made it so (one reduction of the state per step, next to a
score evaluation), and report with :func:`watch_report`.

The error is raised on the host, from values the program returns, and not by a callback inside
the program: in a program sharded over several devices a callback runs on one device only, and
an exception there leaves the others waiting in their next collective (XLA then aborts the
process). The report holds the per-example mask and times (a few bytes per example) and
scalars; the host picks the examples to name. Where the mask comes out split over the devices of
several processes, every process gathers it (the same collective on each, as every process
checks the same report), so every process of a multi-host job raises the same error. (Picking
the examples inside the program, with ``jnp.nonzero``, cost a quarter of a small sampler's
compile time.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import parallel

Array = jax.Array
SHOWN = 8  # the examples a report names


class Report(NamedTuple):
  """The examples of a solve that hold a NaN or an infinity, and whether an adaptive solver ran
  out of steps.

  Attributes:
    bad: bool (B,): the examples that hold a NaN or an infinity.
    t: float32 (B,): for each, the time of the step that met the non-finite value (an adaptive
      solver's time reached, where it stopped); meaningless where ``bad`` is False.
    unfinished: bool scalar: an adaptive solver spent its ``max_steps`` attempts without
      reaching the end time (its result is NaN).
    t_reached: the time it had reached then (scalar).
    max_steps: its bound on attempts (int32 scalar; 0 for a solver without one).
  """

  bad: Array
  t: Array
  unfinished: Array
  t_reached: Array
  max_steps: Array


def example_mask(tree) -> Array:
  """``bad[i]``: whether example i holds a NaN or an infinity in any leaf of ``tree``.

  Args:
    tree: a pytree of arrays that share their leading (batch) axis.

  Returns:
    A bool array of shape (B,).
  """
  leaves = jax.tree_util.tree_leaves(tree)
  per_leaf = [~jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=-1) for a in leaves]
  return jnp.any(jnp.stack(per_leaf), axis=0)


def report(bad: Array, t: Array, unfinished: Array | bool = False, max_steps: int = 0) -> Report:
  """The :class:`Report` of a solve (inside jit).

  Args:
    bad: bool (B,): the examples that hold a NaN or an infinity.
    t: the time of each, scalar or (B,) (see :class:`Report`).
    unfinished: whether an adaptive solver ran out of attempts before the end time (then
      ``t``'s largest value, or its value, is the time reached).
    max_steps: the solver's bound on attempts, for the message.

  Returns:
    The report.
  """
  times = jnp.broadcast_to(jnp.asarray(t, jnp.float32), bad.shape)
  return Report(bad, times, jnp.asarray(unfinished, bool), jnp.max(times),
                jnp.asarray(max_steps, jnp.int32))


class Watch(NamedTuple):
  """Per example (shape (B,)): whether its state has held a NaN or an infinity, and the time of
  the step that first made it so (0 where none did)."""

  bad: Array
  t: Array


def watch(batch: int) -> Watch:
  """The :class:`Watch` of ``batch`` examples before any step."""
  return Watch(jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32))


def record(seen: Watch, state, t) -> Watch:
  """``seen`` updated with the state after the step at time ``t`` (scalar or (B,)).

  Args:
    seen: the watch so far.
    state: a pytree of arrays with the batch as their leading axis (the step's output).
    t: the time the step started from.

  Returns:
    The watch, its first time kept for the examples already seen non-finite.
  """
  now = example_mask(state)
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), now.shape)
  return Watch(seen.bad | now, jnp.where(now & ~seen.bad, t, seen.t))


def scan(step: Callable, init, xs: Array, time: Callable[[Array], Array],
         seen: Watch | None = None):
  """``jax.lax.scan(step, init, xs)`` that also watches the carry (:func:`record`).

  Args:
    step: ``(carry, x) -> (carry, y)``; the carry's leaves have the batch as leading axis.
    init: the first carry.
    xs: the scanned values (e.g. ``arange(N)``, the step numbers).
    time: ``x -> the time step x starts from``.
    seen: the watch of earlier steps (None: a fresh one).

  Returns:
    ``(carry, ys, watch)``.
  """
  if seen is None:
    seen = watch(jax.tree_util.tree_leaves(init)[0].shape[0])

  def body(state, x):
    carry, seen = state
    carry, y = step(carry, x)
    return (carry, record(seen, carry, time(x))), y

  (carry, seen), ys = jax.lax.scan(body, (init, seen), xs)
  return carry, ys, seen


def watch_report(seen: Watch, out, t_end) -> Report:
  """The :class:`Report` of a fixed-step sampler: the examples whose state went non-finite at
  a step (with that step's time), and those whose output ``out`` is (time ``t_end``, the last
  operation's: e.g. a denoising after the steps)."""
  bad = seen.bad | example_mask(out)
  return report(bad, jnp.where(seen.bad, seen.t, jnp.asarray(t_end, jnp.float32)))


def raise_if_any(rep: Report, solver: str, batch: int | None = None) -> None:
  """Raises on the host if ``rep`` names any example; does nothing under a trace (the caller
  that returns the report out of its program raises instead).

  Args:
    rep: the solve's report.
    solver: the solver's name, for the message.
    batch: the batch size, for the message.

  Raises:
    RuntimeError: if an adaptive solver ran out of attempts (``rep.unfinished``).
    FloatingPointError: naming the examples (indices within the call) and their time.
  """
  if isinstance(rep.bad, jax.core.Tracer):
    return
  if bool(rep.unfinished):
    raise RuntimeError(
        f'{solver}: the adaptive solver spent its max_steps={int(rep.max_steps)} attempts and '
        f'stopped at t={float(rep.t_reached):.6g}, before the end time; loosen its tolerances '
        '(rtol, atol) or raise max_steps. No result of this call is returned.')
  bad, times = _on_host(rep.bad), _on_host(rep.t)
  (index,) = np.nonzero(bad)
  if not index.size:
    return
  shown = [(int(i), float(times[i])) for i in index[:SHOWN]]
  more = f' and {index.size - len(shown)} more' if index.size > len(shown) else ''
  of = f' of {batch}' if batch else ''
  raise FloatingPointError(
      f'{solver}: non-finite state (NaN or inf) in example(s) '
      f'{", ".join(f"{i} (t={t:.6g})" for i, t in shown)}{more} of the batch (indices within '
      f'this call{of}; t: the time of the step that met it). No result of this call is '
      'returned; check those examples\' inputs (data, z) and the score network near that time.')


def _on_host(x) -> np.ndarray:
  """The whole of ``x`` as a numpy array, gathered from every process where it is split over
  devices of several (every process calls this for the same report, so the collective
  matches)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return parallel.gather(x)
  return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class Checked:
  """A sampler that raises its report on the host: ``checked(*args, **kwargs) -> (x, nfe)``.

  Attributes:
    reporting: the same call returning ``(x, nfe, report)``, for a caller that jits the sampler
      into a larger program (:func:`sde_jax.sampling.sharded.sharded_sampler`): it returns the
      report out of that program and raises it on the host with :func:`raise_if_any`.
    name: the sampler, for the error.
    batch: the batch size, for the error.
  """

  reporting: Callable
  name: str
  batch: int

  def __call__(self, *args, **kwargs) -> tuple[Array, Any]:
    x, nfe, rep = self.reporting(*args, **kwargs)
    raise_if_any(rep, self.name, self.batch)
    return x, nfe


def fixed_steps(run: Callable, nfe: int, name: str, batch: int) -> Checked:
  """The :class:`Checked` sampler of ``run(*args, **kwargs) -> (x, report)`` (jitted), whose
  evaluation count ``nfe`` is known before it runs."""

  def reporting(*args, **kwargs):
    x, rep = run(*args, **kwargs)
    return x, nfe, rep

  return Checked(reporting, name, batch)


def check_rows(x, what: str, hint: str = '') -> None:
  """Raises if a row of the host array ``x`` (along its first axis) holds a NaN or an infinity:
  the gate in front of images and metrics.

  Args:
    x: a numpy array (or one numpy converts).
    what: the rows, plural, for the message (``'samples'``).
    hint: a sentence after the message.

  Raises:
    FloatingPointError: naming how many rows and the first :data:`SHOWN` of them.
  """
  x = np.asarray(x)
  which = np.flatnonzero(~np.isfinite(x).all(axis=tuple(range(1, x.ndim))))
  if which.size:
    shown = ', '.join(str(i) for i in which[:SHOWN]) + (' ...' if which.size > SHOWN else '')
    raise FloatingPointError(f'{which.size} of {len(x)} {what} hold NaN or inf values (indices '
                             f'{shown}).{" " + hint if hint else ""}')
