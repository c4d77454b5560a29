"""Closed-form oracles for tests: Gaussian (mixture) data under the three SDEs.

Written from the paper's equations, independently of ``sde_jax.sde``: if the data distribution is
``sum_k w_k N(mu_k, S_k)``, the perturbed marginal at time t is
``p_t = sum_k w_k N(m(t) mu_k, m(t)^2 S_k + s(t)^2 I)`` with the SDE's mean scale m and std s,
so the true score, the density, and (for one Gaussian) the probability-flow map are exact.

This module is the tests' one home of the exact score: :func:`score_fn` (one Gaussian) and
:meth:`GaussianMixture.score_fn` give it in the library's form ``score_fn(params, x, t)``,
computed in the eigenbasis of each covariance; :meth:`GaussianMixture.score_t` computes the same
with matrix inverses, the second method tests/test_gaussian.py checks it against.

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


def sde_coefficients(name: str, t):
  """The SDE ``dx = c(t) x dt + g(t) dw`` as ``(c(t), g(t))`` (numpy): VE ``c = 0``,
  ``g = s(t) sqrt(2 log(sigma_max / sigma_min))``; VP ``c = -beta(t) / 2``, ``g = sqrt(beta(t))``;
  sub-VP VP's c and ``g = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))``, where
  ``beta(t) = beta_min + t (beta_max - beta_min)``."""
  t = np.asarray(t, np.float64)
  if name == 'vesde':
    return np.zeros_like(t), mean_std(name, t)[1] * np.sqrt(2 * np.log(SIGMA_MAX / SIGMA_MIN))
  beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
  integral = BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2
  if name == 'vpsde':
    return -0.5 * beta, np.sqrt(beta)
  if name == 'subvpsde':
    return -0.5 * beta, np.sqrt(beta * (1 - np.exp(-2 * integral)))
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

  def _eigen_terms(self, name: str, x, t):
    """Per copy r and component k: ``log w_k + log N(x_r; m mu_k, m^2 S_k + s^2 I)`` (B, R, K)
    and its gradient in x_r (B, R, K, d), in the eigenbasis of each S_k (no inverse).

    ``x`` (B, ...) is read as ``x.reshape(B, R, d)``; numpy in, numpy float64 out, else jax in
    ``x.dtype``.
    """
    xp = jnp if isinstance(x, jax.Array) else np
    dtype = x.dtype if xp is jnp else np.float64
    lam, u = np.linalg.eigh(self.covs)
    lam, u, mu = (xp.asarray(a, dtype) for a in (lam, u, self.means))
    logw = xp.log(xp.asarray(self.weights, dtype))
    m, s = mean_std(name, xp.asarray(t).astype(dtype))
    m, s = m.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
    xr = x.reshape(x.shape[0], -1, 1, self.dim)
    y = xp.einsum('brkd,kde->brke', xr - m * mu[None, None], u)
    var = m**2 * lam[None, None] + s**2
    logc = logw[None, None] - 0.5 * xp.sum(y**2 / var + xp.log(2 * np.pi * var), axis=-1)
    return logc, -xp.einsum('brke,kde->brkd', y / var, u)

  def exact_score(self, name: str, x, t):
    """The exact score of every copy in ``x`` (module docstring of :func:`score_fn`)."""
    logc, grads = self._eigen_terms(name, x, t)
    if len(self.weights) == 1:
      return grads[:, :, 0].reshape(x.shape)
    if isinstance(x, jax.Array):
      resp = jax.nn.softmax(logc, axis=-1)
    else:
      resp = np.exp(logc - logc.max(axis=-1, keepdims=True))
      resp = resp / resp.sum(axis=-1, keepdims=True)
    return (resp[..., None] * grads).sum(axis=2).reshape(x.shape)

  def component_logits(self, name: str, x, t):
    """``log w_k + log N_k`` of the perturbed components, (B, K) for x of shape (B, d): the exact
    noisy classifier ``log p_t(k | x)`` up to a constant in k."""
    return self._eigen_terms(name, x, t)[0][:, 0]

  def score_fn(self, name: str, *, scaled: bool = False, calls: list | None = None):
    """The exact score in the library's form ``score_fn(params, x, t, key=None)``.

    Args:
      name: the SDE ('vesde', 'vpsde', 'subvpsde'), with this module's constants.
      scaled: the score times ``params['scale']`` (1 is exact), so that params are an input of
        the compiled program; otherwise params are ignored.
      calls: a list appended once per runtime evaluation (a debug callback), so that the
        evaluations of a compiled loop can be counted from outside.

    ``x`` has shape (B, ...), and every example holds ``x[i].size // d`` independent copies of
    the data, consecutive d-vectors in row-major order: (B, R, d) holds R copies, (B, H, W, C)
    one draw of a Gaussian in d = H W C dimensions, or one per pixel if d = C. A numpy x gives
    numpy float64; a jax x is computed in its dtype. ``key`` (the losses' dropout key) is ignored.
    """

    def score(params, x, t, key=None):
      del key
      if calls is not None:
        jax.debug.callback(lambda: calls.append(1))
      out = self.exact_score(name, x, t)
      return params['scale'] * out if scaled else out

    return score


def score_fn(name: str, mean, cov, **options):
  """The exact score of N(mean, cov) data under SDE ``name``: :meth:`GaussianMixture.score_fn` of
  the one Gaussian, ``-(m^2 cov + s^2 I)^{-1} (x - m mean)`` evaluated in the eigenbasis of cov."""
  return GaussianMixture.single(mean, cov).score_fn(name, **options)


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
