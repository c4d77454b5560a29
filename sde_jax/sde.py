"""Forward SDEs of score-based generative modelling (Song et al., ICLR 2021).

Each SDE is a frozen pytree (``flax.struct.dataclass``) with pure methods.  Time ``t`` has shape
``(B,)`` and ``x`` has shape ``(B, ...)``; per-example scalars are broadcast against ``x`` with
:func:`batch_mul`, so the code also runs under ``jax_numpy_rank_promotion='raise'``.

Three SDEs, with ``T = 1``:

* VE (variance exploding, SMLD): ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` with
  ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.
* VP (variance preserving, DDPM): ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` with
  ``beta(t) = beta_min + t (beta_max - beta_min)``.
* sub-VP: same drift as VP, ``g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta(s) ds))``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (x, t) -> score


def batch_mul(a: Array, x: Array) -> Array:
  """Multiplies per-example values ``a`` of shape (B,) into ``x`` of shape (B, ...)."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def sum_except_batch(x: Array) -> Array:
  """Sums each example over all but the batch axis, shape (B,)."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _standard_normal_logp(z: Array, scale: float) -> Array:
  """log N(z; 0, scale^2 I), summed over all but the batch axis."""
  dim = np.prod(z.shape[1:])
  return (-0.5 * dim * jnp.log(2 * np.pi * scale**2)
          - sum_except_batch(z**2) / (2 * scale**2))


class SDE(abc.ABC):
  """Interface of a forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``[0, T]``.

  Subclasses are frozen pytrees. ``N`` is the number of discretisation steps used by the discrete
  samplers and losses; it is a static field so that shapes depend on it.
  """

  N: int
  T: float

  @abc.abstractmethod
  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Returns the drift ``f(x, t)`` (shape of x) and the diffusion ``g(t)`` (shape (B,))."""

  @abc.abstractmethod
  def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Returns mean (shape of x) and std (shape (B,)) of ``p_{0t}(x(t) | x(0) = x)``."""

  @abc.abstractmethod
  def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
    """Draws from the prior ``p_T`` the reverse process starts from."""

  @abc.abstractmethod
  def prior_logp(self, z: Array) -> Array:
    """Log-density of the prior at ``z``, one value per example (shape (B,))."""

  @abc.abstractmethod
  def alpha(self, t: Array) -> Array:
    """Per-level step-size factor of the Langevin correctors, shape (B,).

    ``1 - beta_i`` of the discrete chain for VP and sub-VP, ``1`` for VE (as in the original).
    """

  def timestep(self, t: Array) -> Array:
    """Index ``floor(t (N - 1) / T)`` of the discrete level at time ``t`` (int32, shape (B,))."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """One step of the discretised forward process: ``x_{i+1} = x_i + f_i + G_i z_i``.

    The default is Euler–Maruyama with ``dt = T / N``: ``f_i = f(x, t) dt``,
    ``G_i = g(t) sqrt(dt)``.
    """
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
    """The reverse-time SDE (or its probability-flow ODE) given a score ``score_fn(x, t)``."""
    return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """Reverse-time process ``dx = [f - c g^2 score] dt + g' dw`` run from T to 0.

  ``c = 1, g' = g`` for the reverse SDE; ``c = 1/2, g' = 0`` for the probability-flow ODE.
  """

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def N(self) -> int:
    return self.forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  def _combine(self, drift, diffusion, x, t):
    coeff = 0.5 if self.probability_flow else 1.0
    drift = drift - batch_mul(coeff * diffusion**2, self.score_fn(x, t))
    if self.probability_flow:
      diffusion = jnp.zeros_like(diffusion)
    return drift, diffusion

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift and diffusion of the reverse process in forward-time units."""
    return self._combine(*self.forward.sde(x, t), x, t)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Reverse of ``forward.discretize``: ``f_rev = f - c G^2 score``, ``G_rev = G`` (or 0)."""
    return self._combine(*self.forward.discretize(x, t), x, t)


@struct.dataclass
class VESDE(SDE):
  """Variance-exploding SDE; ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = struct.field(pytree_node=False, default=1000)
  T: float = struct.field(pytree_node=False, default=1.0)

  @property
  def discrete_sigmas(self) -> Array:
    """The N noise levels of SMLD, ascending from sigma_min to sigma_max (geometric)."""
    return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

  def sigma(self, t: Array) -> Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min)**(t / self.T)

  def sde(self, x, t):
    diffusion = self.sigma(t) * jnp.sqrt(
        2 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)) / self.T)
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape) * self.sigma_max

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max)

  def alpha(self, t):
    return jnp.ones_like(t)

  def discretize(self, x, t):
    """SMLD chain: ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z`` (``sigma_{-1} = 0``)."""
    sigma, adjacent = self.adjacent_sigmas(t)
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)

  def adjacent_sigmas(self, t: Array) -> tuple[Array, Array]:
    """``(sigma_i, sigma_{i-1})`` at the discrete level of ``t``, with ``sigma_{-1} = 0``."""
    i = self.timestep(t)
    sigmas = self.discrete_sigmas
    return sigmas[i], jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])


