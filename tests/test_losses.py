"""Losses at the exact score reach their analytic minimum; bad combinations are rejected.

Data: isotropic Gaussian N(mu, s^2 I). At time t, x_t = m x0 + std z has variance
v = m^2 s^2 + std^2 and exact score -(x_t - m mu) / v, so per dimension

  E || std * score + z ||^2 = m^2 s^2 / v

(with x0 = mu + s e, std * score + z = (m^2 s^2 z - std m s e) / v, whose second moment is
(m^4 s^4 + std^2 m^2 s^2) / v^2 = m^2 s^2 / v),

and the losses' expectations are integrals / averages of that over t or over the N levels.

The tests of :class:`ClosedFormTest` run each loss under ``chex.variants``: jitted and eagerly.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized

from sde_jax import losses, models
from sde_jax import sde as sde_lib
from tests import gaussian

MU, S2, DIM, BATCH = 0.3, 0.5, 4, 40000
SDES = {'vesde': sde_lib.VESDE(), 'vpsde': sde_lib.VPSDE(), 'subvpsde': sde_lib.SubVPSDE()}
EACH_SDE = parameterized.named_parameters((name, name) for name in SDES)
# Jitted and eager: chex.variants makes one test of each, and self.variant(fn) is fn jitted or not.
JIT_AND_EAGER = chex.variants(with_jit=True, without_jit=True)


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


# --- The value of the likelihood-weighted loss ----------------------------------------------------

EPS = 1e-5  # get_sde_loss_fn's default: t ~ U[eps, T]
SHAPE = (128, 2, 3)  # the per-example reduction runs over all but the batch axis


def _affine_score(params, x, t, key=None):
  """A fixed score that is wrong for the data at every t: ``-(1 + t) (x - 1/2)`` (numpy or jax)."""
  del params, key
  col = t.reshape((-1,) + (1,) * (x.ndim - 1))
  return -(1.0 + col) * (x - 0.5)


def _draws(key, shape, eps=EPS):
  """t (B,) and z (B, ...) as ``get_sde_loss_fn`` draws them from ``key``, written from its
  documented key layout with plain jax.random calls: ``k_t, k_z, k_model = split(key, 3)``
  (``losses._split``), and example i draws from ``fold_in(k_t, i)`` and ``fold_in(k_z, i)``
  (``sde_jax.rng``: sample i's randomness comes from ``fold_in(key, i)``);
  ``t = U[0, 1) (T - eps) + eps``, z standard normal of the example's shape."""
  k_t, k_z, _ = jax.random.split(key, 3)
  index = jnp.arange(shape[0], dtype=jnp.uint32)
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k_t, i), ()))(index)
  z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_z, i), shape[1:]))(index)
  return u * (1.0 - eps) + eps, z


def _weighted_losses(name, batch, t, z, reduce_mean, weight):
  """Per-example ``weight(t) * reduce((s(x_t, t) + z / std)^2)`` in float64 from the paper's
  kernel (tests/gaussian.py): ``x_t = m(t) x_0 + std(t) z``, reduce the mean over the data
  dimensions or half their sum."""
  batch, t, z = (np.asarray(a, np.float64) for a in (batch, t, z))
  m, std = gaussian.mean_std(name, t)
  col = lambda a: a.reshape((-1,) + (1,) * (batch.ndim - 1))
  x_t = col(m) * batch + col(std) * z
  sq = ((_affine_score(None, x_t, t) + z / col(std))**2).reshape(len(t), -1)
  reduced = sq.mean(axis=1) if reduce_mean else 0.5 * sq.sum(axis=1)
  return weight * reduced




def _level_score(table_fn):
  """Exact score at discrete level floor(t (N - 1)), given (mean scale, std) per level."""
  def score_fn(params, x, t, key=None):
    i = jnp.floor(t * 999).astype(jnp.int32)
    m, std = table_fn(i)
    v = m**2 * S2 + std**2
    return -(x - (m * MU)[:, None]) / v[:, None] * params

  return score_fn






