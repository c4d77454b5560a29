"""Tweedie moment projection (Boys et al. 2023): the conditional score of a linear measurement
with the Gaussian of the first two moments of ``p(x_0 | x_t)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_jax.controllable.bases import Basis
from sde_jax.controllable.gmres import gmres
from sde_jax.sde import SDE, ScoreFn, batch_mul

Array = jax.Array


def tweedie_guidance(sde: SDE, score: ScoreFn, basis: Basis, y: Array, mask: Array,
                     solver_iters: int) -> ScoreFn:
  """The conditional score ``score(x, t) + grad log p(y | x_t)`` of :mod:`sde_jax.controllable`:

    ``grad log p(y | x_t) = J^T A^T (A Sigma A^T)^{-1} (y - A x0)``,  ``J = d x0 / d x_t``,

  with Tweedie's ``x0(x_t) = (x_t + s^2 score) / m``, ``Sigma = (s^2 / m) J`` and
  ``A = mask * P^T``; the system is solved by :func:`~sde_jax.controllable.gmres.gmres`.

  ``y`` holds the known coordinates in the basis (zero elsewhere). The moments of
  ``p(x_0 | x_t)`` are Tweedie's; their dependence on ``x_t`` through the covariance is ignored
  (it is constant for Gaussian data).

  Args:
    sde: the forward SDE (``m(t)``, ``s(t)``).
    score: ``(x, t) -> score``, the parameters bound.
    basis: the measurement's basis ``P``.
    y: the known coordinates in the basis, zero elsewhere.
    mask: 1 on known coordinates (in the basis).
    solver_iters: GMRES steps.

  Returns:
    The guided ``(x, t) -> score``.
  """

  def guided(x, t):
    scale, std = sde.marginal_prob(jnp.ones_like(t), t)

    def denoise(v):
      s = score(v, t)
      return batch_mul(1.0 / scale, v + batch_mul(std**2, s)), s

    x0, jvp, s = jax.linearize(denoise, x, has_aux=True)
    to_image = lambda v: basis.couple(mask * v)
    cov = lambda v: mask * basis.decouple(batch_mul(std**2 / scale, jvp(to_image(v))))
    residual = mask * (y - basis.decouple(x0))
    weights = gmres(cov, residual, solver_iters)
    (grad,) = jax.linear_transpose(jvp, x)(to_image(weights))
    return s + grad

  return guided