@struct.dataclass
class _LinearBetaSDE(SDE):
  """Shared parts of VP and sub-VP: ``beta(t)`` linear in t, the DDPM discrete tables."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = struct.field(pytree_node=False, default=1000)
  T: float = struct.field(pytree_node=False, default=1.0)

  def beta(self, t: Array) -> Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: Array) -> Array:
    """``-int_0^t beta(s) ds / 2``, the log of the mean's scale ``E[x(t)] / x(0)``."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  @property
  def discrete_betas(self) -> Array:
    """DDPM's betas, ``linspace(beta_min / N, beta_max / N, N)``."""
    return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  @property
  def alphas(self) -> Array:
    return 1.0 - self.discrete_betas

  @property
  def alphas_cumprod(self) -> Array:
    return jnp.cumprod(self.alphas)

  @property
  def sqrt_alphas_cumprod(self) -> Array:
    return jnp.sqrt(self.alphas_cumprod)

  @property
  def sqrt_1m_alphas_cumprod(self) -> Array:
    return jnp.sqrt(1.0 - self.alphas_cumprod)

  def alpha(self, t):
    return self.alphas[self.timestep(t)]

  def prior_sampling(self, key, shape):
    return jax.random.normal(key, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z, 1.0)


@struct.dataclass
class VPSDE(_LinearBetaSDE):
  """Variance-preserving SDE, the continuous limit of DDPM."""

  def sde(self, x, t):
    beta_t = self.beta(t)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return batch_mul(jnp.exp(lmc), x), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def discretize(self, x, t):
    """DDPM chain: ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z``."""
    i = self.timestep(t)
    beta = self.discrete_betas[i]
    return batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x), jnp.sqrt(beta)


@struct.dataclass
class SubVPSDE(_LinearBetaSDE):
  """Sub-VP SDE: the VP drift with a diffusion that keeps the variance below VP's.

  Uses Euler–Maruyama for ``discretize``; the DDPM tables (``alphas``) are those of the VP SDE
  with the same betas, which the Langevin correctors use for their step size.
  """

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
    return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return batch_mul(jnp.exp(lmc), x), -jnp.expm1(2.0 * lmc)


SDES = {'vesde': VESDE, 'vpsde': VPSDE, 'subvpsde': SubVPSDE}


def from_config(config) -> SDE:
  """Builds the SDE named by ``config.training.sde`` with the noise settings of ``config.model``.

  Reads ``model.sigma_min``/``sigma_max`` (VE) or ``model.beta_min``/``beta_max`` (VP, sub-VP),
  and ``model.num_scales`` (N), as the original configs do.
  """
  name = config.training.sde.lower()
  if name not in SDES:
    raise ValueError(
        f'config.training.sde={config.training.sde!r} is not a known SDE; expected one of '
        f'{sorted(SDES)}.')
  model = config.model
  if name == 'vesde':
    return VESDE(sigma_min=float(model.sigma_min), sigma_max=float(model.sigma_max),
                 N=int(model.num_scales))
  return SDES[name](beta_min=float(model.beta_min), beta_max=float(model.beta_max),
                    N=int(model.num_scales))