class ClosedFormTest(chex.TestCase):
  """The losses, jitted and eager, against their analytic values."""

  @JIT_AND_EAGER
  @EACH_SDE
  def test_continuous_loss_at_exact_score_is_analytic_minimum(self, name):
    loss_fn = self.variant(losses.get_sde_loss_fn(SDES[name], _continuous_score(name)))
    batch = _data(jax.random.key(0))
    loss, aux = loss_fn({'scale': 1.0}, jax.random.key(1), batch)
    chex.assert_shape(aux['per_example'], (BATCH,))
    _within_standard_errors(loss, aux['per_example'], _expected_continuous(name, False))
    # It is a minimum: scaling the exact score up or down costs more (same random numbers).
    for scale in (0.9, 1.1):
      assert loss_fn({'scale': scale}, jax.random.key(1), batch)[0] > loss

  @JIT_AND_EAGER
  @EACH_SDE
  def test_likelihood_weighted_loss_value(self, name):
    """The loss with likelihood weighting at a wrong score, against its value computed here.

    Song et al. (2021b): the weight is ``lambda(t) = g(t)^2`` (in place of ``std^2``), i.e.
    ``beta(t)`` for VP, ``beta(t) (1 - exp(-2 int_0^t beta))`` for sub-VP and
    ``sigma(t)^2 2 log(sigma_max / sigma_min)`` for VE (``_g2``, from the paper's definitions,
    not from ``sde.sde``). t comes from the loss's aux; z is drawn again from the same key with
    the key layout the code documents (``_draws``), and the x_t the score function sees (passed
    out by a debug callback, jitted or not) confirms it.

    Tolerance: float32 arithmetic in the library (about ten roundings of 6e-8 on each example's
    terms, none cancelling: the wrong score never offsets z / std) against float64 here: rtol
    2e-5. The weightings a mistake would give differ by far more (checked below). Both
    reductions (mean, half sum) are one program, so that the jitted variant compiles once.
    """
    batch = MU + np.sqrt(S2) * jax.random.normal(jax.random.key(10), SHAPE)
    key = jax.random.key(11)
    seen = []

    def recording_score(params, x, t, key=None):
      jax.debug.callback(lambda x: seen.append(np.asarray(x, np.float64)), x)
      return _affine_score(params, x, t, key)

    loss_fns = [losses.get_sde_loss_fn(SDES[name], recording_score, reduce_mean=reduce_mean,
                                       likelihood_weighting=True) for reduce_mean in (True, False)]
    results = self.variant(lambda key, batch: [fn(None, key, batch) for fn in loss_fns])(
        key, batch)
    jax.effects_barrier()
    t, z = _draws(key, SHAPE)
    if self.variant.type == chex.ChexVariantType.WITHOUT_JIT:
      np.testing.assert_array_equal(results[0][1]['t'], t)
    else:  # XLA may fuse u (T - eps) + eps into one multiply-add: one rounding fewer
      np.testing.assert_array_max_ulp(results[0][1]['t'], t, maxulp=1)
    t64 = np.asarray(t, np.float64)
    m, std = gaussian.mean_std(name, t64)
    col = lambda a: a.reshape((-1, 1, 1))
    assert len(seen) == 2
    for x_t in seen:
      np.testing.assert_allclose(x_t, col(m) * np.asarray(batch, np.float64)
                                 + col(std) * np.asarray(z, np.float64), rtol=1e-5, atol=1e-5)

    for reduce_mean, (loss, aux) in zip((True, False), results):
      np.testing.assert_array_equal(aux['t'], results[0][1]['t'])
      expected = _weighted_losses(name, batch, t, z, reduce_mean, _g2(name, t64))
      np.testing.assert_allclose(aux['per_example'], expected, rtol=2e-5)
      np.testing.assert_allclose(loss, expected.mean(), rtol=2e-5)

      # The test tells the right weighting from the wrong ones: std^2 (no likelihood weighting),
      # VP's beta for sub-VP (or sub-VP's discount for VP), a missing 1/2 or mean.
      wrong = [_weighted_losses(name, batch, t, z, reduce_mean, std**2)]
      if name != 'vesde':
        other = 'subvpsde' if name == 'vpsde' else 'vpsde'
        wrong.append(_weighted_losses(name, batch, t, z, reduce_mean, _g2(other, t64)))
      wrong.append(_weighted_losses(name, batch, t, z, not reduce_mean, _g2(name, t64)))
      for values in wrong:
        assert np.max(np.abs(values / expected - 1)) > 100 * 2e-5

  @JIT_AND_EAGER
  def test_smld_loss_at_exact_score(self):
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
    score = _level_score(lambda i: (jnp.ones_like(i, jnp.float32), jnp.asarray(sigmas)[i]))
    loss_fn = self.variant(losses.get_smld_loss_fn(sde_lib.VESDE(), score, reduce_mean=True))
    batch = _data(jax.random.key(6))
    loss, aux = loss_fn(1.0, jax.random.key(7), batch)
    expected = np.mean(S2 / (S2 + sigmas**2))
    _within_standard_errors(loss, aux['per_example'], expected)
    assert loss_fn(1.1, jax.random.key(7), batch)[0] > loss
    # reduce_mean=False: half the sum over the DIM dimensions.
    loss_sum_fn = self.variant(losses.get_smld_loss_fn(sde_lib.VESDE(), score, reduce_mean=False))
    np.testing.assert_allclose(loss_sum_fn(1.0, jax.random.key(7), batch)[0], 0.5 * DIM * loss,
                               rtol=1e-5)

  @JIT_AND_EAGER
  def test_ddpm_loss_at_exact_score(self):
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    abar = np.cumprod(1 - betas)
    score = _level_score(lambda i: (jnp.sqrt(jnp.asarray(abar, jnp.float32))[i],
                                    jnp.sqrt(1 - jnp.asarray(abar, jnp.float32))[i]))
    loss_fn = self.variant(losses.get_ddpm_loss_fn(sde_lib.VPSDE(), score))
    loss, aux = loss_fn(1.0, jax.random.key(9), _data(jax.random.key(8)))
    expected = np.mean(abar * S2 / (abar * S2 + 1 - abar))
    _within_standard_errors(loss, aux['per_example'], expected)
    assert loss_fn(0.9, jax.random.key(9), _data(jax.random.key(8)))[0] > loss


def test_discrete_levels_round_trip():
  """The time handed to the score function for level i maps back to i in both conventions."""
  for sde in (sde_lib.VESDE(N=1000), sde_lib.VPSDE(N=1000), sde_lib.VPSDE(N=2000)):
    levels = jnp.arange(sde.N)
    t = losses.level_times(sde, levels)
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
