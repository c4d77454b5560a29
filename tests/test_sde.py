"""SDEs against closed forms (tests/gaussian.py and the paper's f, g below), numpy tables and
simulation.

Every method of the three SDEs (``sde``, ``marginal_prob``, ``prior_sampling``, ``prior_logp``,
``discretize``, ``reverse``) runs under ``chex.variants``: once jitted and once eagerly
(:class:`ClosedFormTest`), on a handful of values.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import stats

from sde_jax import sde as sde_lib
from tests import gaussian

SDES = {'vesde': sde_lib.VESDE(), 'vpsde': sde_lib.VPSDE(), 'subvpsde': sde_lib.SubVPSDE()}
NAMES = sorted(SDES)
# Each test of ClosedFormTest runs once per SDE name (and then per chex variant).
EACH_SDE = parameterized.named_parameters((name, name) for name in NAMES)
# Jitted and eager: chex.variants makes one test of each, and self.variant(fn) is fn jitted or not.
JIT_AND_EAGER = chex.variants(with_jit=True, without_jit=True)


def _col(a, ndim):
  """(B,) -> (B, 1, ..., 1) with ndim axes."""
  return np.reshape(a, (-1,) + (1,) * (ndim - 1))


def _drift_diffusion(name, x, t):
  """The paper's ``f(x, t) = c(t) x`` and ``g(t)`` in float64 (tests/gaussian.py)."""
  x = np.asarray(x, np.float64)
  c, g = gaussian.sde_coefficients(name, t)
  return _col(c, x.ndim) * x, g


def _discrete_step(name, x, t, n=1000):
  """``(f_i, G_i)`` of one step ``x_{i+1} = x_i + f_i + G_i z`` of the discrete chain at level
  ``i = floor(t (n - 1))``, float64: SMLD ``G_i = sqrt(sigma_i^2 - sigma_{i-1}^2)``
  (``sigma_{-1} = 0``), DDPM ``f_i = (sqrt(1 - beta_i) - 1) x``, ``G_i = sqrt(beta_i)``, and
  Euler–Maruyama with ``dt = 1 / n`` for sub-VP."""
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
  level = np.floor(t * (n - 1)).astype(int)
  if name == 'vesde':
    sigmas = np.exp(np.linspace(np.log(gaussian.SIGMA_MIN), np.log(gaussian.SIGMA_MAX), n))
    previous = np.where(level == 0, 0.0, sigmas[np.maximum(level - 1, 0)])
    return np.zeros_like(x), np.sqrt(sigmas[level]**2 - previous**2)
  if name == 'vpsde':
    beta = np.linspace(gaussian.BETA_MIN / n, gaussian.BETA_MAX / n, n)[level]
    return (np.sqrt(1 - _col(beta, x.ndim)) - 1) * x, np.sqrt(beta)
  f, g = _drift_diffusion(name, x, t)
  return f / n, g / np.sqrt(n)


