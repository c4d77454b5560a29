"""Losses at the exact score reach their analytic minimum; bad combinations are rejected.

Data: isotropic Gaussian N(mu, s^2 I). At time t, x_t = m x0 + std z has variance
v = m^2 s^2 + std^2 and exact score -(x_t - m mu) / v, so per dimension

  E || std * score + z ||^2 = m^2 s^2 / v

(with x0 = mu + s e, std * score + z = (m^2 s^2 z - std m s e) / v, whose second moment is
(m^4 s^4 + std^2 m^2 s^2) / v^2 = m^2 s^2 / v),

and the losses' expectations are integrals / averages of that over t or over the N levels.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sde_jax import losses, models
from sde_jax import sde as sde_lib
from tests import gaussian

MU, S2, DIM, BATCH = 0.3, 0.5, 4, 40000


def _data(key):
  return MU + np.sqrt(S2) * jax.random.normal(key, (BATCH, DIM))


def _continuous_score(name):
  """Exact score of the data N(MU, S2 I) in DIM dimensions (tests/gaussian.py), times
  ``params['scale']``."""
  return gaussian.score_fn(name, np.full(DIM, MU), S2 * np.eye(DIM), scaled=True)


def _g2(name, t):
  """Squared diffusion g(t)^2 of each SDE, from the paper's definitions."""
  if name == 'vesde':
    _, sigma = gaussian.mean_std(name, t)
    return sigma**2 * 2 * np.log(gaussian.SIGMA_MAX / gaussian.SIGMA_MIN)
  beta = gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN)
  if name == 'vpsde':
    return beta
  return beta * (1 - np.exp(-2 * gaussian.BETA_MIN * t
                            - (gaussian.BETA_MAX - gaussian.BETA_MIN) * t**2))


def _expected_continuous(name, likelihood_weighting, eps=1e-5):
  """E_t over U[eps, 1] of the per-dimension minimum, by the trapezoid rule on a fine grid."""
  t = np.linspace(eps, 1.0, 200001)
  m, std = gaussian.mean_std(name, t)
  per_dim = m**2 * S2 / (m**2 * S2 + std**2)
  if likelihood_weighting:
    per_dim = per_dim * _g2(name, t) / std**2
  return np.trapezoid(per_dim, t) / (1 - eps)


def _within_standard_errors(loss, per_example, expected, z=5.0):
  se = np.std(np.asarray(per_example)) / np.sqrt(len(per_example))
  assert abs(float(loss) - expected) < z * se, (float(loss), expected, se)


@pytest.mark.parametrize('name', ['vesde', 'vpsde', 'subvpsde'])
def test_continuous_loss_at_exact_score_is_analytic_minimum(name):
  sde = {'vesde': sde_lib.VESDE(), 'vpsde': sde_lib.VPSDE(), 'subvpsde': sde_lib.SubVPSDE()}[name]
  loss_fn = jax.jit(losses.get_sde_loss_fn(sde, _continuous_score(name)))
  batch = _data(jax.random.key(0))
  loss, aux = loss_fn({'scale': 1.0}, jax.random.key(1), batch)
  chex.assert_shape(aux['per_example'], (BATCH,))
  _within_standard_errors(loss, aux['per_example'], _expected_continuous(name, False))
  # It is a minimum: scaling the exact score up or down costs more (same random numbers).
  for scale in (0.9, 1.1):
    assert loss_fn({'scale': scale}, jax.random.key(1), batch)[0] > loss


def test_likelihood_weighted_loss_ve():
  """For VE, g^2 / std^2 = 2 log(sigma_max / sigma_min) is constant, so the estimate is tame."""
  loss_fn = jax.jit(losses.get_sde_loss_fn(sde_lib.VESDE(), _continuous_score('vesde'),
                                           likelihood_weighting=True))
  loss, aux = loss_fn({'scale': 1.0}, jax.random.key(3), _data(jax.random.key(2)))
  _within_standard_errors(loss, aux['per_example'], _expected_continuous('vesde', True))


@pytest.mark.parametrize('name', ['vpsde', 'subvpsde'])
def test_likelihood_weighted_loss_is_minimal_at_exact_score(name):
  """VP weighting g^2/std^2 ~ 1/t has a heavy tail; check optimality with common noise instead."""
  sde = sde_lib.VPSDE() if name == 'vpsde' else sde_lib.SubVPSDE()
  loss_fn = jax.jit(losses.get_sde_loss_fn(sde, _continuous_score(name),
                                           likelihood_weighting=True))
  batch = _data(jax.random.key(4))
  loss = loss_fn({'scale': 1.0}, jax.random.key(5), batch)[0]
  assert np.isfinite(loss)
  for scale in (0.95, 1.05):
    assert loss_fn({'scale': scale}, jax.random.key(5), batch)[0] > loss


