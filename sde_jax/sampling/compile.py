"""The public face shared by the samplers that start from the prior: one jitted program per
sampler, ``score_fn`` static, the optional prior draw ``z`` checked against the shape, and the
adaptive solvers' non-finite report raised on the host (:mod:`sde_jax.nonfinite`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from sde_jax import nonfinite
from sde_jax.sampling.pc import ParamScoreFn

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
  """``sampler(key, score_fn, params, z=None, first_index=0) -> (x, nfe)``.

  Attributes:
    reporting: the same call, jitted, returning ``(x, nfe, report)``: for a caller that jits the
      sampler into a larger program (:func:`sde_jax.sampling.sharded.sharded_sampler`), returns
      the :class:`~sde_jax.nonfinite.Report` out of it and raises it on the host.
    name: the method, for the error.
    batch: the batch size.
  """

  reporting: Callable
  name: str
  batch: int

  def __call__(self, key: Array, score_fn: ParamScoreFn, params: Any, z: Array | None = None,
               first_index: int | Array = 0):
    x, nfe, report = self.reporting(key, score_fn, params, z, first_index)
    nonfinite.raise_if_any(report, self.name, self.batch)
    return x, nfe


def compile_sampler(sample: Callable, shape: tuple[int, ...], nfe: int | None = None,
                    name: str = 'sampler') -> Sampler:
  """The :class:`Sampler` of ``sample(key, score_fn, params, z, first_index)``.

  Args:
    sample: the sampler's body; returns ``(x, nfe, report)`` (a
      :class:`~sde_jax.nonfinite.Report`), or ``x`` alone when ``nfe`` is given.
    shape: the batch shape the sampler was built for; a ``z`` of another shape is a ValueError.
    nfe: a count of network evaluations known before tracing (fixed-step samplers), returned
      beside ``x``; None when ``sample`` counts them itself.
    name: the method, for the non-finite error.

  Returns:
    The sampler, jitted with ``score_fn`` static; it raises a ValueError for a ``z`` whose
    shape is not ``shape``, and a FloatingPointError (on the host) for a non-finite report.
  """
  compiled = jax.jit(sample, static_argnums=1)

  def reporting(key: Array, score_fn: ParamScoreFn, params: Any, z: Array | None = None,
                first_index: int | Array = 0):
    if z is not None and tuple(z.shape) != shape:
      raise ValueError(f'z has shape {tuple(z.shape)}; this sampler was built for {shape}.')
    out = compiled(key, score_fn, params, z, first_index)
    return out if nfe is None else (out, nfe, nonfinite.no_report())

  return Sampler(reporting, name, shape[0])
