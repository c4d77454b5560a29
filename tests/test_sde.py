"""SDEs against closed forms (tests/gaussian.py), numpy tables and simulation."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from sde_jax import sde as sde_lib
from tests import gaussian

SDES = {'vesde': sde_lib.VESDE(), 'vpsde': sde_lib.VPSDE(), 'subvpsde': sde_lib.SubVPSDE()}
NAMES = sorted(SDES)


@pytest.mark.parametrize('name', NAMES)
def test_marginal_prob_matches_closed_form(name):
  sde = SDES[name]
  t = jnp.linspace(1e-5, 1.0, 7)
  x = jnp.tile(jnp.array([[1.5, -0.5]]), (7, 1))
  mean, std = jax.jit(sde.marginal_prob)(x, t)
  m, s = gaussian.mean_std(name, np.asarray(t, np.float64))
  np.testing.assert_allclose(std, s, rtol=1e-5)
  np.testing.assert_allclose(mean, m[:, None] * np.asarray(x), rtol=1e-5)
  chex.assert_shape(std, (7,))


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


@pytest.mark.parametrize('name', ['vpsde', 'subvpsde'])
def test_vp_discretize_and_alpha(name):
  sde = SDES[name]
  t = jnp.array([0.0, 0.5, 1.0])
  x = jnp.ones((3, 2, 2, 1))
  i = np.floor(np.asarray(t) * 999).astype(int)
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
  np.testing.assert_allclose(sde.alpha(t), 1 - betas[i], rtol=1e-6)
  f, g = sde.discretize(x, t)
  if name == 'vpsde':  # DDPM form
    np.testing.assert_allclose(f[:, 0, 0, 0], np.sqrt(1 - betas[i]) - 1, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g, np.sqrt(betas[i]), rtol=1e-5)
  else:  # Euler–Maruyama with dt = 1/N
    beta_t = 0.1 + np.asarray(t) * 19.9
    np.testing.assert_allclose(f[:, 0, 0, 0], -0.5 * beta_t / 1000, rtol=1e-5)
    disc = 1 - np.exp(-2 * 0.1 * np.asarray(t) - 19.9 * np.asarray(t) ** 2)
    np.testing.assert_allclose(g, np.sqrt(beta_t * disc / 1000), rtol=1e-4, atol=1e-8)


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
def test_prior(name):
  sde = SDES[name]
  z = sde.prior_sampling(jax.random.key(1), (4000, 3, 3, 1))
  scale = gaussian.prior_std(name)
  assert abs(np.std(np.asarray(z)) / scale - 1) < 0.02  # 36000 draws: SE of std is 0.4%
  logp = sde.prior_logp(z[:5])
  expected = stats.norm.logpdf(np.asarray(z[:5], np.float64), scale=scale).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(logp, expected, rtol=1e-5)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('probability_flow', [False, True])
def test_reverse(name, probability_flow):
  sde = SDES[name]
  x = jax.random.normal(jax.random.key(2), (3, 2, 2, 1))
  t = jnp.array([0.1, 0.5, 0.9])
  score = lambda x, t: -2.0 * x  # noqa: E731
  rsde = sde.reverse(score, probability_flow)
  drift, diffusion = rsde.sde(x, t)
  f, g = sde.sde(x, t)
  c = 0.5 if probability_flow else 1.0
  np.testing.assert_allclose(drift, f + c * np.asarray(g)[:, None, None, None]**2 * 2 * x,
                             rtol=1e-5)
  np.testing.assert_allclose(diffusion, 0.0 if probability_flow else g)
  fd, gd = sde.discretize(x, t)
  rf, rg = rsde.discretize(x, t)
  np.testing.assert_allclose(rf, fd + c * np.asarray(gd)[:, None, None, None]**2 * 2 * x,
                             rtol=1e-5)
  np.testing.assert_allclose(rg, 0.0 if probability_flow else gd)
  assert rsde.N == sde.N and rsde.T == sde.T


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
