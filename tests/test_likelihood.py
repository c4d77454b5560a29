"""Tests of sde_jax.likelihood against closed-form Gaussian likelihoods (tests/gaussian.py).

For Gaussian data ``N(mu, Sigma)`` the probability-flow map and every marginal density are
exact, so the library's ``(bpd, z)`` are checked against values computed here with numpy/scipy
in float64, independently of the library.

Solver tolerance used below: each accepted step of the adaptive solver keeps the local error of a
state component ``y`` below about ``atol + rtol |y|``. These solves take at most about 20 steps
(nfe <= 121), so we allow ``K = 20`` times that: ``tol_z = K (atol + rtol max_j |z_j|)``,
and for ``log p = prior_logp(z) + delta_logp`` the delta_logp bound plus the z errors propagated
through the prior's gradient ``|z| / sigma_prior^2``.

The divergence estimates (Hutchinson's and the exact one) run under ``chex.variants``, jitted and
eagerly (:class:`DivergenceTest`).
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import stats

from sde_jax import likelihood, rng
from sde_jax import sde as sde_lib
from tests import gaussian, helpers

EPS, RTOL, ATOL, K = 1e-5, 1e-5, 1e-5, 20
SDES = {'vpsde': sde_lib.VPSDE(), 'subvpsde': sde_lib.SubVPSDE(), 'vesde': sde_lib.VESDE()}
CENTERED = lambda x: (x + 1.0) / 2.0  # inverse scaler of [-1, 1] data: offset 7
UNCENTERED = lambda x: x  # inverse scaler of [0, 1] data: offset 8


def _gaussian(dim: int):
  """A Gaussian with correlated coordinates, so the drift's Jacobian has off-diagonal terms."""
  rs = np.random.default_rng(dim)
  a = rs.normal(size=(dim, dim)) * 0.4
  return rs.uniform(-0.5, 0.5, size=dim), a @ a.T + 0.05 * np.eye(dim)


def _score_fn(name, mean, cov, calls=None):
  """Exact score of N(mean, cov), one draw per example of any shape (tests/gaussian.py);
  ``params['scale']`` multiplies it (1 = exact).

  ``calls`` counts runtime evaluations (a debug callback).
  """
  return gaussian.score_fn(name, mean, cov, scaled=True, calls=calls)


def _gaussian_logpdf(name, mean, cov, x, t):
  m, s = gaussian.mean_std(name, np.float64(t))
  dist = stats.multivariate_normal(m * mean, m**2 * cov + s**2 * np.eye(len(mean)))
  return np.atleast_1d(dist.logpdf(x))


def _closed_form(name, mean, cov, x):
  """Exact ``z = phi_{eps -> T}(x)``, the solver's target logp, and ``|delta_logp|``, float64."""
  z = gaussian.flow_map(name, mean, cov, x, EPS, 1.0)
  logp_eps = _gaussian_logpdf(name, mean, cov, x, EPS)
  logp_t = _gaussian_logpdf(name, mean, cov, z, 1.0)
  prior = np.atleast_1d(
      stats.multivariate_normal(np.zeros(len(mean)), gaussian.prior_std(name)**2).logpdf(z))
  # The solver stops at T and uses the prior there, not p_T: its exact target is this.
  return z, logp_eps + prior - logp_t, np.abs(logp_eps - logp_t)


def _bpd(logp, dim, inverse_scaler):
  return -logp / (dim * np.log(2.0)) + 7.0 - inverse_scaler(-1.0)


def _data(mean, cov, batch, shape, seed=1):
  x = gaussian.GaussianMixture.single(mean, cov).sample(batch, seed=seed)
  return jnp.asarray(x.reshape((batch,) + shape), jnp.float32)