class ClosedFormTest(chex.TestCase):
  """Each SDE method, jitted and eager, against its closed form."""

  @JIT_AND_EAGER
  @EACH_SDE
  def test_marginal_prob(self, name):
    t = jnp.linspace(1e-5, 1.0, 7)
    x = jnp.tile(jnp.array([[1.5, -0.5]]), (7, 1))
    mean, std = self.variant(SDES[name].marginal_prob)(x, t)
    m, s = gaussian.mean_std(name, np.asarray(t, np.float64))
    chex.assert_shape(std, (7,))
    np.testing.assert_allclose(std, s, rtol=1e-5)
    np.testing.assert_allclose(mean, m[:, None] * np.asarray(x), rtol=1e-5)

  @JIT_AND_EAGER
  @EACH_SDE
  def test_sde(self, name):
    x = jax.random.normal(jax.random.key(3), (4, 2, 2, 1))
    t = jnp.array([1e-3, 0.3, 0.7, 1.0])
    drift, diffusion = self.variant(SDES[name].sde)(x, t)
    f, g = _drift_diffusion(name, x, t)
    chex.assert_shape([drift, diffusion], [x.shape, (4,)])
    np.testing.assert_allclose(drift, f, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diffusion, g, rtol=1e-5)

  @JIT_AND_EAGER
  @EACH_SDE
  def test_discretize_and_alpha(self, name):
    sde = SDES[name]
    t = jnp.array([0.0, 0.3, 0.5, 1.0])
    x = jax.random.normal(jax.random.key(4), (4, 2, 2, 1))
    f, g = self.variant(sde.discretize)(x, t)
    f_i, g_i = _discrete_step(name, x, t)
    np.testing.assert_allclose(f, f_i, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g, g_i, rtol=1e-4, atol=1e-8)
    # The DDPM alpha_i = 1 - beta_i (sub-VP has VP's tables) that the Langevin correctors use.
    level = np.floor(np.asarray(t, np.float64) * 999).astype(int)
    betas = np.linspace(gaussian.BETA_MIN / 1000, gaussian.BETA_MAX / 1000, 1000)
    alpha = np.ones(4) if name == 'vesde' else 1 - betas[level]
    np.testing.assert_allclose(self.variant(sde.alpha)(t), alpha, rtol=1e-6)

  @JIT_AND_EAGER
  @EACH_SDE
  def test_prior(self, name):
    sde = SDES[name]
    z = self.variant(lambda key: sde.prior_sampling(key, (4000, 3, 3, 1)))(jax.random.key(1))
    chex.assert_shape(z, (4000, 3, 3, 1))
    scale = gaussian.prior_std(name)
    assert abs(np.std(np.asarray(z)) / scale - 1) < 0.02  # 36000 draws: SE of std is 0.4%
    logp = self.variant(sde.prior_logp)(z[:5])
    expected = stats.norm.logpdf(np.asarray(z[:5], np.float64), scale=scale).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(logp, expected, rtol=1e-5)

  @JIT_AND_EAGER
  @parameterized.named_parameters((f'{name}_{kind}', name, kind == 'flow')
                                  for name in NAMES for kind in ('sde', 'flow'))
  def test_reverse(self, name, probability_flow):
    """``f - c g^2 score`` and ``g`` (or 0), ``c = 1`` (1/2 for the flow), for the SDE and for
    its discrete chain, with the score ``-2 x``.

    rtol 1e-4 for the chain, as in test_discretize_and_alpha: VE's ``sigma_i^2 - sigma_{i-1}^2``
    cancels in float32 (sigma_i^2 is ~120 times the difference: ~1e-5 relative, measured 1.5e-5).
    """
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(2), (3, 2, 2, 1))
    t = jnp.array([0.1, 0.5, 0.9])
    rsde = sde.reverse(lambda x, t: -2.0 * x, probability_flow)
    assert rsde.N == sde.N and rsde.T == sde.T
    c = 0.5 if probability_flow else 1.0
    x64 = np.asarray(x, np.float64)
    for method, forward, rtol in ((rsde.sde, _drift_diffusion, 1e-5),
                                  (rsde.discretize, _discrete_step, 1e-4)):
      drift, diffusion = self.variant(method)(x, t)
      f, g = forward(name, x, t)
      np.testing.assert_allclose(drift, f + c * _col(g, 4)**2 * 2 * x64, rtol=rtol, atol=1e-6)
      np.testing.assert_allclose(diffusion, 0.0 if probability_flow else g, rtol=rtol)


def _simulate_forward(sde, x0, t_end, n_steps, key):
  """Euler–Maruyama simulation of the forward SDE with n_steps on [0, t_end]."""
  dt = t_end / n_steps

  def step(x, i):
    t = jnp.full((x.shape[0],), i * dt)
    drift, diffusion = sde.sde(x, t)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
    return x + drift * dt + sde_lib.batch_mul(diffusion * jnp.sqrt(dt), z), None

  return jax.lax.scan(step, x0, jnp.arange(n_steps))[0]


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('t_end', [0.3, 1.0])
def test_marginal_prob_matches_simulation(name, t_end):
  """Moments of a fine Euler–Maruyama simulation agree with ``marginal_prob``.

  n = 40000 paths: the mean's standard error is std/200 and the variance's is var*sqrt(2/n)
  = 0.7% of var. We allow 5 standard errors plus 1% for the O(dt) bias of 4000 EM steps.
  The VE marginal of the original convention includes the sigma_min noise at t = 0, so VE paths
  start from x0 + sigma_min z.
  """
  sde = SDES[name]
  n = 40000
  x0 = jnp.full((n, 1), 1.5)
  key = jax.random.key(0)
  if name == 'vesde':
    x0 = x0 + sde.sigma_min * jax.random.normal(jax.random.fold_in(key, 10**6), x0.shape)
  xt = np.asarray(jax.jit(_simulate_forward, static_argnums=(2, 3))(sde, x0, t_end, 4000, key))
  mean, std = sde.marginal_prob(jnp.full((1, 1), 1.5), jnp.array([t_end]))
  mean, var = float(mean[0, 0]), float(std[0]) ** 2
  assert abs(xt.mean() - mean) < 5 * np.sqrt(var / n) + 0.01 * np.sqrt(var)
  assert abs(xt.var() - var) < 5 * var * np.sqrt(2 / n) + 0.01 * var