def _level_score(table_fn):
  """Exact score at discrete level floor(t (N - 1)), given (mean scale, std) per level."""
  def score_fn(params, x, t, key=None):
    i = jnp.floor(t * 999).astype(jnp.int32)
    m, std = table_fn(i)
    v = m**2 * S2 + std**2
    return -(x - (m * MU)[:, None]) / v[:, None] * params

  return score_fn


def test_smld_loss_at_exact_score():
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
  score = _level_score(lambda i: (jnp.ones_like(i, jnp.float32), jnp.asarray(sigmas)[i]))
  loss_fn = jax.jit(losses.get_smld_loss_fn(sde_lib.VESDE(), score, reduce_mean=True))
  loss, aux = loss_fn(1.0, jax.random.key(7), _data(jax.random.key(6)))
  expected = np.mean(S2 / (S2 + sigmas**2))
  _within_standard_errors(loss, aux['per_example'], expected)
  assert loss_fn(1.1, jax.random.key(7), _data(jax.random.key(6)))[0] > loss
  # reduce_mean=False: half the sum over the DIM dimensions.
  loss_sum_fn = jax.jit(losses.get_smld_loss_fn(sde_lib.VESDE(), score, reduce_mean=False))
  np.testing.assert_allclose(loss_sum_fn(1.0, jax.random.key(7), _data(jax.random.key(6)))[0],
                             0.5 * DIM * loss, rtol=1e-5)


def test_ddpm_loss_at_exact_score():
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
  abar = np.cumprod(1 - betas)
  score = _level_score(lambda i: (jnp.sqrt(jnp.asarray(abar, jnp.float32))[i],
                                  jnp.sqrt(1 - jnp.asarray(abar, jnp.float32))[i]))
  loss_fn = jax.jit(losses.get_ddpm_loss_fn(sde_lib.VPSDE(), score))
  loss, aux = loss_fn(1.0, jax.random.key(9), _data(jax.random.key(8)))
  expected = np.mean(abar * S2 / (abar * S2 + 1 - abar))
  _within_standard_errors(loss, aux['per_example'], expected)
  assert loss_fn(0.9, jax.random.key(9), _data(jax.random.key(8)))[0] > loss


def test_discrete_levels_round_trip():
  """The time handed to the score function for level i maps back to i in both conventions."""
  for sde in (sde_lib.VESDE(N=1000), sde_lib.VPSDE(N=1000), sde_lib.VPSDE(N=2000)):
    levels = jnp.arange(sde.N)
    t = losses._level_times(sde, levels)
    np.testing.assert_array_equal(sde.timestep(t), levels)
    np.testing.assert_array_equal(jnp.round((sde.T - t) * (sde.N - 1)), sde.N - 1 - levels)


def test_invalid_combinations_are_rejected():
  score = _continuous_score('vpsde')
  with pytest.raises(ValueError, match='SubVPSDE'):
    losses.make_loss_fn(sde_lib.SubVPSDE(), score, continuous=False)
  with pytest.raises(ValueError, match='likelihood_weighting'):
    losses.make_loss_fn(sde_lib.VPSDE(), score, continuous=False, likelihood_weighting=True)
  with pytest.raises(ValueError, match='VESDE'):
    losses.get_smld_loss_fn(sde_lib.VPSDE(), score)
  with pytest.raises(ValueError, match='VPSDE'):
    losses.get_ddpm_loss_fn(sde_lib.SubVPSDE(), score)


def _mlp_config(sde, continuous):
  return ml_collections.ConfigDict({
      'training': {'sde': sde, 'continuous': continuous, 'reduce_mean': True,
                   'likelihood_weighting': False},
      'model': {'name': 'mlp', 'features': (32, 32), 'embedding_type': 'positional',
                'embedding_dim': 16, 'fourier_scale': 16.0, 'scale_by_sigma': False,
                'sigma_min': 0.01, 'sigma_max': 5.0, 'beta_min': 0.1, 'beta_max': 20.0,
                'num_scales': 1000}})


@pytest.mark.parametrize('sde_name,continuous', [('vpsde', True), ('vpsde', False),
                                                 ('vesde', False), ('subvpsde', True)])
def test_get_loss_fn_with_model(sde_name, continuous):
  config = _mlp_config(sde_name, continuous)
  sde = sde_lib.from_config(config)
  model = models.get_model(config)
  params = models.init_params(model, jax.random.key(0), (1, 2))
  loss_fn = losses.get_loss_fn(config, sde, model)
  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, jax.random.key(1), jnp.ones((8, 2)))
  chex.assert_shape(loss, ())
  chex.assert_tree_all_finite((loss, grads))
  assert float(loss) > 0


def test_get_loss_fn_rejects_discrete_subvp():
  config = _mlp_config('subvpsde', False)
  with pytest.raises(ValueError, match='continuous'):
    losses.get_loss_fn(config, sde_lib.from_config(config), models.get_model(config))
