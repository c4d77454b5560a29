"""The public face shared by the samplers that start from the prior: one jitted program per
sampler, ``score_fn`` static, the optional prior draw ``z`` checked against the shape, and the
non-finite report raised on the host (:mod:`sde_jax.nonfinite`)."""

from __future__ import annotations

from typing import Any, Callable

import jax

from sde_jax import nonfinite
from sde_jax.sampling.pc import ParamScoreFn

Array = jax.Array
# ``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``; its ``reporting``
# returns ``(x, nfe, report)`` (:class:`sde_jax.nonfinite.Checked`).
Sampler = nonfinite.Checked


def compile_sampler(sample: Callable, shape: tuple[int, ...], nfe: int | None = None,
                    name: str = 'sampler') -> Sampler:
  """The :class:`Sampler` of ``sample(key, score_fn, params, z, first_index)``.

  Args:
    sample: the sampler's body; returns ``(x, nfe, report)`` (a
      :class:`~sde_jax.nonfinite.Report`), or ``(x, report)`` when ``nfe`` is given.
    shape: the batch shape the sampler was built for; a ``z`` of another shape is a ValueError.
    nfe: a count of network evaluations known before tracing (fixed-step samplers), returned
      beside ``x``; None when ``sample`` counts them itself.
    name: the method, for the non-finite error.

  Returns:
    The sampler, jitted with ``score_fn`` static; it raises a ValueError for a ``z`` whose
    shape is not ``shape``, and a FloatingPointError (on the host) for a non-finite report.
  """
  compiled = jax.jit(sample, static_argnums=1)

  def run(key: Array, score_fn: ParamScoreFn, params: Any, z: Array | None = None,
          first_index: int | Array = 0):
    if z is not None and tuple(z.shape) != shape:
      raise ValueError(f'z has shape {tuple(z.shape)}; this sampler was built for {shape}.')
    return compiled(key, score_fn, params, z, first_index)

  if nfe is not None:
    return nonfinite.fixed_steps(run, nfe, name, shape[0])
  return Sampler(run, name, shape[0])
