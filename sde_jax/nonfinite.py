"""Non-finite states of the adaptive solvers: which examples, and when.

An adaptive solver that meets a NaN or an infinity rejects the step and retries with a smaller
one, forever: nothing converges. The solvers therefore end their loop at the first non-finite
state, return NaN for the examples concerned, and return a :class:`Report` beside their result;
the sampler's or likelihood's Python wrapper raises :func:`raise_if_any` on the host.

The error is raised on the host, from values the program returns, and not by a callback inside
the program: in a program sharded over several devices a callback runs on one device only, and
an exception there leaves the others waiting in their next collective (XLA then aborts the
process). The report holds scalars only, which are replicated on every device and process, so
every process of a multi-host job raises the same error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
SHOWN = 8  # the examples a report names


class Report(NamedTuple):
  """The examples of a solve that hold a NaN or an infinity (all scalars).

  Attributes:
    count: how many examples (int32).
    index: the first :data:`SHOWN` of them, in the batch of the call (int32; -1 pads).
    t: the time each had reached when the solve stopped.
  """

  count: Array
  index: tuple[Array, ...]
  t: tuple[Array, ...]


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


def report(bad: Array, t: Array) -> Report:
  """The :class:`Report` of a solve (inside jit).

  Args:
    bad: bool (B,): the examples that hold a NaN or an infinity.
    t: the time the solve stopped at, scalar or (B,).

  Returns:
    The report.
  """
  index = jnp.nonzero(bad, size=SHOWN, fill_value=-1)[0].astype(jnp.int32)
  times = jnp.broadcast_to(jnp.asarray(t), bad.shape)[jnp.maximum(index, 0)]
  return Report(jnp.sum(bad, dtype=jnp.int32), tuple(index), tuple(times))


def no_report() -> Report:
  """The report of a solver that cannot meet a non-finite state unnoticed (fixed steps)."""
  zero = jnp.zeros((), jnp.int32)
  return Report(zero, (zero - 1,) * SHOWN, (jnp.zeros(()),) * SHOWN)


def raise_if_any(rep: Report, solver: str, batch: int | None = None) -> None:
  """Raises on the host if ``rep`` names any example; does nothing under a trace (the caller
  that returns the report out of its program raises instead).

  Args:
    rep: the solve's report.
    solver: the solver's name, for the message.
    batch: the batch size, for the message.

  Raises:
    FloatingPointError: naming the examples (indices within the call) and their time.
  """
  if isinstance(rep.count, jax.core.Tracer):
    return
  count = int(rep.count)
  if not count:
    return
  shown = [(int(i), float(t)) for i, t in zip(rep.index, rep.t) if int(i) >= 0]
  more = f' and {count - len(shown)} more' if count > len(shown) else ''
  of = f' of {batch}' if batch else ''
  raise FloatingPointError(
      f'{solver}: non-finite state (NaN or inf) in example(s) '
      f'{", ".join(f"{i} (t={t:.6g})" for i, t in shown)}{more} of the batch (indices within '
      f'this call{of}; t: the time reached, where the next step met it). The solve stopped '
      'there and those samples are NaN; check their inputs (data, z) and the score network near '
      'that time.')