class DivergenceTest(chex.TestCase):
  """The divergence of the probability-flow drift, jitted and eager, against its closed form."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((name, name) for name in SDES)
  def test_hutchinson_and_exact_divergence(self, name):
    """For N(mu, S) data the flow's drift ``c x - g^2 score / 2`` at time t is affine in x:
    ``c x + g^2 A^{-1} (x - m mu) / 2`` with ``A = m^2 S + s^2 I``, so its Jacobian is
    ``J = c I + g^2 A^{-1} / 2``, the Hutchinson estimate with probe v is ``v^T J v`` and the
    divergence ``tr J``. The probes are the 8 sign vectors of {-1, 1}^3: their mean estimate is
    ``tr J`` exactly (``mean v v^T = I``), Hutchinson's unbiasedness."""
    mean, cov = _gaussian(3)
    t = 0.4
    x = jax.random.normal(jax.random.key(0), (8, 3))
    v = jnp.asarray(list(itertools.product([-1.0, 1.0], repeat=3)))
    score = functools.partial(gaussian.score_fn(name, mean, cov), None)
    flow = SDES[name].reverse(score, probability_flow=True)
    drift = lambda y: flow.sde(y, jnp.full((8,), t))[0]
    value, estimate = self.variant(
        lambda x, v: likelihood.hutchinson_divergence(drift, x, v))(x, v)
    exact_value, divergence = self.variant(lambda x: likelihood.exact_divergence(drift, x))(x)

    m, s = gaussian.mean_std(name, np.float64(t))
    c, g = gaussian.sde_coefficients(name, t)
    a_inv = np.linalg.inv(m**2 * cov + s**2 * np.eye(3))
    x64, v64 = np.asarray(x, np.float64), np.asarray(v, np.float64)
    expected_value = c * x64 + 0.5 * g**2 * (x64 - m * mean) @ a_inv
    jacobian = c * np.eye(3) + 0.5 * g**2 * a_inv
    expected_estimate = np.einsum('bi,ij,bj->b', v64, jacobian, v64)
    chex.assert_shape([value, estimate, exact_value, divergence], [(8, 3), (8,), (8, 3), (8,)])
    for got in (value, exact_value):
      np.testing.assert_allclose(got, expected_value, rtol=1e-5, atol=1e-6)
    # The sums cancel (VP's c < 0): float32 error relative to the sum of the terms' sizes.
    size, trace_size = np.sum(np.abs(jacobian)), np.trace(np.abs(jacobian))
    np.testing.assert_allclose(estimate, expected_estimate, rtol=0, atol=1e-5 * size)
    np.testing.assert_allclose(divergence, np.full(8, np.trace(jacobian)), rtol=0,
                               atol=1e-5 * trace_size)
    np.testing.assert_allclose(np.mean(np.asarray(estimate, np.float64)), np.trace(jacobian),
                               rtol=0, atol=1e-5 * size)
    assert np.ptp(expected_estimate) > 0.1 * abs(np.trace(jacobian))  # the probes differ


@pytest.mark.parametrize('name', list(SDES))
@pytest.mark.parametrize('shape, inverse_scaler', [((3,), UNCENTERED), ((2, 2, 1), CENTERED)],
                         ids=['vector-uncentered', 'image-centered'])
def test_exact_trace_matches_closed_form(name, shape, inverse_scaler):
  mean, cov = _gaussian(int(np.prod(shape)))
  data = _data(mean, cov, 4, shape)
  fn = likelihood.get_likelihood_fn(SDES[name], inverse_scaler, rtol=RTOL, atol=ATOL, eps=EPS,
                                    exact_trace=True)
  bpd, z, nfe = fn(jax.random.key(0), _score_fn(name, mean, cov), {'scale': 1.0}, data)
  chex.assert_shape(bpd, (4,))
  chex.assert_shape(z, data.shape)
  assert nfe <= 6 * K + 1  # the step count the tolerances below assume

  x = np.asarray(data, np.float64).reshape(4, -1)
  z_exact, logp_exact, delta = _closed_form(name, mean, cov, x)
  # The flow mixes coordinates, so a coordinate's error scales with the example's largest one.
  tol_z = np.broadcast_to(K * (ATOL + RTOL * np.abs(z_exact).max(axis=1, keepdims=True)),
                          z_exact.shape)
  np.testing.assert_array_less(np.abs(np.asarray(z).reshape(4, -1) - z_exact), tol_z)

  dim = x.shape[1]
  prior_grad = np.abs(z_exact) / gaussian.prior_std(name)**2
  tol_logp = K * (ATOL + RTOL * delta) + np.sum(prior_grad * tol_z, axis=1)
  np.testing.assert_array_less(np.abs(np.asarray(bpd) - _bpd(logp_exact, dim, inverse_scaler)),
                               tol_logp / (dim * np.log(2.0)))


@functools.cache
def _exact_trace_bpd(name):
  """bpd of the first of ``_data(_gaussian(4))`` with the exact divergence (shared by types)."""
  mean, cov = _gaussian(4)
  exact = likelihood.get_likelihood_fn(SDES[name], CENTERED, exact_trace=True)
  one = _data(mean, cov, 1, (2, 2, 1))
  return float(exact(jax.random.key(0), _score_fn(name, mean, cov), {'scale': 1.0}, one)[0][0])