def test_vp_discrete_tables_match_ddpm():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
  abar = np.cumprod(1 - betas)
  np.testing.assert_allclose(sde.discrete_betas, betas, rtol=1e-5)
  np.testing.assert_allclose(sde.alphas_cumprod, abar, rtol=1e-4)
  np.testing.assert_allclose(sde.sqrt_1m_alphas_cumprod, np.sqrt(1 - abar), rtol=1e-4)
  # The discrete chain approximates the continuous mean scale at T: log(1 - b) = -b - b^2/2 - ...
  # leaves sum(b^2)/2 = 0.067 in the log, i.e. 3.3%.
  m_T, _ = gaussian.mean_std('vpsde', 1.0)
  np.testing.assert_allclose(np.sqrt(abar[-1]), m_T, rtol=0.04)




def test_ve_discretize_is_smld_chain():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  np.testing.assert_allclose(sde.discrete_sigmas, sigmas, rtol=1e-5)
  t = jnp.array([0.0, 1 / 9 + 1e-4, 1.0])
  f, g = sde.discretize(jnp.ones((3, 4)), t)
  expected = np.sqrt(sigmas[[0, 1, 9]] ** 2 - np.array([0.0, sigmas[0], sigmas[8]]) ** 2)
  np.testing.assert_allclose(g, expected, rtol=1e-5)
  np.testing.assert_array_equal(f, 0.0)






@pytest.mark.parametrize('name', NAMES)
def test_sdes_are_pytrees(name):
  sde = SDES[name]
  leaves, treedef = jax.tree_util.tree_flatten(sde)
  assert all(isinstance(leaf, float) for leaf in leaves)
  rebuilt = jax.tree_util.tree_unflatten(treedef, [2 * leaf for leaf in leaves])
  assert type(rebuilt) is type(sde) and rebuilt.N == sde.N
  # Passed through jit as an argument: leaves become tracers, N stays static.
  std = jax.jit(lambda s, t: s.marginal_prob(jnp.zeros_like(t), t)[1])(sde, jnp.array([0.5]))
  np.testing.assert_allclose(std, gaussian.mean_std(name, np.array([0.5]))[1], rtol=1e-5)
  hash(sde)
  with pytest.raises(Exception):
    sde.N = 5  # frozen


def _config(name, **model):
  config = ml_collections.ConfigDict({
      'training': {'sde': name},
      'model': {'sigma_min': 0.02, 'sigma_max': 30.0, 'beta_min': 0.2, 'beta_max': 10.0,
                'num_scales': 100, **model}})
  return config


@pytest.mark.parametrize('name,cls', [('vesde', sde_lib.VESDE), ('vpsde', sde_lib.VPSDE),
                                      ('subvpsde', sde_lib.SubVPSDE)])
def test_from_config(name, cls):
  sde = sde_lib.from_config(_config(name))
  assert type(sde) is cls and sde.N == 100
  if cls is sde_lib.VESDE:
    assert (sde.sigma_min, sde.sigma_max) == (0.02, 30.0)
  else:
    assert (sde.beta_min, sde.beta_max) == (0.2, 10.0)


def test_from_config_rejects_unknown_sde():
  with pytest.raises(ValueError, match="'vesdee'.*expected one of"):
    sde_lib.from_config(_config('vesdee'))
