"""Score-matching losses, written against a score function ``score_fn(params, x, t, key)``.

Three objectives, as in the original code:

* continuous denoising score matching (any SDE), ``t ~ U[eps, T]``:
  ``E_t E_{x0, z} [ lambda(t) || s(x_t, t) + z / std(t) ||^2 ]`` with ``x_t = mean(x0, t) + std(t) z``
  and ``lambda = std^2`` (default) or ``g(t)^2`` (likelihood weighting, Song et al. 2021b);
* SMLD (discrete VE): one of the N noise levels uniformly, weighted by ``sigma_i^2``;
* DDPM (discrete VP): one of the N steps uniformly, ``|| eps_theta - z ||^2``.

The per-example norm is a mean over the data dimensions (``reduce_mean=True``) or half their sum.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_jax import models, rng
from sde_jax import sde as sde_lib
from sde_jax.sde import batch_mul

Array = jax.Array
# score_fn(params, x, t, key) -> score; key feeds dropout when training (may be ignored).
TrainScoreFn = Callable[[object, Array, Array, Array], Array]
LossFn = Callable[[object, Array, Array], tuple[Array, dict]]


def _reducer(reduce_mean: bool) -> Callable[[Array], Array]:
  """Per-example reduction over all but the batch axis: mean, or half the sum."""
  if reduce_mean:
    return lambda a: jnp.mean(a.reshape(a.shape[0], -1), axis=-1)
  return lambda a: 0.5 * jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def _split(key: Array, batch_size: int) -> tuple[Array, Array, Array]:
  """Per-example keys for the time/level draw and the noise, and one key for the model."""
  k_t, k_z, k_model = jax.random.split(key, 3)
  return (rng.per_example_keys(k_t, batch_size), rng.per_example_keys(k_z, batch_size), k_model)


def get_sde_loss_fn(sde: sde_lib.SDE, score_fn: TrainScoreFn, reduce_mean: bool = True,
                    likelihood_weighting: bool = False, eps: float = 1e-5) -> LossFn:
  """Continuous denoising score matching.

  ``loss = E_t[ lambda(t) || s(x_t, t) + z / std(t) ||^2 ]``, ``t ~ U[eps, T]``. With
  ``lambda = std^2`` this is ``|| std s + z ||^2``; with likelihood weighting ``lambda = g(t)^2``
  it bounds the negative log-likelihood (Song et al., 2021b).

  Args:
    sde: the forward SDE; gives ``mean(x0, t)``, ``std(t)``, ``g(t)`` and ``T``.
    score_fn: ``score_fn(params, x, t, key) -> score`` (shape of ``x``), ``t`` of shape (B,);
      ``key`` is a PRNG key for the model (dropout).
    reduce_mean: per-example reduction over the data dimensions: the mean if True, half the sum
      if False.
    likelihood_weighting: weight by ``lambda = g(t)^2`` instead of ``std(t)^2``.
    eps: smallest time drawn, ``t ~ U[eps, T]`` (the marginal std vanishes at 0).

  Returns:
    ``loss_fn(params, key, batch) -> (loss, {'per_example': losses, 't': t})``: ``batch`` is
    data in model space, shape (B, ...); ``key`` a PRNG key, split into per-example keys for ``t``
    and ``z`` and one for the model; ``loss`` the mean of ``losses`` (B,) over the batch.
  """
  reduce = _reducer(reduce_mean)

  def loss_fn(params, key, batch):
    k_t, k_z, k_model = _split(key, batch.shape[0])
    t = rng.uniform(k_t, (batch.shape[0],)) * (sde.T - eps) + eps
    z = rng.normal(k_z, batch.shape)
    mean, std = sde.marginal_prob(batch, t)
    score = score_fn(params, mean + batch_mul(std, z), t, k_model)
    if likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(batch), t)[1]**2
      losses = reduce(jnp.square(score + batch_mul(1.0 / std, z))) * g2
    else:
      losses = reduce(jnp.square(batch_mul(std, score) + z))
    return jnp.mean(losses), {'per_example': losses, 't': t}

  return loss_fn


def level_times(sde: sde_lib.SDE, levels: Array) -> Array:
  """Time ``t_i = i T / (N - 1)`` of discrete level i, the inverse of ``SDE.timestep``.

  Nudged up by a thousandth of a level so that ``floor(t (N - 1) / T)`` recovers ``i`` despite
  float32 rounding, while a network fed ``t (N - 1)`` (the DDPM label) still sees ``i`` to 1e-3.
  """
  return (levels.astype(jnp.float32) + 1e-3) * sde.T / (sde.N - 1)


def _discrete_loss_fn(sde: sde_lib.SDE, score_fn: TrainScoreFn, reduce_mean: bool,
                      kernel: Callable[[Array], tuple[Array, Array]]) -> LossFn:
  """``|| std_i s(m_i x + std_i z, t_i) + z ||^2`` at a level i drawn uniformly from the N levels.

  ``kernel(levels) -> (m_i, std_i)`` gives the discrete chain's perturbation kernel.
  """
  reduce = _reducer(reduce_mean)

  def loss_fn(params, key, batch):
    k_t, k_z, k_model = _split(key, batch.shape[0])
    levels = jax.vmap(lambda k: jax.random.randint(k, (), 0, sde.N))(k_t)
    mean_scale, std = kernel(levels)
    z = rng.normal(k_z, batch.shape)
    noisy = batch_mul(mean_scale, batch) + batch_mul(std, z)
    score = score_fn(params, noisy, level_times(sde, levels), k_model)
    losses = reduce(jnp.square(batch_mul(std, score) + z))
    return jnp.mean(losses), {'per_example': losses, 'level': levels}

  return loss_fn


def get_smld_loss_fn(sde: sde_lib.VESDE, score_fn: TrainScoreFn,
                     reduce_mean: bool = False) -> LossFn:
  """SMLD / NCSN loss: ``sigma_i^2 || s(x + sigma_i z, sigma_i) + z / sigma_i ||^2``, i uniform.

  The score function sees the time of level i (see ``SDE.timestep``); NCSN-style score
  functions turn it back into the level's index or sigma.

  Args:
    sde: a :class:`~sde_jax.sde.VESDE`; its ``N`` ``discrete_sigmas`` are the noise levels.
    score_fn: ``score_fn(params, x, t, key) -> score`` (shape of ``x``), ``t`` of shape (B,).
    reduce_mean: per-example reduction over the data dimensions: the mean if True, half the sum
      if False (the default, as in the original).

  Returns:
    ``loss_fn(params, key, batch) -> (loss, {'per_example': losses, 'level': levels})`` with
    ``batch`` in model space, shape (B, ...), and ``levels`` the int32 level indices (B,).

  Raises:
    ValueError: if ``sde`` is not a VESDE.
  """
  if not isinstance(sde, sde_lib.VESDE):
    raise ValueError(f'The SMLD loss needs a VESDE, got {type(sde).__name__}.')
  sigmas = sde.discrete_sigmas
  return _discrete_loss_fn(sde, score_fn, reduce_mean,
                           lambda i: (jnp.ones_like(sigmas[i]), sigmas[i]))


def get_ddpm_loss_fn(sde: sde_lib.VPSDE, score_fn: TrainScoreFn,
                     reduce_mean: bool = True) -> LossFn:
  """DDPM loss ``|| eps_theta(x_i, i) - z ||^2``, ``x_i = sqrt(abar_i) x + sqrt(1 - abar_i) z``.

  Written with the score ``s = -eps_theta / sqrt(1 - abar_i)``, so the same score function serves
  sampling and training.

  Args:
    sde: a :class:`~sde_jax.sde.VPSDE` (that class exactly); its ``N`` discrete betas give each
      step's ``sqrt(abar_i)`` and ``sqrt(1 - abar_i)``.
    score_fn: ``score_fn(params, x, t, key) -> score`` (shape of ``x``), ``t`` of shape (B,).
    reduce_mean: per-example reduction over the data dimensions: the mean if True, half the sum
      if False.

  Returns:
    ``loss_fn(params, key, batch) -> (loss, {'per_example': losses, 'level': levels})`` with
    ``batch`` in model space, shape (B, ...), and ``levels`` the int32 step indices (B,).

  Raises:
    ValueError: if ``type(sde)`` is not VPSDE.
  """
  if type(sde) is not sde_lib.VPSDE:
    raise ValueError(f'The DDPM loss needs a VPSDE, got {type(sde).__name__}.')
  return _discrete_loss_fn(
      sde, score_fn, reduce_mean,
      lambda i: (sde.sqrt_alphas_cumprod[i], sde.sqrt_1m_alphas_cumprod[i]))


def make_loss_fn(sde: sde_lib.SDE, score_fn: TrainScoreFn, *, continuous: bool = True,
                 reduce_mean: bool = True, likelihood_weighting: bool = False,
                 eps: float = 1e-5) -> LossFn:
  """Chooses the objective as the original does; rejects combinations that make no sense.

  Continuous training uses :func:`get_sde_loss_fn` for any SDE; discrete training uses
  :func:`get_smld_loss_fn` for a VESDE and :func:`get_ddpm_loss_fn` for a VPSDE.

  Args:
    sde: the forward SDE.
    score_fn: ``score_fn(params, x, t, key) -> score`` (shape of ``x``), ``t`` of shape (B,).
    continuous: continuous-time denoising score matching (``t ~ U[eps, T]``) if True, else the
      discrete SMLD / DDPM loss over the ``sde.N`` levels.
    reduce_mean: per-example reduction over the data dimensions: the mean if True, half the sum
      if False.
    likelihood_weighting: weight the continuous loss by ``g(t)^2``; continuous only.
    eps: smallest time of the continuous loss; unused by the discrete ones.

  Returns:
    ``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch`` in model space, shape (B, ...).

  Raises:
    ValueError: if ``likelihood_weighting`` is set without ``continuous``, or discrete training
      is asked of an SDE other than VESDE or VPSDE.
  """
  if continuous:
    return get_sde_loss_fn(sde, score_fn, reduce_mean, likelihood_weighting, eps)
  if likelihood_weighting:
    raise ValueError('likelihood_weighting=True needs continuous training (a continuous-time '
                     'weighting g(t)^2); got continuous=False.')
  discrete = {sde_lib.VESDE: get_smld_loss_fn, sde_lib.VPSDE: get_ddpm_loss_fn}
  if type(sde) not in discrete:
    raise ValueError(f'Discrete training is defined for VESDE (SMLD) and VPSDE (DDPM), not for '
                     f'{type(sde).__name__}; set training.continuous=True.')
  return discrete[type(sde)](sde, score_fn, reduce_mean)


def get_loss_fn(config, sde: sde_lib.SDE, model, train: bool = True) -> LossFn:
  """The training objective named by ``config.training`` for ``model``.

  Reads ``training.continuous``, ``training.reduce_mean``, ``training.likelihood_weighting`` and
  (optionally) ``training.eps``.

  Args:
    config: the experiment config; only its ``training`` section is read.
    sde: the forward SDE the model is trained for.
    model: the score network, a Module called as described in :mod:`sde_jax.models`.
    train: run the model in training mode (dropout fed from the loss's key).

  Returns:
    ``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch`` in model space.
  """
  tc = config.training
  continuous = bool(tc.continuous)
  score_fn = models.get_score_fn(sde, model, continuous=continuous, train=train)
  return make_loss_fn(sde, score_fn, continuous=continuous, reduce_mean=bool(tc.reduce_mean),
                      likelihood_weighting=bool(tc.likelihood_weighting),
                      eps=float(tc.get('eps', 1e-5)))
