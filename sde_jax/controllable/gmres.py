"""GMRES for a batch of linear systems, one per example, without LAPACK: the solver of the
Tweedie-moment guidance (:mod:`sde_jax.controllable.tweedie`)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_jax.sde import batch_mul

Array = jax.Array


def _dot(a: Array, b: Array) -> Array:
  """Per-example inner product, shape (B,)."""
  return jnp.sum((a * b).reshape(a.shape[0], -1), axis=-1)


def gmres(matvec: Callable[[Array], Array], b: Array, iters: int) -> Array:
  """``iters`` steps of GMRES for ``matvec(v) = b`` from 0, each example its own system.

  Arnoldi with modified Gram-Schmidt builds an orthonormal basis ``V`` of the Krylov space
  ``span(b, A b, ..., A^{iters-1} b)`` of each example, and the solution is ``V c`` with ``c``
  minimising ``|| beta e_1 - H c ||`` (``H`` the Hessenberg matrix of the Arnoldi relation). The
  residual never grows and the operator need not be symmetric, which the Jacobian of a learned
  score is not (conjugate gradients diverged on it). A breakdown (an exactly solved system) leaves
  zero basis vectors, which the least-squares step ignores.

  Args:
    matvec: ``v -> A v`` per example, on arrays shaped like ``b``.
    b: the right-hand sides, (B, ...).
    iters: the Krylov dimension (unrolled steps).

  Returns:
    The approximate solutions, shaped like ``b``.
  """
  batch = b.shape[0]
  safe = lambda n: jnp.where(n > 0, n, 1.0)
  beta = jnp.sqrt(_dot(b, b))
  basis = [batch_mul(1.0 / safe(beta), b)]
  hessenberg = jnp.zeros((batch, iters + 1, iters), b.dtype)
  for j in range(iters):  # unrolled: iters is small, and XLA:CPU is slow on loops of network passes
    w = matvec(basis[j])
    for i in range(j + 1):
      hij = _dot(w, basis[i])
      hessenberg = hessenberg.at[:, i, j].set(hij)
      w = w - batch_mul(hij, basis[i])
    norm = jnp.sqrt(_dot(w, w))
    hessenberg = hessenberg.at[:, j + 1, j].set(norm)
    basis.append(batch_mul(1.0 / safe(norm), w))
  coef = _hessenberg_lstsq(hessenberg, beta)
  return sum(batch_mul(coef[:, j], basis[j]) for j in range(iters))


def _hessenberg_lstsq(h: Array, beta: Array) -> Array:
  """``argmin_c || beta e_1 - H c ||`` for upper Hessenberg ``H`` of shape (B, m + 1, m).

  Givens rotations make ``H`` upper triangular (elementwise over the batch: a LAPACK call per
  example would cost more than the rest of a step on small data), then back substitution; a zero
  pivot (after a breakdown) gives a zero coefficient.
  """
  batch, _, m = h.shape
  g = jnp.zeros((batch, m + 1), h.dtype).at[:, 0].set(beta)
  for j in range(m):
    a, c = h[:, j, j], h[:, j + 1, j]
    norm = jnp.sqrt(a**2 + c**2)
    cos = jnp.where(norm > 0, a / jnp.where(norm > 0, norm, 1.0), 1.0)
    sin = jnp.where(norm > 0, c / jnp.where(norm > 0, norm, 1.0), 0.0)
    rows = jnp.stack([h[:, j], h[:, j + 1]], axis=1)  # (B, 2, m): rows j and j + 1
    pair = jnp.stack([g[:, j], g[:, j + 1]], axis=1)  # (B, 2)
    rotation = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], axis=1)
    rows = jnp.einsum('bij,bjm->bim', rotation, rows)
    pair = jnp.einsum('bij,bj->bi', rotation, pair)
    h = h.at[:, j].set(rows[:, 0]).at[:, j + 1].set(rows[:, 1])
    g = g.at[:, j].set(pair[:, 0]).at[:, j + 1].set(pair[:, 1])
  coef = [None] * m
  for j in reversed(range(m)):
    rest = g[:, j] - sum((h[:, j, k] * coef[k] for k in range(j + 1, m)), jnp.zeros_like(beta))
    pivot = h[:, j, j]
    coef[j] = jnp.where(pivot != 0, rest / jnp.where(pivot != 0, pivot, 1.0), 0.0)
  return jnp.stack(coef, axis=1)
