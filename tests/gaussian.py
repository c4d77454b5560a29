"""Closed-form oracles for tests: Gaussian (mixture) data under the three SDEs.

Written from the paper's equations, independently of ``sde_jax.sde``: if the data distribution is
``sum_k w_k N(mu_k, S_k)``, the perturbed marginal at time t is
``p_t = sum_k w_k N(m(t) mu_k, m(t)^2 S_k + s(t)^2 I)`` with the SDE's mean scale m and std s,
so the true score, the density, and (for one Gaussian) the probability-flow map are exact.

Conventions (those of the original code): VE ``s(t) = sigma_min (sigma_max / sigma_min)^t``,
``m = 1``; VP ``m = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``, ``s^2 = 1 - m^2``; sub-VP the same m and
``s = 1 - m^2``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MIN, SIGMA_MAX = 0.01, 50.0
BETA_MIN, BETA_MAX = 0.1, 20.0


def mean_std(name: str, t):
  """Mean scale m(t) and std s(t) of the perturbation kernel (numpy or jax arrays)."""
  xp = jnp if isinstance(t, jax.Array) else np
  if name == 'vesde':
    return xp.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN)**t
  log_m = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
  m = xp.exp(log_m)
  if name == 'vpsde':
    return m, xp.sqrt(1.0 - m**2)
  if name == 'subvpsde':
    return m, 1.0 - m**2
  raise ValueError(name)


def prior_std(name: str) -> float:
  return SIGMA_MAX if name == 'vesde' else 1.0


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """``sum_k weights[k] N(means[k], covs[k])`` in d dimensions (numpy float64 parameters)."""

  weights: np.ndarray  # (K,)
  means: np.ndarray  # (K, d)
  covs: np.ndarray  # (K, d, d)

  @classmethod
  def single(cls, mean, cov):
    return cls(np.ones(1), np.asarray(mean, np.float64)[None],
               np.asarray(cov, np.float64)[None])

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def mean(self) -> np.ndarray:
    return self.weights @ self.means

  def cov(self) -> np.ndarray:
    mu = self.mean()
    second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(self.weights, self.means, self.covs))
    return second - np.outer(mu, mu)

  def sample(self, n: int, seed: int = 0) -> np.ndarray:
    rs = np.random.default_rng(seed)
    comp = rs.choice(len(self.weights), size=n, p=self.weights)
    out = np.empty((n, self.dim))
    for k in range(len(self.weights)):
      idx = comp == k
      out[idx] = rs.multivariate_normal(self.means[k], self.covs[k], size=idx.sum())
    return out

  def _components_t(self, name, t):
    """Per-example means (B, K, d) and covariances (B, K, d, d) of p_t."""
    m, s = mean_std(name, t)
    means = m[:, None, None] * jnp.asarray(self.means, jnp.float32)[None]
    eye = jnp.eye(self.dim, dtype=jnp.float32)
    covs = (m[:, None, None, None]**2 * jnp.asarray(self.covs, jnp.float32)[None]
            + s[:, None, None, None]**2 * eye[None, None])
    return means, covs

  def _log_components(self, name, x, t):
    means, covs = self._components_t(name, t)
    diff = x[:, None, :] - means
    prec = jnp.linalg.inv(covs)
    maha = jnp.einsum('bki,bkij,bkj->bk', diff, prec, diff)
    _, logdet = jnp.linalg.slogdet(covs)
    logw = jnp.log(jnp.asarray(self.weights, jnp.float32))
    return logw[None] - 0.5 * (maha + logdet + self.dim * jnp.log(2 * jnp.pi)), diff, prec

  def log_prob_t(self, name: str, x, t):
    """log p_t(x) for x of shape (B, d), t of shape (B,)."""
    logc, _, _ = self._log_components(name, x, t)
    return jax.nn.logsumexp(logc, axis=1)

  def score_t(self, name: str, x, t):
    """The exact score grad_x log p_t(x), shape (B, d)."""
    logc, diff, prec = self._log_components(name, x, t)
    resp = jax.nn.softmax(logc, axis=1)
    comp_scores = -jnp.einsum('bkij,bkj->bki', prec, diff)
    return jnp.einsum('bk,bki->bi', resp, comp_scores)

  def score_fn(self, name: str):
    """A score function in the library's form ``score_fn(params, x, t)``; params is ignored."""
    return lambda params, x, t: self.score_t(name, x, t)


def flow_map(name: str, mean, cov, x_from, t_from: float, t_to: float) -> np.ndarray:
  """Exact probability-flow ODE map for Gaussian data ``N(mean, cov)`` from t_from to t_to.

  Along each eigenvector of ``cov`` (eigenvalue lam), ``y = x - m(t) mean`` scales with
  ``sqrt(m(t)^2 lam + s(t)^2)``, because that ODE is ``dy/dt = (f + g^2 / (2 v)) y`` and
  ``dv/dt = 2 f v + g^2``.
  """
  lam, u = np.linalg.eigh(np.asarray(cov, np.float64))
  m0, s0 = mean_std(name, np.float64(t_from))
  m1, s1 = mean_std(name, np.float64(t_to))
  ratio = np.sqrt((m1**2 * lam + s1**2) / (m0**2 * lam + s0**2))
  y = (np.asarray(x_from, np.float64) - m0 * np.asarray(mean)) @ u
  return (y * ratio) @ u.T + m1 * np.asarray(mean)