@pytest.mark.parametrize('name', list(SDES))
@pytest.mark.parametrize('hutchinson_type', ['rademacher', 'gaussian'])
def test_hutchinson_is_unbiased(name, hutchinson_type):
  mean, cov = _gaussian(4)
  n_draws, score_fn = 200, _score_fn(name, mean, cov)
  one = _data(mean, cov, 1, (2, 2, 1))
  hutchinson = likelihood.get_likelihood_fn(SDES[name], CENTERED, hutchinson_type)
  reference = _exact_trace_bpd(name)
  # Identical copies of one x: example i draws its own probe from fold_in(key, i).
  copies = jnp.broadcast_to(one, (n_draws,) + one.shape[1:])
  draws = np.asarray(hutchinson(jax.random.key(1), score_fn, {'scale': 1.0}, copies)[0],
                     np.float64)

  std_err = draws.std(ddof=1) / np.sqrt(n_draws)
  assert std_err > 0  # the probes differ between examples
  _, _, delta = _closed_form(name, mean, cov, np.asarray(one, np.float64).reshape(1, -1))
  solver_tol = K * (ATOL + RTOL * delta[0]) / (4 * np.log(2.0))
  assert abs(draws.mean() - reference) < 4 * std_err + solver_tol


@pytest.mark.parametrize('hutchinson_type', ['rademacher', 'gaussian'])
def test_given_epsilon(hutchinson_type):
  mean, cov = _gaussian(4)
  data, key = _data(mean, cov, 3, (2, 2, 1)), jax.random.key(7)
  score_fn, params = _score_fn('vpsde', mean, cov), {'scale': 1.0}
  fn = likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED, hutchinson_type)
  draw = likelihood.HUTCHINSON_NOISE[hutchinson_type]
  epsilon = draw(rng.per_example_keys(key, 3), data.shape)

  first = fn(key, score_fn, params, data, epsilon=epsilon)
  chex.assert_trees_all_equal(first, fn(jax.random.key(99), score_fn, params, data, epsilon))
  # Without epsilon, the probe of example i is drawn from per_example_keys(key)[i].
  chex.assert_trees_all_close(first[0], fn(key, score_fn, params, data)[0], rtol=0, atol=1e-6)
  # Flip one coordinate of every probe (a sign flip of the whole probe would not change it).
  other = fn(key, score_fn, params, data, epsilon=epsilon.at[:, 0, 0, 0].multiply(-1.0))
  assert np.all(np.abs(np.asarray(other[0] - first[0])) > 1e-3)


def test_example_does_not_depend_on_its_batch():
  """Examples 2 and 3 of a batch of 4 == a batch of 2 starting at index 2.

  The solver's error norm spans the batch, so the step sequences differ and the results agree
  only to the solver tolerance; a probe that depended on the batch would move bpd by ~0.1.
  """
  mean, cov = _gaussian(4)
  data, key = _data(mean, cov, 4, (2, 2, 1)), jax.random.key(3)
  score_fn, params = _score_fn('vesde', mean, cov), {'scale': 1.0}
  fn = likelihood.get_likelihood_fn(SDES['vesde'], CENTERED)
  whole = fn(key, score_fn, params, data)[0]
  tail = fn(key, score_fn, params, data[2:], first_index=2)[0]
  _, _, delta = _closed_form('vesde', mean, cov, np.asarray(data, np.float64).reshape(4, -1))
  tol = K * (ATOL + RTOL * delta[2:]) / (4 * np.log(2.0))
  np.testing.assert_array_less(np.abs(np.asarray(whole[2:] - tail)), tol)
  # And the draw does use first_index: the same data at index 0 get other probes (any: two
  # +-1 probes in 4 dimensions coincide up to sign with probability 1/8).
  head = fn(key, score_fn, params, data[2:], first_index=0)[0]
  assert np.any(np.abs(np.asarray(head - tail)) > 1e-3)


@pytest.mark.parametrize('exact_trace', [False, True])
def test_nfe_counts_score_evaluations(exact_trace):
  mean, cov = _gaussian(4)
  calls = []
  score_fn = _score_fn('vesde', mean, cov, calls=calls)
  fn = likelihood.get_likelihood_fn(SDES['vesde'], CENTERED, exact_trace=exact_trace)
  data = _data(mean, cov, 2, (2, 2, 1))
  fn(jax.random.key(0), score_fn, {'scale': 1.0}, data)  # compile
  jax.effects_barrier()
  calls.clear()
  _, _, nfe = fn(jax.random.key(1), score_fn, {'scale': 1.0}, data)
  jax.effects_barrier()
  assert len(calls) > 7  # more than one step
  assert int(nfe) == len(calls)


