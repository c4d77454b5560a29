"""Tests of the PC and ODE samplers against closed-form Gaussian (mixture) data.

Data layout. The correctness tests draw batches of shape (B, COPIES, 2): every example holds
COPIES independent copies of one 2-D Gaussian, whose score is the per-copy score. The reason is
the per-example Langevin step size ``eps = 2 alpha (snr ||z|| / ||score(x)||)^2``: it depends on
the example's own state, so unadjusted Langevin targets ``p(x) ||score(x)||^2`` instead of
``p(x)`` (the stationary law of ``dx = eps(x) score dt + sqrt(2 eps(x)) dw`` is ``p / eps``). For
a d-dimensional Gaussian that tilt inflates the variance by ``2 / (d mean(1 / lambda))``: 0.1 %
for images, 1 % here with d = 128, and unbounded for d = 2, where ``||z||^2 / ||score||^2`` has
no mean and single steps throw samples out to |x| ~ 1e3.

One step of each predictor and corrector runs under ``chex.variants`` (:class:`StepFormulaTest`):
jitted and eagerly.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized

from sde_jax import rng
from sde_jax import sde as sde_lib
from sde_jax import sampling
from sde_jax.sampling import pc
from tests import gaussian, helpers

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
COPIES = 64
SDES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.SubVPSDE}
# Ancestral sampling needs the discrete chain behind the SDE; sub-VP has none.
NO_ANCESTRAL = ('subvpsde',)


def gaussian_score(name: str, **options):
  """Exact score of N(MEAN, COV) perturbed by the SDE ``name``, for x of shape (B, ..., 2): each
  example holds copies of the 2-D Gaussian (tests/gaussian.py)."""
  return gaussian.score_fn(name, MEAN, COV, **options)


def mean_cov_tolerance(n: int, bias: float, z: float = 4.0):
  """Half-widths for the sample mean and covariance of n draws of N(MEAN, COV).

  Standard errors: ``SE(mean_k) = sqrt(C_kk / n)``, ``SE(S_ij) = sqrt((C_ij^2 + C_ii C_jj) / n)``
  (Gaussian data). ``z = 4``: some 35 runs x 5 statistics are checked, and
  ``P(|Z| > 4) = 6e-5`` keeps the chance of a false failure of a correct sampler near 1 %.
  ``bias`` is the absolute allowance for the sampler's systematic error, stated per test.
  """
  se_mean = np.sqrt(np.diag(COV) / n)
  se_cov = np.sqrt((COV**2 + np.outer(np.diag(COV), np.diag(COV))) / n)
  return z * se_mean + bias, z * se_cov + bias


def assert_gaussian(x, bias):
  pairs = np.asarray(x, np.float64).reshape(-1, 2)
  tol_mean, tol_cov = mean_cov_tolerance(len(pairs), bias)
  err_mean = np.abs(pairs.mean(0) - MEAN)
  err_cov = np.abs(np.cov(pairs.T) - COV)
  assert np.all(err_mean <= tol_mean), (pairs.mean(0), tol_mean)
  assert np.all(err_cov <= tol_cov), (np.cov(pairs.T), tol_cov)


# --- One step of each predictor and corrector against the paper's formulas -----------------------

def _step_inputs(n=1000):
  x = jax.random.normal(jax.random.key(5), (4, 3, 2)) * 2.0
  t = jnp.array([1e-3, 0.3, 0.6, 1.0])
  keys = rng.per_example_keys(jax.random.key(6), 4)
  level = np.floor(np.asarray(t, np.float64) * (n - 1)).astype(int)
  return x, t, keys, level


def _discrete_tables(n=1000):
  """SMLD sigmas (with sigma_{-1} = 0) and DDPM betas, from the oracle's constants."""
  sigmas = np.exp(np.linspace(np.log(gaussian.SIGMA_MIN), np.log(gaussian.SIGMA_MAX), n))
  betas = np.linspace(gaussian.BETA_MIN / n, gaussian.BETA_MAX / n, n)
  return np.concatenate([[0.0], sigmas]), betas


