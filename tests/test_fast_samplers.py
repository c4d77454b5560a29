"""Tests of the fast samplers (DPM-Solver++, EDM Heun, adaptive SDE) against closed-form Gaussian
data N(MEAN, COV).

For Gaussian data the perturbed marginals, the score and the probability-flow map are exact
(``tests.gaussian``, written from the paper's equations): the deterministic samplers are compared
with the exact solution of the ODE, and their convergence order is measured as the slope of
log(error) against log(NFE); the stochastic sampler is compared with the exact moments.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sde_jax import sampling
from sde_jax import sde as sde_lib
from sde_jax.sampling import dpm_solver, heun, schedules
from tests import gaussian, helpers

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
SDES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.SubVPSDE}
EPS = 1e-3
# Small shapes on purpose (the adaptive solver's low-dimension warning is tested on its own).
LOW_DIM = pytest.mark.filterwarnings('ignore:method=.adaptive_sde. accepts or rejects')


def gaussian_score(name: str, **options):
  """Exact score of N(MEAN, COV) under the SDE ``name`` for x of shape (B, ..., 2), any float
  dtype (tests/gaussian.py)."""
  return gaussian.score_fn(name, MEAN, COV, **options)


def tweedie(name, x, t):
  """Closed-form ``E[x_0 | x_t = x]`` for N(MEAN, COV) data (numpy, float64)."""
  m, s = gaussian.mean_std(name, np.float64(t))
  cov_t = m**2 * COV + s**2 * np.eye(2)
  return MEAN + (m * COV @ np.linalg.solve(cov_t, (x - m * MEAN).T)).T


def prior_draw(name, batch, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, 2)) * gaussian.prior_std(name)


# --- Schedules -----------------------------------------------------------------------------------

def log_snr(name, t):
  m, s = gaussian.mean_std(name, np.asarray(t, np.float64))
  return np.log(m / s)


@pytest.mark.parametrize('name', list(SDES))
def test_logsnr_grid_is_uniform_in_lambda(name):
  ts = np.asarray(schedules.time_grid(SDES[name](), 'logsnr', 8, EPS), np.float64)
  assert ts[0] == 1.0 and ts[-1] == np.float32(EPS)
  lam = log_snr(name, ts)
  np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 8, rtol=1e-4)


def test_time_grids_and_karras_sigmas():
  sde = sde_lib.VPSDE()
  frac = np.linspace(0, 1, 5)
  np.testing.assert_allclose(schedules.time_grid(sde, 'time_uniform', 4, EPS),
                             1 + frac * (EPS - 1), rtol=1e-6)
  np.testing.assert_allclose(schedules.time_grid(sde, 'time_quadratic', 4, EPS),
                             (1 + frac * (EPS**0.5 - 1))**2, rtol=1e-6)
  sig = np.asarray(schedules.karras_sigmas(80.0, 0.002, 4, 7.0), np.float64)
  np.testing.assert_allclose(sig**(1 / 7), 80**(1 / 7) + frac * (0.002**(1 / 7) - 80**(1 / 7)),
                             rtol=1e-5)


@pytest.mark.parametrize('name', list(SDES))
def test_time_at_log_snr_inverts_lambda(name):
  ts = np.array([2e-3, 0.05, 0.3, 0.9])
  found = schedules.time_at_log_snr(SDES[name](), jnp.asarray(log_snr(name, ts), jnp.float32),
                                    EPS)
  np.testing.assert_allclose(found, ts, rtol=1e-4)


# --- Single steps against their formulas ---------------------------------------------------------

def test_phi_functions():
  """Against the series ``phi_k = sum_{j >= k} (-1)^(j - k) h^j / j!`` (float64), to the
  float32 round-off of h."""
  h = np.array([1e-4, 1e-2, 0.1, 0.5, 2.0])
  series = lambda k: sum((-1.0)**(j - k) * h**j / math.factorial(j) for j in range(k, k + 30))
  phis = dpm_solver.phi_functions(jnp.asarray(h, jnp.float32))
  for k, phi in enumerate(phis, start=1):
    err = np.abs(np.asarray(phi, np.float64) - series(k))
    assert np.all(err <= 1e-5 * series(k) + 3e-7 * h), (k, err)


@pytest.mark.parametrize('name', list(SDES))
def test_dpm_solver_one_step_is_ddim(name):
  """One step T -> eps: ``x = (s_e / s_T) z + m_e (1 - exp(-h)) D(z, T)`` (first order)."""
  z = prior_draw(name, 8)
  with jax.enable_x64(True):  # a step from T to eps is ill-conditioned in float32
    sampler = sampling.get_dpm_solver_sampler(SDES[name](), (8, 2), nfe=1, order=3, eps=EPS)
    x, nfe = sampler(jax.random.key(0), gaussian_score(name), None, z=jnp.asarray(z))
  (m_t, s_t), (m_e, s_e) = (gaussian.mean_std(name, np.float64(t)) for t in (1.0, EPS))
  h = np.log(m_e / s_e) - np.log(m_t / s_t)
  expected = s_e / s_t * z + m_e * -np.expm1(-h) * tweedie(name, z, 1.0)
  np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-9)
  assert nfe == 1


@pytest.mark.parametrize('name', list(SDES))
def test_heun_one_step_formula(name):
  """One Heun step in ``y = x / m``, ``sigma = s / m`` from T to eps, then ``x = m_e y``."""
  z = prior_draw(name, 8)
  with jax.enable_x64(True):  # a step from T to eps is ill-conditioned in float32
    sampler = sampling.get_heun_sampler(SDES[name](), (8, 2), nfe=2, denoise=False, eps=EPS)
    x, nfe = sampler(jax.random.key(0), gaussian_score(name), None, z=jnp.asarray(z))
  (m_t, s_t), (m_e, s_e) = (gaussian.mean_std(name, np.float64(t)) for t in (1.0, EPS))
  sig_t, sig_e = s_t / m_t, s_e / m_e
  y0 = z / m_t
  d0 = (y0 - tweedie(name, z, 1.0)) / sig_t
  y1 = y0 + (sig_e - sig_t) * d0
  d1 = (y1 - tweedie(name, m_e * y1, EPS)) / sig_e
  expected = m_e * (y0 + (sig_e - sig_t) * 0.5 * (d0 + d1))
  np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-9)
  assert nfe == 2


def test_step_orders():
  assert dpm_solver.step_orders(6, 3, True) == [1, 2, 3, 3, 2, 1]
  assert dpm_solver.step_orders(6, 2, False) == [1, 2, 2, 2, 2, 2]
  assert dpm_solver.step_orders(20, 3, True)[-3:] == [3, 3, 3]
  assert heun.heun_step_counts(35, True) == (0, 17)
  assert heun.heun_step_counts(10, True) == (1, 4)


# --- Convergence order against the exact probability-flow map ------------------------------------

# (method, options, expected order). NFE doubles, so the step halves: the slope of log(error)
# against log(NFE) is minus the order. 3M on its log-SNR grid is checked separately below.
ORDER_CASES = [
    ('dpm_solver++', dict(order=2, schedule='logsnr'), 2),
    ('dpm_solver++', dict(order=3, schedule='time_quadratic'), 3),
    ('heun', dict(denoise=False), 2),
]
ORDER_NFE = (80, 160)
# Measured slopes (float64, NFE 80 -> 160; 16 samples): 2M 2.01-2.02, 3M 3.08-3.24, Heun
# 2.03-2.04; the pre-asymptotic terms of 3M decay as one more power of h. A first-order mistake
# (a wrong divided difference, a wrong phi coefficient, an evaluation at the wrong time) gives
# slope ~1 (~2 for 3M).
ORDER_TOL = 0.3


def flow_errors(name, method, options, nfes, batch=16):
  """RMS distance to the exact flow map T -> eps of the same prior draws, per NFE (float64)."""
  z = prior_draw(name, batch)
  exact = gaussian.flow_map(name, MEAN, COV, z, 1.0, EPS)
  errors = []
  with jax.enable_x64(True):  # float32 round-off (~1e-7 relative) would mask errors of ~1e-6
    for nfe in nfes:
      sampler = sampling.get_sampler(method, SDES[name](), (batch, 2), nfe=nfe, eps=EPS,
                                     **options)
      x, spent = sampler(jax.random.key(0), gaussian_score(name), None, z=jnp.asarray(z))
      assert x.dtype == jnp.float64 and spent == nfe
      errors.append(np.sqrt(np.mean((np.asarray(x) - exact)**2)))
  return np.array(errors)


def slope(nfes, errors):
  """Least-squares order: ``-d log(error) / d log(nfe)``."""
  return -np.polyfit(np.log(nfes), np.log(errors), 1)[0]


@pytest.mark.parametrize('name', list(SDES))
@pytest.mark.parametrize('method,options,order', ORDER_CASES)
def test_convergence_order(name, method, options, order):
  errors = flow_errors(name, method, options, ORDER_NFE)
  measured = slope(ORDER_NFE, errors)
  assert abs(measured - order) <= ORDER_TOL, (errors, measured)
  assert errors[-1] < 1e-2, errors  # converges to the exact map, not merely at some rate


def test_dpm_solver_3m_logsnr_at_least_third_order():
  """3M on the log-SNR grid converges faster than h^3 on Gaussian data: along a trajectory
  ``D(lambda) - MEAN`` is proportional to ``w = (c + exp(-2 lambda))^(-1/2)``, and the h^3
  term of the global error is ``~ int w w''' d lambda = [w w'' - w'^2 / 2]``, a boundary term
  ~1e-4 of its size for general data; the measured slope is ~4. It must be at least 3."""
  errors = flow_errors('vpsde', 'dpm_solver++', dict(order=3), ORDER_NFE)
  assert slope(ORDER_NFE, errors) >= 3 - ORDER_TOL, errors


# --- Evaluations actually spent ------------------------------------------------------------------

@pytest.mark.parametrize('method,nfe,options', [
    ('dpm_solver++', 7, dict(order=3, denoise=True)),
    ('heun', 7, dict(denoise=True)),   # 3 Heun steps + denoise
    ('heun', 6, dict(denoise=True)),   # 1 Euler + 2 Heun + denoise
    ('heun', 5, dict(denoise=False, churn=5.0)),
])
def test_fixed_step_nfe_is_the_budget(method, nfe, options):
  calls = []
  score = gaussian_score('vpsde', calls=calls)
  sampler = sampling.get_sampler(method, sde_lib.VPSDE(), (4, 2), nfe=nfe, **options)
  x, spent = sampler(jax.random.key(0), score, None)
  jax.effects_barrier()
  assert spent == nfe == len(calls)
  chex.assert_tree_all_finite(x)


@LOW_DIM
def test_adaptive_nfe_counts_real_evaluations():
  calls = []
  score = gaussian_score('vesde', calls=calls)
  sampler = sampling.get_adaptive_sde_sampler(sde_lib.VESDE(), (4, 2), rtol=0.1)
  _, spent = sampler(jax.random.key(0), score, None)
  jax.effects_barrier()
  assert int(spent) == len(calls) > 3


# --- Sample quality: the stochastic samplers recover N(MEAN, COV) -------------------------------

def assert_moments(x, bias, z=4.0):
  """Sample mean and covariance of n pairs within ``z`` standard errors plus ``bias``.

  ``SE(mean_k) = sqrt(C_kk / n)``, ``SE(S_ij) = sqrt((C_ij^2 + C_ii C_jj) / n)`` for Gaussian
  data; z = 4 keeps a false failure of a correct sampler below 1e-3 over these few tests.
  """
  pairs = np.asarray(x, np.float64).reshape(-1, 2)
  n = len(pairs)
  tol_mean = z * np.sqrt(np.diag(COV) / n) + bias
  tol_cov = z * np.sqrt((COV**2 + np.outer(np.diag(COV), np.diag(COV))) / n) + bias
  assert np.all(np.abs(pairs.mean(0) - MEAN) <= tol_mean), (pairs.mean(0), tol_mean)
  assert np.all(np.abs(np.cov(pairs.T) - COV) <= tol_cov), (np.cov(pairs.T), tol_cov)


# Measured on 32768 pairs (two seeds) at rtol 0.01 and 0.05: |mean error| <= 0.01 and
# |covariance error| <= 0.017, i.e. within the sampling noise of that size (SE 0.008). We allow
# 0.02 of systematic error on top of 4 standard errors; a first-order slip in the drift (e.g. the
# probability-flow 1/2 on g^2, or no extrapolation) moves the covariance by 0.1 or more.
ADAPTIVE_BIAS = 0.02


@pytest.mark.parametrize('name', list(SDES))
def test_adaptive_sde_recovers_gaussian(name):
  """(64, 64, 2): every example holds 64 independent pairs, 4096 pairs in all."""
  eps = 1e-5 if name == 'vesde' else EPS
  sampler = sampling.get_adaptive_sde_sampler(SDES[name](), (64, 64, 2), rtol=0.05, eps=eps)
  x, nfe = sampler(jax.random.key(1), gaussian_score(name), None)
  chex.assert_shape(x, (64, 64, 2))
  chex.assert_tree_all_finite(x)
  assert 20 < int(nfe) < 1000
  assert_moments(x, ADAPTIVE_BIAS)


def test_heun_churn_recovers_gaussian():
  """With churn the sampler is stochastic (the key matters even for a given prior draw), and its
  law is still N(MEAN, COV) up to discretisation. Churn lengthens every step (up to
  sigma_hat = 1.41 sigma_i and back down), so it needs more steps than the deterministic
  sampler: measured on 8192 pairs (VE, churn 20), the covariance error is 0.22 at 35 NFE, 0.04 at
  101 and 0.012 at 301; at 201 NFE we allow 0.03."""
  sampler = sampling.get_heun_sampler(sde_lib.VESDE(), (4096, 2), nfe=201, churn=20.0,
                                      s_tmin=0.05, s_tmax=10.0, eps=1e-5)
  z = jnp.asarray(prior_draw('vesde', 4096), jnp.float32)
  x, _ = sampler(jax.random.key(0), gaussian_score('vesde'), None, z=z)
  x_other, _ = sampler(jax.random.key(1), gaussian_score('vesde'), None, z=z)
  assert np.mean(np.abs(np.asarray(x) - np.asarray(x_other))) > 0.05
  assert_moments(x, 0.03)


@LOW_DIM
def test_adaptive_sde_sample_independent_of_batch():
  """Per-example errors, steps and keys: the first samples of a larger batch are the same."""
  sde = sde_lib.VPSDE()
  score = gaussian_score('vpsde')
  key = jax.random.key(11)
  x8, n8 = sampling.get_adaptive_sde_sampler(sde, (8, 4, 2))(key, score, None)
  x3, _ = sampling.get_adaptive_sde_sampler(sde, (3, 4, 2))(key, score, None, first_index=5)
  chex.assert_trees_all_close(x3, x8[5:], atol=1e-4)
  assert not np.allclose(np.asarray(x8[0]), np.asarray(x8[1]))


def test_adaptive_sde_warns_in_low_dimension():
  with pytest.warns(UserWarning, match='under-dispersed'):
    sampling.get_adaptive_sde_sampler(sde_lib.VPSDE(), (8, 2))


@pytest.mark.parametrize('method', ['dpm_solver++', 'heun'])
def test_deterministic_samplers_draw_prior_per_example(method):
  """The prior is drawn per example (``fold_in(k_i, 0)``, as in the PC sampler) and the ODE map
  acts on each example alone, so a sample does not depend on how the job is split in batches."""
  key = jax.random.key(3)
  x, _ = sampling.get_sampler(method, sde_lib.VESDE(), (6, 2), nfe=9)(
      key, gaussian_score('vesde'), None)
  x2, _ = sampling.get_sampler(method, sde_lib.VESDE(), (2, 2), nfe=9)(
      key, gaussian_score('vesde'), None, first_index=4)
  chex.assert_trees_all_close(x2, x[4:], atol=1e-5)
  assert not np.allclose(np.asarray(x[0]), np.asarray(x[1]))


# --- Factory, config, compilation ----------------------------------------------------------------

@LOW_DIM
def test_bad_arguments():
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match='order'):
    sampling.get_dpm_solver_sampler(sde, (4, 2), order=4)
  with pytest.raises(ValueError, match="schedule='karras'"):
    sampling.get_dpm_solver_sampler(sde, (4, 2), schedule='karras')
  with pytest.raises(ValueError, match='nfe=1'):
    sampling.get_dpm_solver_sampler(sde, (4, 2), nfe=1, denoise=True)
  with pytest.raises(ValueError, match='nfe=1'):
    sampling.get_heun_sampler(sde, (4, 2), nfe=1, denoise=True)
  with pytest.raises(ValueError, match='rtol'):
    sampling.get_adaptive_sde_sampler(sde, (4, 2), rtol=0.0)
  with pytest.raises(TypeError, match='nfe'):
    sampling.get_sampler('adaptive_sde', sde, (4, 2), nfe=10)
  with pytest.raises(ValueError, match='shape'):
    sampling.get_heun_sampler(sde, (4, 2))(jax.random.key(0), gaussian_score('vpsde'), None,
                                            z=jnp.zeros((3, 2)))


@LOW_DIM
def test_adaptive_sde_max_steps_is_an_error():
  sampler = sampling.get_adaptive_sde_sampler(sde_lib.VPSDE(), (4, 2), max_steps=3)
  with pytest.raises(RuntimeError, match='spent its max_steps=3 attempts'):
    jax.block_until_ready(sampler(jax.random.key(0), gaussian_score('vpsde'), None))


def _config(**fields):
  return ml_collections.ConfigDict({'sampling': {'noise_removal': True, **fields}})


@LOW_DIM
@pytest.mark.parametrize('fields,direct', [
    (dict(method='dpm_solver++', nfe=12, order=3, schedule='time_uniform'),
     dict(method='dpm_solver++', nfe=12, order=3, schedule='time_uniform',
          lower_order_final=True)),
    (dict(method='Heun', rho=5.0), dict(method='heun', nfe=35, rho=5.0)),
    (dict(method='adaptive_sde', reltol=0.1, abstol=0.01),
     dict(method='adaptive_sde', rtol=0.1, atol=0.01)),
])
def test_sampler_from_config_matches_direct_call(fields, direct):
  sde = sde_lib.VESDE()
  score = gaussian_score('vesde')
  key = jax.random.key(2)
  x, nfe = sampling.get_sampler_from_config(_config(**fields), sde, (4, 2))(key, score, None)
  direct = dict(direct)
  method = direct.pop('method')
  x_direct, nfe_direct = sampling.get_sampler(method, sde, (4, 2), eps=1e-5, denoise=True,
                                              **direct)(key, score, None)
  chex.assert_trees_all_close(x, x_direct)
  assert int(nfe) == int(nfe_direct)


@LOW_DIM
@pytest.mark.parametrize('method', ['dpm_solver++', 'heun', 'adaptive_sde'])
def test_no_retrace_for_new_params_key_index(method):
  # Python runs the score only while JAX traces it: after the first call, never again.
  score = chex.assert_max_traces(gaussian_score('vesde', scaled=True), 0)
  options = {} if method == 'adaptive_sde' else {'nfe': 6}
  sampler = sampling.get_sampler(method, sde_lib.VESDE(), (4, 3, 2), **options)
  with helpers.first_compile():
    x1, _ = sampler(jax.random.key(0), score, {'scale': jnp.float32(1.0)})
  x2, _ = sampler(jax.random.key(1), score, {'scale': jnp.float32(0.9)}, first_index=4)
  assert not np.allclose(np.asarray(x1), np.asarray(x2))
