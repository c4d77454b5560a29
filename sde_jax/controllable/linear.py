"""PC sampling given linear measurements ``y = mask * P^T x_0`` (inpainting, colorization): the
paper's replacement rule, and with ``method='tmpd'`` the Tweedie-moment guided score."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, rng
from sde_jax.controllable.bases import BASES, Basis, gray_mask
from sde_jax.controllable.tweedie import tweedie_guidance
from sde_jax.sampling import pc
from sde_jax.sde import SDE, batch_mul

Array = jax.Array
ParamScoreFn = pc.ParamScoreFn

METHODS = ('replacement', 'tmpd')


def _marginal_scale_std(sde: SDE, t: Array) -> tuple[Array, Array]:
  """Mean scale ``m(t)`` and std ``s(t)`` of ``p_{0t}``, shape (B,); ``s(0) = 0`` (the data)."""
  scale, std = sde.marginal_prob(jnp.ones_like(t), t)
  return scale, jnp.where(t > 0, std, 0.0)


def _replace_known(basis: Basis, x: Array, y: Array, mask: Array, scale: Array, std: Array,
                   z: Array) -> Array:
  """The replacement rule: ``x`` with its known coordinates set to ``m y + s z`` (in the
  basis)."""
  u = basis.decouple(x)
  known = batch_mul(scale, y) + batch_mul(std, z)
  return basis.couple(u + mask * (known - u))


def get_pc_linear_sampler(sde: SDE, shape: tuple[int, ...], basis: str = 'identity',
                          method: str = 'replacement', predictor: str = 'reverse_diffusion',
                          corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                          probability_flow: bool = False, denoise: bool = True,
                          eps: float = 1e-3, solver_iters: int = 5):
  """Builds a PC sampler of ``p(x_0 | mask * P^T x_0 = mask * P^T data)``.

  From ``x ~ p_T`` with its known coordinates replaced, and for each ``t_n`` of
  ``linspace(T, eps, N)``: corrector at ``t_n``, replace at ``t_n``; predictor from ``t_n``,
  replace at ``t_{n+1}`` (the time the predictor stepped to; 0 after the last step, where the
  known coordinates become ``y`` itself). The returned ``x_mean`` is the last predictor step's
  ``x_mean`` on the unknown coordinates and ``y`` on the known ones.

  Args:
    sde: the forward SDE; ``sde.N`` steps.
    shape: ``(B, ...)``; for ``basis='gray'`` the last axis has 3 channels.
    basis: ``'identity'`` (inpainting) or ``'gray'`` (colorization), see
      :data:`~sde_jax.controllable.bases.BASES`.
    method: ``'replacement'`` (the paper) or ``'tmpd'`` (:mod:`sde_jax.controllable`).
    predictor, corrector, snr, n_steps, probability_flow, denoise, eps: as in
      :func:`sde_jax.sampling.get_pc_sampler`.
    solver_iters: GMRES steps per guided score evaluation (``'tmpd'`` only).

  Returns:
    ``sampler(key, score_fn, params, data, mask, first_index=0) -> (x, nfe)``. ``data`` and
    ``x`` are in model space with ``shape``; ``mask`` (broadcastable to ``shape``) is in the
    basis, 1 where known. ``nfe`` counts network passes: a guided evaluation is a
    linearisation, ``solver_iters`` JVPs and one VJP, counted ``2 + solver_iters``. A
    non-finite state raises a FloatingPointError naming the examples and the time of the step
    that met it (:mod:`sde_jax.nonfinite`); ``sampler.reporting`` returns ``(x, nfe, report)``.
  """
  shape, pred, corr = pc.pc_steps(sde, shape, predictor, corrector, snr, n_steps,
                                  probability_flow)
  space = pc.lookup(BASES, basis, 'basis')
  if method not in METHODS:
    raise ValueError(f'method={method!r} is not known; expected one of {list(METHODS)}.')
  if basis == 'gray' and shape[-1] != 3:
    raise ValueError(f"basis='gray' needs 3 channels (last axis); got shape {shape}.")
  if method == 'tmpd' and solver_iters < 1:
    raise ValueError(f"method='tmpd' needs solver_iters >= 1, got {solver_iters}.")
  cost = 2 + solver_iters if method == 'tmpd' else 1
  nfe = sde.N * (pred.evals + corr.evals) * cost

  def sample(key, score_fn, params, data, mask, first_index):
    score = functools.partial(score_fn, params)
    mask = jnp.broadcast_to(mask.astype(data.dtype), shape)
    y = mask * space.decouple(data)
    if method == 'tmpd':
      score = tweedie_guidance(sde, score, space, y, mask, solver_iters)
    keys = rng.per_example_keys(key, shape[0], first_index)
    streams = {stage: rng.fold_in_all(keys, stage) for stage in (
        rng.CORRECTOR, rng.PREDICTOR, rng.REPLACE_CORRECTOR, rng.REPLACE_PREDICTOR)}
    times = jnp.linspace(sde.T, eps, sde.N)
    next_times = jnp.concatenate([times[1:], jnp.zeros((1,), times.dtype)])

    def replace(x, stage, n, t):
      z = rng.normal(rng.fold_in_all(streams[stage], n), shape, x.dtype)
      return _replace_known(space, x, y, mask, *_marginal_scale_std(sde, t), z)

    def step(carry, n):
      x, _ = carry
      t, t_next = jnp.full(shape[:1], times[n]), jnp.full(shape[:1], next_times[n])
      x, _ = corr.update(score, rng.fold_in_all(streams[rng.CORRECTOR], n), x, t)
      x = replace(x, rng.REPLACE_CORRECTOR, n, t)
      x, x_mean = pred.update(score, rng.fold_in_all(streams[rng.PREDICTOR], n), x, t)
      x = replace(x, rng.REPLACE_PREDICTOR, n, t_next)
      x_mean = _replace_known(space, x_mean, y, mask, _marginal_scale_std(sde, t_next)[0],
                              jnp.zeros_like(t), jnp.zeros_like(x))
      return (x, x_mean), None

    x = pc.prior_sample(sde, keys, shape)
    z = rng.normal(rng.fold_in_all(keys, rng.REPLACE_PRIOR), shape, x.dtype)
    x = _replace_known(space, x, y, mask, *_marginal_scale_std(sde, jnp.full(shape[:1], sde.T)),
                       z)
    (x, x_mean), _, seen = nonfinite.scan(step, (x, x), jnp.arange(sde.N), lambda n: times[n])
    out = x_mean if denoise else x
    return out, nonfinite.watch_report(seen, out, eps)

  compiled = jax.jit(sample, static_argnums=1)

  def run(key: Array, score_fn: ParamScoreFn, params: Any, data: Array, mask: Array,
          first_index: int | Array = 0):
    if tuple(data.shape) != shape:
      raise ValueError(f'data has shape {tuple(data.shape)}; this sampler was built for {shape}.')
    return compiled(key, score_fn, params, data, jnp.asarray(mask), first_index)

  return nonfinite.fixed_steps(run, nfe, f'pc ({basis} basis, {method})', shape[0])


def get_pc_inpainter(sde: SDE, shape: tuple[int, ...], **options):
  """Inpainting: :func:`get_pc_linear_sampler` with ``basis='identity'``.

  Args:
    sde: the forward SDE.
    shape: ``(B, ...)``.
    **options: the other options of :func:`get_pc_linear_sampler`.

  Returns:
    ``inpainter(key, score_fn, params, data, mask, first_index=0) -> (x, nfe)``, ``mask`` 1 on
    known pixels (same shape as ``data``, or broadcastable to it).
  """
  return get_pc_linear_sampler(sde, shape, basis='identity', **options)


def get_pc_colorizer(sde: SDE, shape: tuple[int, ...], **options):
  """Colorization: the gray channel ``(R + G + B) / sqrt(3)`` of the original's basis is known.

  Args:
    sde: the forward SDE.
    shape: ``(B, ..., 3)``.
    **options: the other options of :func:`get_pc_linear_sampler`.

  Returns:
    ``colorizer(key, score_fn, params, gray, first_index=0) -> (x, nfe)``: ``gray`` has
    ``shape`` (3 equal channels, model space); only its projection on the gray axis is used.
  """
  linear = get_pc_linear_sampler(sde, shape, basis='gray', **options)
  mask = gray_mask(shape)

  def reporting(key, score_fn, params, gray, first_index=0):
    return linear.reporting(key, score_fn, params, gray, mask, first_index)

  return nonfinite.Checked(reporting, linear.name, linear.batch)