def _expected_prediction(name, predictor, x, t, level, score, n=1000):
  """(x_mean, noise std) of one predictor step; std has shape (B, 1, 1)."""
  sigmas, betas = _discrete_tables(n)
  col = lambda a: np.asarray(a, np.float64)[:, None, None]
  t = np.asarray(t, np.float64)
  if name == 'vesde':
    sig, adj = col(sigmas[level + 1]), col(sigmas[level])
    g2 = col(gaussian.mean_std(name, t)[1]**2 * 2 * np.log(gaussian.SIGMA_MAX / gaussian.SIGMA_MIN))
    return {'euler_maruyama': (x + g2 * score / n, np.sqrt(g2 / n)),
            'reverse_diffusion': (x + (sig**2 - adj**2) * score, np.sqrt(sig**2 - adj**2)),
            'ancestral_sampling': (x + (sig**2 - adj**2) * score,
                                   np.sqrt(adj**2 * (sig**2 - adj**2) / sig**2))}[predictor]
  beta_t = col(gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN))
  if name == 'subvpsde':  # g^2 = beta(t) (1 - exp(-2 int_0^t beta)); the chain is Euler–Maruyama
    integral = gaussian.BETA_MIN * t + 0.5 * (gaussian.BETA_MAX - gaussian.BETA_MIN) * t**2
    g2 = beta_t * col(1 - np.exp(-2 * integral))
    step = (x + (0.5 * beta_t * x + g2 * score) / n, np.sqrt(g2 / n))
    return {'euler_maruyama': step, 'reverse_diffusion': step}[predictor]
  beta = col(betas[level])
  return {'euler_maruyama': (x + (0.5 * beta_t * x + beta_t * score) / n, np.sqrt(beta_t / n)),
          'reverse_diffusion': ((2 - np.sqrt(1 - beta)) * x + beta * score, np.sqrt(beta)),
          'ancestral_sampling': ((x + beta * score) / np.sqrt(1 - beta), np.sqrt(beta))}[predictor]


def _step_size(name, corrector, snr, t, level, score, z):
  """The Langevin step size eps of one corrector step (B,): ``2 alpha_i r^2`` with
  ``r = snr ||z|| / ||score||`` per example ('langevin'), the batch means of those norms
  ('langevin_batch'), or ``snr std(t)`` ('ald')."""
  alpha = np.ones(len(level)) if name == 'vesde' else 1.0 - _discrete_tables()[1][level]
  norm = lambda a: np.linalg.norm(a.reshape(len(a), -1), axis=1)
  ratio = {'langevin': lambda: snr * norm(z) / norm(score),
           'langevin_batch': lambda: snr * norm(z).mean() / norm(score).mean(),
           'ald': lambda: snr * gaussian.mean_std(name, np.asarray(t, np.float64))[1]}[corrector]()
  return 2 * alpha * ratio**2