def test_no_retrace_on_new_params_key_or_index():
  mean, cov = _gaussian(4)
  score_fn = chex.assert_max_traces(_score_fn('vpsde', mean, cov), 0)
  fn = likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED)
  data = _data(mean, cov, 2, (2, 2, 1))
  with helpers.first_compile():
    bpd = fn(jax.random.key(0), score_fn, {'scale': jnp.float32(1.0)}, data)[0]
  scaled = fn(jax.random.key(1), score_fn, {'scale': jnp.float32(0.5)}, data, first_index=5)[0]
  fn(jax.random.key(2), score_fn, {'scale': jnp.float32(2.0)}, data, None, 9)
  # params really are an input, not a constant baked into the program.
  assert np.all(np.abs(np.asarray(scaled - bpd)) > 1e-3)


def test_offset_follows_inverse_scaler():
  """Data in [0, 1] have 1 bit/dim more than the same density on [-1, 1] would give."""
  mean, cov = _gaussian(4)
  data, key = _data(mean, cov, 2, (2, 2, 1)), jax.random.key(0)
  score_fn, params = _score_fn('vpsde', mean, cov), {'scale': 1.0}
  centered = likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED)(key, score_fn, params, data)
  plain = likelihood.get_likelihood_fn(SDES['vpsde'], UNCENTERED)(key, score_fn, params, data)
  np.testing.assert_allclose(plain[0] - centered[0], 1.0, atol=1e-5)


def test_clear_errors():
  mean, cov = _gaussian(4)
  score_fn, data = _score_fn('vpsde', mean, cov), _data(mean, cov, 2, (2, 2, 1))
  with pytest.raises(ValueError, match='hutchinson_type'):
    likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED, hutchinson_type='Rademacher')
  with pytest.raises(ValueError, match='solver'):
    likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED, solver='euler')
  fn = likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED)
  with pytest.raises(ValueError, match='epsilon has shape'):
    fn(jax.random.key(0), score_fn, {'scale': 1.0}, data, epsilon=jnp.ones((2, 4)))
  exact = likelihood.get_likelihood_fn(SDES['vpsde'], CENTERED, exact_trace=True)
  with pytest.raises(ValueError, match='exact_trace'):
    exact(jax.random.key(0), score_fn, {'scale': 1.0}, data, epsilon=jnp.ones_like(data))


def test_uniform_dequantize_bins_and_batch_independence():
  levels = jnp.arange(256, dtype=jnp.float32).reshape(4, 8, 8, 1) / 255.0
  key, dequantize = jax.random.key(0), jax.jit(likelihood.uniform_dequantize)
  y = dequantize(key, levels)
  chex.assert_shape(y, levels.shape)
  chex.assert_type(y, jnp.float32)
  low = np.asarray(levels, np.float64) * 255.0 / 256.0
  offset = np.asarray(y, np.float64) - low  # u / 256 with u ~ U[0, 1)
  assert np.all(np.asarray(y) >= 0.0) and np.all(np.asarray(y) < 1.0)
  assert np.all(offset > -1e-6) and np.all(offset < 1.0 / 256.0 + 1e-6)
  u = offset.ravel() * 256.0
  assert abs(u.mean() - 0.5) < 4 * np.sqrt(1.0 / 12.0 / u.size)
  tail = dequantize(key, levels[2:], first_index=2)
  chex.assert_trees_all_equal(y[2:], tail)
  assert not np.allclose(dequantize(key, levels[2:]), tail)


def test_uniform_dequantize_stays_below_one(monkeypatch):
  """The largest U[0, 1) float32 would round 255 + u up to 256: the top bin must stay open."""
  top = lambda keys, shape, dtype: jnp.full(shape, jnp.nextafter(1.0, 0.0), dtype)
  monkeypatch.setattr(rng, 'uniform', top)
  y = likelihood.uniform_dequantize(jax.random.key(0), jnp.ones((2, 3), jnp.float32))
  assert np.all(np.asarray(y) < 1.0) and np.all(np.asarray(y) > 255.0 / 256.0)
