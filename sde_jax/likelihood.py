"""Exact log-likelihoods (bits/dim) of score-based models through the probability-flow ODE.

The probability-flow ODE ``dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2`` carries ``p_eps`` to
``p_T``. By the instantaneous change of variables (Chen et al., 2018),
``d log p_t(x(t)) / dt = -div f~(x(t), t)``, so along one trajectory started at the data point
``x(eps) = x``::

    log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.

The solver integrates ``(x, delta_logp)`` jointly from ``eps`` to ``T`` and replaces ``p_T`` by the
SDE's prior. The divergence is exact (``exact_trace=True``, one Jacobian column per dimension:
small inputs only) or the Skilling–Hutchinson estimate ``v^T (d f~ / dx) v`` with
``E[v v^T] = I``, one Jacobian-vector product per evaluation.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import nonfinite, odeint, rng
from sde_jax.sde import SDE, sum_except_batch

Array = jax.Array
# Draws of the Hutchinson probe v, example i from keys[i]: (keys, shape, dtype) -> v.
HUTCHINSON_NOISE = {'rademacher': rng.rademacher, 'gaussian': rng.normal}


def hutchinson_divergence(fn: Callable[[Array], Array], x: Array,
                          v: Array) -> tuple[Array, Array]:
  """Value and Skilling–Hutchinson divergence estimate of a per-example map ``fn``.

  ``div fn(x_i) ~= v_i^T J_i v_i`` with ``J_i = d fn(x)_i / d x_i``; unbiased when
  ``E[v_i v_i^T] = I``. Examples do not interact, so one batched Jacobian-vector product gives
  every ``J_i v_i`` at once. Forward mode also returns ``fn(x)`` and keeps no tape, unlike the
  vector-Jacobian product of the original.

  Args:
    fn: ``x -> y`` with ``y`` of the shape of ``x``, example i depending on ``x_i`` only.
    x: inputs, shape (B, ...).
    v: probe vectors, shape of ``x``.

  Returns:
    ``(fn(x), estimate)`` with ``estimate`` of shape (B,).
  """
  value, jv = jax.jvp(fn, (x,), (v,))
  return value, sum_except_batch(jv * v)


def exact_divergence(fn: Callable[[Array], Array], x: Array) -> tuple[Array, Array]:
  """Value and exact divergence ``sum_j d fn(x)_{ij} / d x_{ij}`` of a per-example map ``fn``.

  One Jacobian-vector product per dimension ``j`` with the basis vector ``e_j`` in every example
  (vectorised with ``vmap``), so the cost grows with ``D = prod(x.shape[1:])``: for tests and
  small inputs.

  Returns:
    ``(fn(x), divergence)`` with ``divergence`` of shape (B,).
  """
  batch, dim = x.shape[0], int(np.prod(x.shape[1:]))
  basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
  column = lambda e: jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))
  # The value does not depend on the tangent: out_axes=None computes it once, not D times.
  value, columns = jax.vmap(column, out_axes=(None, 0))(basis)
  diagonal = jnp.diagonal(columns.reshape(dim, batch, dim), axis1=0, axis2=2)
  return value, jnp.sum(diagonal, axis=-1)


def _probability_flow_drift(sde: SDE, score_fn_xt) -> Callable[[Array, Array], Array]:
  """``(x, t) -> f(x, t) - g(t)^2 score(x, t) / 2`` with ``t`` of shape (B,)."""
  flow = sde.reverse(score_fn_xt, probability_flow=True)
  return lambda x, t: flow.sde(x, t)[0]


def _augmented_vector_field(drift_fn, probe: Array | None):
  """``(t, (x, delta_logp)) -> (f~, div f~)`` at ``(x, t)``; the exact divergence if no probe."""

  def vector_field(t, state):
    x, _ = state
    drift_at_t = lambda y: drift_fn(y, jnp.full((y.shape[0],), t, y.dtype))
    if probe is None:
      return exact_divergence(drift_at_t, x)
    return hutchinson_divergence(drift_at_t, x, probe)

  return vector_field


def _probe(draw, key: Array, data: Array, epsilon: Array | None, first_index) -> Array:
  """The Hutchinson probe: ``epsilon`` if given, else one draw per example from ``key``."""
  if epsilon is None:
    keys = rng.per_example_keys(key, data.shape[0], first_index)
    return draw(keys, data.shape, data.dtype)
  if epsilon.shape != data.shape:
    raise ValueError(
        f'epsilon has shape {epsilon.shape}; it must have the shape of data, {data.shape}.')
  return epsilon.astype(data.dtype)


def bits_per_dim(logp: Array, dim: int, offset: float) -> Array:
  """``bpd = -logp / (D ln 2) + offset``: nats per example to bits per dimension.

  Args:
    logp: log-likelihoods in nats, one per example, shape (B,) (any shape works elementwise).
    dim: ``D``, the number of data dimensions of one example (``prod(x.shape[1:])``).
    offset: bits per dimension added after the conversion, e.g. ``7 - inverse_scaler(-1)`` of
      :func:`get_likelihood_fn` for 8-bit data modelled in model space.

  Returns:
    Bits per dimension, shape and dtype of ``logp``.
  """
  return -logp / (dim * np.log(2.0)) + offset


def get_likelihood_fn(sde: SDE, inverse_scaler: Callable, hutchinson_type: str = 'rademacher',
                      rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                      solver: str = 'rk45', exact_trace: bool = False):
  """Builds the bits/dim of data under the probability-flow ODE of ``sde``.

  ``log p(x) = log p_prior(z) + int_eps^T div f~(x(t), t) dt`` with ``z = x(T)`` and
  ``dx/dt = f~ = f - g^2 score / 2``, solved adaptively from ``x(eps) = x``. The result is
  reported as in the original code, in bits per dimension of 8-bit data:
  ``bpd = -log p(x) / (D ln 2) + 7 - inverse_scaler(-1)``. The offset converts a density on
  model space to one on ``{0, ..., 255}^D``: 8 bits for the 1/256 bins of dequantized data in
  [0, 1], minus one more for the factor 2 of the [-1, 1] scaling (``inverse_scaler(-1) = 0``
  when data are centred, ``-1`` when they are not).

  Args:
    sde: the forward SDE; its prior gives ``log p_T``.
    inverse_scaler: model space -> [0, 1], used only for the offset.
    hutchinson_type: the probe distribution, ``'rademacher'`` (+-1) or ``'gaussian'``.
    rtol, atol: tolerances of the adaptive solver on the joint state ``(x, delta_logp)``.
    eps: start time of the integration (the ODE is singular at 0).
    solver: an :data:`sde_jax.odeint.SOLVERS` name.
    exact_trace: compute the divergence exactly (one JVP per dimension) instead of the
      Hutchinson estimate; for small inputs and tests.

  Returns:
    ``likelihood_fn(key, score_fn, params, data, epsilon=None, first_index=0)`` ->
    ``(bpd, z, nfe)``, jitted with ``score_fn`` static (the jitted program, before its report is
    raised on the host, is ``likelihood_fn.jitted``). ``data`` (B, ...) is in model space
    (dequantized). The probe of example i is drawn once per call from
    ``fold_in(key, first_index + i)`` and held fixed over the solve; a given ``epsilon`` (shape of
    ``data``) is used instead. ``bpd`` has shape (B,), ``z = x(T)`` the shape of ``data``, and
    ``nfe`` counts evaluations of the drift (each with one JVP through ``score_fn``).

  Raises:
    ValueError: for an unknown ``hutchinson_type`` or ``solver``; ``likelihood_fn`` raises it
      for an ``epsilon`` with ``exact_trace=True`` or of a shape other than ``data``'s.
    FloatingPointError: from ``likelihood_fn``, on the host, when a NaN or infinity in an
      example (its data, or the score network's output) stopped the solve; it names the
      examples and the time reached, and the batch's values are NaN
      (:mod:`sde_jax.nonfinite`).
  """
  if hutchinson_type not in HUTCHINSON_NOISE:
    raise ValueError(f'hutchinson_type={hutchinson_type!r} is not known; expected one of '
                     f'{sorted(HUTCHINSON_NOISE)}.')
  if solver not in odeint.SOLVERS:
    raise ValueError(f'solver={solver!r} is not known; expected one of {sorted(odeint.SOLVERS)}.')
  draw = HUTCHINSON_NOISE[hutchinson_type]
  offset = 7.0 - float(inverse_scaler(-1.0))

  def likelihood_fn(key, score_fn, params, data, epsilon=None, first_index=0):
    if exact_trace and epsilon is not None:
      raise ValueError('epsilon is the Hutchinson probe; exact_trace=True takes none.')
    drift_fn = _probability_flow_drift(sde, functools.partial(score_fn, params))
    probe = None if exact_trace else _probe(draw, key, data, epsilon, first_index)
    vector_field = _augmented_vector_field(drift_fn, probe)
    state0 = (data, jnp.zeros((data.shape[0],), data.dtype))
    (z, delta_logp), nfe, t, unfinished = odeint.solve(vector_field, state0, eps, sde.T,
                                                       rtol=rtol, atol=atol, solver=solver)
    bad = nonfinite.example_mask((z, delta_logp)) & ~unfinished
    # The other examples stopped at t, not at T: none of the batch's values is a likelihood.
    z, delta_logp = (jnp.where(jnp.any(bad), jnp.nan, a) for a in (z, delta_logp))
    logp = sde.prior_logp(z) + delta_logp
    bpd = bits_per_dim(logp, int(np.prod(data.shape[1:])), offset)
    return bpd, z, nfe, nonfinite.report(bad, t, unfinished, odeint.MAX_STEPS)

  jitted = jax.jit(likelihood_fn, static_argnums=(1,))

  @functools.wraps(likelihood_fn)
  def call(key, score_fn, params, data, epsilon=None, first_index=0):
    # Positional arguments and an array index: jit keys its cache on how arguments are passed
    # and on Python scalars' weak types, and neither should cost a second compilation.
    bpd, z, nfe, report = jitted(key, score_fn, params, data, epsilon,
                                 jnp.asarray(first_index, jnp.uint32))
    nonfinite.raise_if_any(report, f'likelihood ({solver})', data.shape[0])
    return bpd, z, nfe

  call.jitted = jitted  # (key, score_fn, params, data, epsilon, uint32 first_index): sde-jax plan
  return call


def uniform_dequantize(key: Array, data01: Array, first_index: int | Array = 0) -> Array:
  """Uniform dequantization of 8-bit data: ``y = (255 x + u) / 256``, ``u ~ U[0, 1)^D``.

  ``x = k / 255`` (``k`` in 0..255) lands uniformly in the bin ``[k / 256, (k + 1) / 256)``, so
  for a density ``p`` on [0, 1]^D, Jensen's inequality bounds the discrete model
  ``P(k) = int_bin p``: ``log P(k) >= E_u[log p(y)] - D log 256``; the bits/dim offset of
  :func:`get_likelihood_fn` supplies the ``log 256``. Example i draws from
  ``fold_in(key, first_index + i)``, independently of the batch it is in.

  Args:
    key: a PRNG key.
    data01: images in [0, 1] (``uint8 / 255``), shape (B, ...).
    first_index: global index of the batch's first example.

  Returns:
    Dequantized data in [0, 1), shape and float dtype of ``data01``.
  """
  data01 = jnp.asarray(data01)
  dtype = data01.dtype if jnp.issubdtype(data01.dtype, jnp.floating) else jnp.float32
  u = rng.uniform(rng.per_example_keys(key, data01.shape[0], first_index), data01.shape, dtype)
  y = (data01.astype(dtype) * 255.0 + u) / 256.0
  # In float32, 255 + u rounds to 256 when u > 1 - 2^-17; keep y inside the top bin.
  return jnp.minimum(y, jnp.nextafter(jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype)))