class StepFormulaTest(chex.TestCase):
  """One step of each predictor and corrector, jitted and eager, against the paper's formulas."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f'{name}_{predictor}', name, predictor)
      for name in SDES for predictor in ('euler_maruyama', 'reverse_diffusion', 'ancestral_sampling')
      if not (name in NO_ANCESTRAL and predictor == 'ancestral_sampling'))
  def test_predictor_step(self, name, predictor):
    """rtol 1e-5; 1e-4 for the jitted SMLD chain steps. Their float32 sigma table is off by up to
    5e-7 (relative) near sigma_max, and ``sigma_i^2 - sigma_{i-1}^2`` at the top level is 1/59 of
    sigma_i^2, so it carries up to 4 x 59 x 5e-7 = 1.2e-4 relative error, half that in its
    square root, the noise scale (measured 2e-5 jitted and 9e-6 eagerly at t = 1, where the
    eager test keeps its 1e-5)."""
    rtol = 1e-5
    if (name == 'vesde' and predictor != 'euler_maruyama'
        and self.variant.type == chex.ChexVariantType.WITH_JIT):
      rtol = 1e-4
    x, t, keys, level = _step_inputs()
    score_fn = functools.partial(gaussian_score(name), None)
    update = sampling.PREDICTORS[predictor](SDES[name]()).update
    new, mean = self.variant(functools.partial(update, score_fn))(keys, x, t)
    x64, score = np.asarray(x, np.float64), np.asarray(score_fn(x, t), np.float64)
    expected, std = _expected_prediction(name, predictor, x64, t, level, score)
    z = np.asarray(rng.normal(keys, x.shape), np.float64)
    np.testing.assert_allclose(mean, expected, rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(new, expected + std * z, rtol=rtol, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      [(f'{name}_{corrector}', name, corrector) for name in SDES for corrector in ('langevin', 'ald')]
      + [('vpsde_langevin_batch', 'vpsde', 'langevin_batch')])  # each test compiles a loop: ~1 s
  def test_corrector_step(self, name, corrector):
    """One step ``x + eps score + sqrt(2 eps) z``, the noise of step 0 from
    ``fold_in(keys[i], 0)``."""
    snr = 0.2
    x, t, keys, level = _step_inputs()
    score_fn = functools.partial(gaussian_score(name), None)
    update = sampling.CORRECTORS[corrector](SDES[name](), snr, 1).update
    new, mean = self.variant(functools.partial(update, score_fn))(keys, x, t)
    score = np.asarray(score_fn(x, t), np.float64)
    z = np.asarray(rng.normal(rng.fold_in_all(keys, 0), x.shape), np.float64)
    eps = _step_size(name, corrector, snr, t, level, score, z)
    expected = np.asarray(x, np.float64) + eps[:, None, None] * score
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new, expected + np.sqrt(2 * eps)[:, None, None] * z, rtol=1e-5,
                               atol=1e-5)


def test_pc_denoise_drops_last_noise():
  """denoise=True returns the last x_mean: it differs from x by the last predictor noise,
  ``sqrt(beta_0) z`` with z from ``fold_in(fold_in(k_i, PREDICTOR), N - 1)``."""
  sde = sde_lib.VPSDE(N=50)  # DDPM needs beta_max / N < 1
  shape = (3, 1, 2)
  key = jax.random.key(4)
  score = gaussian_score('vpsde')
  make = functools.partial(sampling.get_pc_sampler, sde, shape, 'ancestral_sampling', 'none')
  x_mean, _ = make(denoise=True)(key, score, None)
  x, _ = make(denoise=False)(key, score, None)
  keys = rng.fold_in_all(rng.fold_in_all(rng.per_example_keys(key, 3), rng.PREDICTOR), 49)
  z = rng.normal(keys, shape)
  chex.assert_trees_all_close(x - x_mean, np.sqrt(gaussian.BETA_MIN / 50) * z, atol=1e-6)


# --- Each predictor x corrector on each SDE recovers N(MEAN, COV) --------------------------------

# Systematic errors allowed on top of the sampling error (absolute, on entries of size ~1):
#   * N = 1000 first-order steps and the stop at eps = 1e-3: O(1e-3); we allow 0.01, and the
#     correctors' allowances below come on top of it.
#   * langevin: unadjusted Langevin with step eps inflates the variance along an eigenvector with
#     eigenvalue lam by 1 / (1 - eps / (2 lam)); eps ~ 2 snr^2 / mean(1 / lam) = 0.031 at snr 0.16
#     gives 4 % on the smallest eigenvalue (0.39), and the per-example tilt (module docstring) adds
#     2 / (128 * 1.64) = 1 %. Measured at a fixed t: +0.04 on C_11, +0.035 on C_22. Allow 0.06 more.
#   * ald: the step 2 (snr s(t))^2 vanishes with the kernel's std s(t) as t -> 0, so the chain
#     freezes before the marginal stops moving; it lags by ~0.02 (VE, VP) on the mean. Allow 0.04 more.
#   * langevin_batch: the same unadjusted-Langevin inflation without the per-example tilt.
BIAS = {'none': 0.01, 'langevin': 0.07, 'langevin_batch': 0.07, 'ald': 0.05}
# With 'none' predictor the corrector alone must follow p_t down from T. The snr-based Langevin
# step, eps ~ 2 snr^2 Var_t, contracts the excess variance by ~5 % per step while p_t changes by
# < 2 % per step (VE), and the last ~270 steps see an almost constant p_t: snr 0.16, one step
# each, mixes. ALD's step 2 (snr s(t))^2 ~ 2 snr^2 Var_t only while s(t) dominates, so it needs a
# larger snr (0.5: eps / Var = 0.5 at large t, still stable below 2). Sub-VP's s(t) = 1 - m(t)^2
# ~ 10 t^2 shrinks much faster than VP's, so even 5 steps per level leave the mean ~7 % short of
# MEAN (measured; 20 or 40 steps per level only reach ~5 %): its allowance is 0.1.
CORRECTOR_ONLY = {
    ('vesde', 'langevin'): dict(snr=0.16, n_steps=1),
    ('vpsde', 'langevin'): dict(snr=0.16, n_steps=1),
    ('subvpsde', 'langevin'): dict(snr=0.16, n_steps=1),
    ('vesde', 'langevin_batch'): dict(snr=0.16, n_steps=1),
    ('vpsde', 'langevin_batch'): dict(snr=0.16, n_steps=1),
    ('subvpsde', 'langevin_batch'): dict(snr=0.16, n_steps=1),
    ('vesde', 'ald'): dict(snr=0.5, n_steps=1),
    ('vpsde', 'ald'): dict(snr=0.5, n_steps=1),
    ('subvpsde', 'ald'): dict(snr=0.5, n_steps=5),
}
SUBVP_ALD_BIAS = 0.1


def _valid_combos():
  for name in SDES:
    for predictor in sampling.PREDICTORS:
      for corrector in sampling.CORRECTORS:
        if predictor == corrector == 'none':
          continue
        if predictor == 'ancestral_sampling' and name in NO_ANCESTRAL:
          continue
        yield name, predictor, corrector


@pytest.mark.parametrize('name,predictor,corrector', list(_valid_combos()))
def test_pc_recovers_gaussian(name, predictor, corrector):
  """Includes sub-VP with the Langevin corrector, which the original code cannot run."""
  options = CORRECTOR_ONLY.get((name, corrector), {}) if predictor == 'none' else {}
  sde = SDES[name]()
  shape = (64, COPIES, 2)
  sampler = sampling.get_pc_sampler(sde, shape, predictor, corrector, **options)
  x, nfe = sampler(jax.random.key(0), gaussian_score(name), None)

  chex.assert_shape(x, shape)
  chex.assert_type(x, jnp.float32)
  chex.assert_tree_all_finite(x)
  pred_evals = 0 if predictor == 'none' else 1
  corr_evals = 0 if corrector == 'none' else options.get('n_steps', 1)
  assert nfe == sde.N * (pred_evals + corr_evals)
  bias = BIAS[corrector]
  if (name, corrector) == ('subvpsde', 'ald') and predictor == 'none':
    bias = SUBVP_ALD_BIAS
  assert_gaussian(x, bias)


@pytest.mark.parametrize('name', list(SDES))
def test_langevin_batch_samples_two_dimensional_gaussian(name):
  """The original's batch-averaged rule on plain 2-D data (one copy per example), where the
  per-example rule diverges: 4096 pairs, the same allowances as above."""
  sde = SDES[name]()
  sampler = sampling.get_pc_sampler(sde, (4096, 2), 'reverse_diffusion', 'langevin_batch')
  x, _ = sampler(jax.random.key(3), gaussian_score(name), None)
  assert_gaussian(x, BIAS['langevin_batch'])


def test_langevin_per_example_warns_in_low_dimension():
  with pytest.warns(UserWarning, match='langevin_batch'):
    sampling.get_pc_sampler(sde_lib.VPSDE(), (8, 2), 'reverse_diffusion', 'langevin')


@pytest.mark.parametrize('predictor,corrector', [('none', 'none'),
                                                 ('ancestral_sampling', 'langevin')])
def test_pc_rejects_invalid_combos(predictor, corrector):
  sde = sde_lib.SubVPSDE()
  with pytest.raises(ValueError, match=predictor):
    sampling.get_pc_sampler(sde, (4, 2), predictor, corrector)


def test_ancestral_error_names_sde_and_choices():
  with pytest.raises(ValueError, match='SubVPSDE') as info:
    sampling.get_pc_sampler(sde_lib.SubVPSDE(), (4, 2), 'ancestral_sampling', 'none')
  assert 'reverse_diffusion' in str(info.value)
  with pytest.raises(ValueError, match='probability-flow'):
    sampling.get_pc_sampler(sde_lib.VPSDE(), (4, 2), 'ancestral_sampling', 'none',
                            probability_flow=True)


@pytest.mark.parametrize('kwargs,match', [
    (dict(predictor='heun'), "predictor='heun'.*euler_maruyama"),
    (dict(corrector='hmc'), "corrector='hmc'.*langevin"),
    (dict(corrector='langevin', n_steps=0), 'n_steps'),
    (dict(corrector='ald', snr=0.0), 'snr'),
    (dict(shape=(0, 2)), 'batch'),
    (dict(shape=(4,)), 'batch'),
])
def test_pc_bad_arguments(kwargs, match):
  kwargs = {'shape': (4, 2), **kwargs}
  with pytest.raises(ValueError, match=match):
    sampling.get_pc_sampler(sde_lib.VPSDE(N=10), **kwargs)


def test_ode_bad_arguments():
  with pytest.raises(ValueError, match="solver='rk4'.*dopri5"):
    sampling.get_ode_sampler(sde_lib.VPSDE(), (4, 2), solver='rk4')
  with pytest.raises(ValueError, match='batch'):
    sampling.get_ode_sampler(sde_lib.VPSDE(), (0, 2))
  sampler = sampling.get_ode_sampler(sde_lib.VPSDE(), (4, 2))
  with pytest.raises(ValueError, match='shape'):
    sampler(jax.random.key(0), gaussian_score('vpsde'), None, z=jnp.zeros((3, 2)))


# --- Probability flow ----------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(SDES))
@pytest.mark.parametrize('predictor', ['euler_maruyama', 'reverse_diffusion'])
def test_pc_probability_flow_follows_flow_map(name, predictor):
  """Without corrector the PC sampler is N explicit steps of the probability-flow ODE."""
  sde = SDES[name]()
  shape = (16, 1, 2)
  sampler = sampling.get_pc_sampler(sde, shape, predictor, 'none', probability_flow=True,
                                    denoise=False)
  key = jax.random.key(3)
  x, _ = sampler(key, gaussian_score(name), None)
  # The same prior draw, from the documented key layout.
  z = pc.prior_sample(sde, rng.per_example_keys(key, shape[0]), shape)
  expected = gaussian.flow_map(name, MEAN, COV, np.asarray(z[:, 0]), sde.T, 1e-3)
  # First-order steps of dt = 1e-3: the error is O(dt times the drift's Lipschitz constant),
  # largest for VE (g^2 / (2 Var_t) ~ 8.5 near T). Measured on 64 samples, relative to the
  # distance from the mean: VE <= 3.3 %, VP <= 2.1 %, sub-VP 0.4 % at N = 1000, halving at
  # N = 2000 (first order). We allow 6 %; a wrong drift (full g^2 score, no f) errs by O(1).
  x = np.asarray(x[:, 0], np.float64)
  err = np.linalg.norm(x - expected, axis=1) / np.linalg.norm(expected - MEAN, axis=1)
  assert err.max() < 0.06, err.max()


# --- ODE sampler ---------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(SDES))
def test_ode_decodes_exact_flow_map(name):
  sde = SDES[name]()
  shape = (16, 2)
  z = jax.random.normal(jax.random.key(1), shape) * gaussian.prior_std(name)
  calls = []
  score = gaussian_score(name, calls=calls)
  sampler = sampling.get_ode_sampler(sde, shape)
  x, nfe = sampler(jax.random.key(0), score, None, z=z)
  jax.effects_barrier()

  chex.assert_shape(x, shape)
  chex.assert_tree_all_finite(x)
  expected = gaussian.flow_map(name, MEAN, COV, np.asarray(z, np.float64), sde.T, 1e-3)
  # rtol = atol = 1e-5 per step, some 100 steps, float32 arithmetic: 1e-3 is generous but far
  # below the O(0.1) error of a wrong drift coefficient.
  np.testing.assert_allclose(np.asarray(x), expected, atol=1e-3, rtol=1e-3)
  assert int(nfe) == len(calls) > 0


def test_ode_denoise_adds_one_tweedie_step():
  """VE: the reverse-diffusion step at eps (level 0) is x + sigma_min^2 score(x, eps)."""
  sde = sde_lib.VESDE()
  shape = (16, 2)
  z = jax.random.normal(jax.random.key(1), shape) * gaussian.SIGMA_MAX
  base = gaussian_score('vesde')
  calls = []
  score = gaussian_score('vesde', calls=calls)
  x, nfe = sampling.get_ode_sampler(sde, shape)(jax.random.key(0), score, None, z=z)
  jax.effects_barrier()
  n_plain = len(calls)
  xd, nfe_d = sampling.get_ode_sampler(sde, shape, denoise=True)(jax.random.key(0), score,
                                                                  None, z=z)
  jax.effects_barrier()

  assert int(nfe_d) == int(nfe) + 1 == len(calls) - n_plain
  t = jnp.full((shape[0],), 1e-3)
  expected = x + gaussian.SIGMA_MIN**2 * base(None, x, t)
  chex.assert_trees_all_close(xd, expected, atol=1e-6)


def test_ode_draws_prior_per_example():
  """z=None: the prior is drawn per example, so the first samples of a larger batch agree up to
  the solver tolerance (the step sizes are chosen for the whole batch)."""
  sde = sde_lib.VPSDE()
  score = gaussian_score('vpsde')
  key = jax.random.key(7)
  x8, _ = sampling.get_ode_sampler(sde, (8, 2))(key, score, None)
  x3, _ = sampling.get_ode_sampler(sde, (3, 2))(key, score, None, first_index=2)
  np.testing.assert_allclose(np.asarray(x3), np.asarray(x8[2:5]), atol=1e-3)
  assert not np.allclose(np.asarray(x8[0]), np.asarray(x8[1]))


# --- Gaussian mixture: mode weights --------------------------------------------------------------

MIXTURE = gaussian.GaussianMixture(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]),
    covs=np.stack([0.25 * np.eye(2)] * 3))


def assert_mode_weights(x):
  """Modes are >= 10 stds apart, so the nearest mean is the mode a sample belongs to.

  Tolerance: 4 standard errors sqrt(w (1 - w) / n) of a weight estimated from n draws, plus 0.02
  for the samplers' error (discretisation, Langevin bias) in the mass of each mode.
  """
  pts = np.asarray(x, np.float64).reshape(-1, 2)
  mode = np.argmin(((pts[:, None, :] - MIXTURE.means[None]) ** 2).sum(-1), axis=1)
  freq = np.bincount(mode, minlength=3) / len(pts)
  w = MIXTURE.weights
  np.testing.assert_array_less(np.abs(freq - w), 4 * np.sqrt(w * (1 - w) / len(pts)) + 0.02)


@pytest.mark.parametrize('name', ['vesde', 'vpsde'])
def test_pc_recovers_mixture_weights(name):
  shape = (32, COPIES, 2)
  sampler = sampling.get_pc_sampler(SDES[name](), shape)
  x, _ = sampler(jax.random.key(0), MIXTURE.score_fn(name), None)
  assert_mode_weights(x)


@pytest.mark.parametrize('name', ['vesde', 'vpsde'])
def test_ode_recovers_mixture_weights(name):
  sampler = sampling.get_ode_sampler(SDES[name](), (2048, 2))
  x, _ = sampler(jax.random.key(0), MIXTURE.score_fn(name), None)
  assert_mode_weights(x)


# --- Compilation and randomness ------------------------------------------------------------------

@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')  # tiny shapes on purpose
@pytest.mark.parametrize('method', ['pc', 'ode'])
def test_no_retrace_for_new_params_key_index(method):
  # Python runs the score only while JAX traces it: after the first call, never again.
  score = chex.assert_max_traces(gaussian_score('vesde', scaled=True), 0)
  sampler = sampling.get_sampler(method, sde_lib.VESDE(N=20), (4, 3, 2))
  with helpers.first_compile():
    x1, _ = sampler(jax.random.key(0), score, {'scale': jnp.float32(1.0)})
  x2, _ = sampler(jax.random.key(1), score, {'scale': jnp.float32(0.5)}, first_index=4)
  assert not np.allclose(np.asarray(x1), np.asarray(x2))


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')  # tiny shapes on purpose
def test_pc_sample_independent_of_batch():
  sde = sde_lib.VPSDE(N=100)
  score = gaussian_score('vpsde')
  key = jax.random.key(11)
  make = functools.partial(sampling.get_pc_sampler, sde, predictor='reverse_diffusion',
                           corrector='langevin')
  x8, _ = make((8, 4, 2))(key, score, None)
  x3, _ = make((3, 4, 2))(key, score, None)
  x3_at5, _ = make((3, 4, 2))(key, score, None, first_index=5)
  chex.assert_trees_all_close(x3, x8[:3], atol=1e-5)
  chex.assert_trees_all_close(x3_at5, x8[5:], atol=1e-5)
  assert not np.allclose(np.asarray(x8[0]), np.asarray(x8[1]))


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')  # tiny shapes on purpose
def test_pc_nfe_counts_real_evaluations():
  sde = sde_lib.VESDE(N=10)
  calls = []
  score = gaussian_score('vesde', calls=calls)
  for predictor, corrector, n_steps in [('reverse_diffusion', 'langevin', 2),
                                        ('none', 'ald', 3), ('ancestral_sampling', 'none', 1)]:
    sampler = sampling.get_pc_sampler(sde, (2, 1, 2), predictor, corrector, n_steps=n_steps)
    before = len(calls)
    _, nfe = sampler(jax.random.key(0), score, None)
    jax.effects_barrier()
    assert nfe == len(calls) - before


# --- get_sampler and configs ---------------------------------------------------------------------

def test_get_sampler_errors():
  sde = sde_lib.VPSDE(N=10)
  with pytest.raises(ValueError, match="method='sde'.*'ode'.*'pc'"):
    sampling.get_sampler('sde', sde, (2, 2))
  with pytest.raises(TypeError, match='rtol'):
    sampling.get_sampler('pc', sde, (2, 2), rtol=1e-3)
  with pytest.raises(TypeError, match='snr'):
    sampling.get_sampler('ode', sde, (2, 2), snr=0.1)


def _config(**sampling_fields):
  fields = dict(method='pc', predictor='reverse_diffusion', corrector='langevin', snr=0.16,
                n_steps_each=1, noise_removal=True, probability_flow=False)
  fields.update(sampling_fields)
  return ml_collections.ConfigDict({'sampling': fields})


def test_sampler_from_config_matches_direct_call():
  # N = 25 keeps the ALD corrector's DDPM chain defined (beta_max / N < 1); at N = 10 both
  # samples were NaN, compared equal, and the samplers now raise.
  sde = sde_lib.VPSDE(N=25)
  shape = (2, 1, 2)
  score = gaussian_score('vpsde')
  key = jax.random.key(2)
  config = _config(predictor='Euler_Maruyama', corrector='ald', snr=0.2, n_steps_each=2,
                   noise_removal=False)
  x, nfe = sampling.get_sampler_from_config(config, sde, shape)(key, score, None)
  direct = sampling.get_pc_sampler(sde, shape, 'euler_maruyama', 'ald', snr=0.2, n_steps=2,
                                   denoise=False, eps=1e-3)
  x_direct, nfe_direct = direct(key, score, None)
  chex.assert_trees_all_close(x, x_direct)
  assert nfe == nfe_direct == 75


def test_ode_sampler_from_config_uses_ve_eps():
  """The original stops VE sampling at 1e-5 and VP / sub-VP at 1e-3."""
  sde = sde_lib.VESDE()
  score = gaussian_score('vesde')
  z = jax.random.normal(jax.random.key(1), (4, 2)) * gaussian.SIGMA_MAX
  sampler = sampling.get_sampler_from_config(_config(method='ode', noise_removal=False), sde,
                                             (4, 2))
  x, _ = sampler(jax.random.key(0), score, None, z=z)
  expected = gaussian.flow_map('vesde', MEAN, COV, np.asarray(z, np.float64), 1.0, 1e-5)
  np.testing.assert_allclose(np.asarray(x), expected, atol=1e-3, rtol=1e-3)


def test_sampler_from_config_rejects_unknown_names():
  sde = sde_lib.VPSDE(N=10)
  with pytest.raises(ValueError, match="method='langevin'"):
    sampling.get_sampler_from_config(_config(method='langevin'), sde, (2, 2))
  with pytest.raises(ValueError, match="predictor='ddim'"):
    sampling.get_sampler_from_config(_config(predictor='ddim'), sde, (2, 2))


@pytest.mark.parametrize('t0, t1', [(1e-3, 1.0), (1.0, 1e-3)])
def test_rk45_follows_scipy(t0, t1):
  """'rk45' applies scipy's RK45 step rules: same number of evaluations, same solution."""
  from scipy import integrate
  from sde_jax import odeint
  rng = np.random.default_rng(0)
  a, y0 = rng.normal(size=50), rng.normal(size=50) * 5
  sol = integrate.solve_ivp(lambda t, y: -a * y * np.cos(3 * t) + np.sin(5 * t), (t0, t1), y0,
                            rtol=1e-5, atol=1e-5, method='RK45')
  field = lambda t, y: -jnp.asarray(a, jnp.float32) * y * jnp.cos(3 * t) + jnp.sin(5 * t)
  y, nfe = jax.jit(lambda y: odeint.rk45(field, y, t0, t1))(jnp.asarray(y0, jnp.float32))
  assert int(nfe) == sol.nfev
  np.testing.assert_allclose(y, sol.y[:, -1], atol=5e-5)
