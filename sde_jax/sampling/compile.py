"""The public face shared by the samplers that start from the prior: one jitted program per
sampler, ``score_fn`` static, and the optional prior draw ``z`` checked against the shape."""

from __future__ import annotations

from typing import Any, Callable

import jax

from sde_jax.sampling.pc import ParamScoreFn

Array = jax.Array


def compile_sampler(sample: Callable, shape: tuple[int, ...], nfe: int | None = None):
  """``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)`` from
  ``sample(key, score_fn, params, z, first_index)``.

  Args:
    sample: the sampler's body; returns ``(x, nfe)``, or ``x`` alone when ``nfe`` is given.
    shape: the batch shape the sampler was built for; a ``z`` of another shape is a ValueError.
    nfe: a count of network evaluations known before tracing (fixed-step samplers), returned
      beside ``x``; None when ``sample`` counts them itself.

  Returns:
    The ``sampler``, jitted with ``score_fn`` static; it raises a ValueError for a ``z`` whose
    shape is not ``shape``.
  """
  compiled = jax.jit(sample, static_argnums=1)

  def sampler(key: Array, score_fn: ParamScoreFn, params: Any, z: Array | None = None,
              first_index: int | Array = 0):
    if z is not None and tuple(z.shape) != shape:
      raise ValueError(f'z has shape {tuple(z.shape)}; this sampler was built for {shape}.')
    out = compiled(key, score_fn, params, z, first_index)
    return out if nfe is None else (out, nfe)

  return sampler
