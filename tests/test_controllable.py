"""Tests of inpainting, colorization and class-conditional sampling against closed forms.

* Class-conditional: data are a mixture with one Gaussian per class, whose noisy classifier
  ``p_t(y | x_t) = w_y N(x_t; m mu_y, m^2 S_y + s^2 I) / p_t(x_t)`` is known at every t; guidance
  with it is exact, so the samples of class y must be draws of component y.
* Inpainting and colorization of a correlated Gaussian. The paper's replacement rule is not exact
  conditional sampling: it is compared in distribution with a plain NumPy simulation of the same
  rule (float64, written from the paper's formulas). The Tweedie-moment method ('tmpd') is exact
  for Gaussian data: it is compared with the exact conditional, and its error must be at most a
  third of the replacement rule's.

Run as ``python -m tests.test_controllable [N_SAMPLES]`` to print the error table of
docs/controllable.md.
"""

from __future__ import annotations

import functools
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax import controllable, images, rng, sampling
from sde_jax import sde as sde_lib
from sde_jax.jobs import controllable as controllable_jobs
from tests import gaussian
from tests import helpers
from tests.helpers import run_cli

SDES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.SubVPSDE}
N_SAMPLES = 4000
N_STEPS = 500  # the discretisation error stays below 0.01; half the time of 1000
EPS = 1e-3

# --- Data: a 4-D correlated Gaussian with coordinates 0 and 2 known (inpainting) ---------------
MU4 = np.array([0.5, -1.0, 1.0, 0.0])
SD4 = np.array([1.0, 0.8, 1.2, 0.6])
CORR4 = np.array([[1.0, 0.8, 0.3, 0.6], [0.8, 1.0, 0.6, 0.7], [0.3, 0.6, 1.0, 0.8],
                  [0.6, 0.7, 0.8, 1.0]])
COV4 = CORR4 * np.outer(SD4, SD4)
MASK4 = np.array([1.0, 0.0, 1.0, 0.0])
Y4 = np.array([2.0, 0.0, -0.8, 0.0])  # known values; the zeros are never read

# --- An RGB pixel whose gray value (R + G + B) / sqrt(3) is known (colorization) ---------------
# The original's decoupling matrix as printed in its code (float32 digits); columns are the axes.
ORIGINAL_GRAY_MATRIX = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                                 [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                                 [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]])
# Covariance in the gray basis: gray correlates with both chroma axes, so conditioning on it
# moves the colour (natural images have far weaker correlations; the test needs a clear effect).
COV_GRAY_BASIS = np.array([[1.0, 0.45, -0.35], [0.45, 0.4, -0.1], [-0.35, -0.1, 0.3]])
COV3 = ORIGINAL_GRAY_MATRIX @ COV_GRAY_BASIS @ ORIGINAL_GRAY_MATRIX.T
MU3 = np.array([0.2, 0.4, -0.1])
GRAY = 1.2  # the known gray value per channel: the image has R = G = B = GRAY


def gaussian_score(name: str, mean: np.ndarray, cov: np.ndarray, **options):
  """Exact score of N(mean, cov) perturbed by SDE ``name``, x of shape (B, ..., d): one draw per
  d-vector (tests/gaussian.py); a numpy x gives numpy float64."""
  return gaussian.score_fn(name, mean, cov, **options)


# --- The replacement rule in plain NumPy -----------------------------------------------------

def _tables(n):
  sigmas = np.exp(np.linspace(np.log(gaussian.SIGMA_MIN), np.log(gaussian.SIGMA_MAX), n))
  betas = np.linspace(gaussian.BETA_MIN / n, gaussian.BETA_MAX / n, n)
  return np.concatenate([[0.0], sigmas]), betas


def _reverse_diffusion(name, x, t, score, noise, n):
  """One reverse-diffusion step (Song et al., eq. 46) of SDE ``name`` at time t (a float)."""
  sigmas, betas = _tables(n)
  level = int(np.floor(t * (n - 1)))
  if name == 'vesde':
    var = sigmas[level + 1]**2 - sigmas[level]**2
    return x + var * score + np.sqrt(var) * noise
  if name == 'vpsde':
    beta = betas[level]
    return (2 - np.sqrt(1 - beta)) * x + beta * score + np.sqrt(beta) * noise
  # sub-VP: Euler-Maruyama discretisation of the forward SDE, reversed.
  beta_t = gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN)
  g2 = beta_t * -np.expm1(-2 * gaussian.BETA_MIN * t
                          - (gaussian.BETA_MAX - gaussian.BETA_MIN) * t**2)
  return x + 0.5 * beta_t * x / n + g2 / n * score + np.sqrt(g2 / n) * noise


def numpy_replacement(name, mean, cov, basis, known, y, num, n=N_STEPS, eps=EPS, seed=0):
  """The paper's rule with a reverse-diffusion predictor, no corrector, in float64.

  ``basis`` (d, d) has the axes as columns, ``known`` (d,) marks the known axes and ``y`` (d,)
  their values in the basis. Known axes are reset to ``m(t) y + s(t) z`` at the start (t = T)
  and after each step, at the time the step reached (0 after the last: y itself). Returns the
  last step's noiseless update.
  """
  gen = np.random.default_rng(seed)
  exact_score = gaussian_score(name, mean, cov)
  times = np.linspace(1.0, eps, n)
  ends = np.append(times[1:], 0.0)

  def replace(x, t, noise=True):
    m, s = gaussian.mean_std(name, np.float64(t))
    s = s if t > 0 else 0.0
    u = x @ basis
    u[:, known] = m * y[known] + (s * gen.standard_normal((len(x), known.sum())) if noise else 0)
    return u @ basis.T

  x = replace(gen.standard_normal((num, len(mean))) * gaussian.prior_std(name), 1.0)
  for t, end in zip(times, ends):
    score = exact_score(None, x, np.full(len(x), t))
    x_mean = _reverse_diffusion(name, x, t, score, 0.0, n)
    x = replace(x_mean + (_reverse_diffusion(name, x, t, score, 1.0, n) - x_mean)
                * gen.standard_normal(x.shape), end)
  return replace(x_mean, 0.0, noise=False)


# --- The original's replacement rule in plain NumPy ------------------------------------------

def numpy_inpainter(name, mean, cov, y, mask, noise, n, rule, corrector='none', snr=0.16,
                    eps=EPS):
  """Inpainting by the replacement rule with a reverse-diffusion predictor, in float64.

  ``rule='original'`` is score_sde's ``get_pc_inpainter`` (controllable_generation.py), written
  here from its order of operations: x starts as the data on the known pixels and a prior draw
  on the others; for each t_n of ``linspace(T, eps, N)`` the corrector runs at t_n and the known
  pixels are set to ``m(t_n) y + s(t_n) z``, then the predictor runs from t_n and the known pixels
  are set again, *also at t_n* (the time the step started from); it returns x and
  ``x_mean`` = x on the unknown pixels (their noisy value) and ``m(t_n) y`` on the known ones.

  ``rule='package'`` is the rule sde_jax.controllable documents, which changes three things: the
  known pixels start at ``m(T) y + s(T) z``, the replacement after the predictor is at the time
  it stepped to, t_{n+1} (0 after the last step: y itself), and ``x_mean`` is the last
  predictor's noiseless update on the unknown pixels and y on the known ones.

  ``noise(kind, n)`` gives the standard normals of shape (B, d): kind ``'prior'`` (the prior draw
  over sigma_T), ``'replace_prior'``, and per step n ``'corrector'``, ``'replace_corrector'``,
  ``'predictor'``, ``'replace_predictor'``. ``corrector`` is 'none' or 'ald' (one step of
  annealed Langevin dynamics, ``eps_n = 2 alpha (snr s(t_n))^2``, Song et al. Alg. 4).
  """
  known = mask > 0
  score_fn = gaussian_score(name, mean, cov)
  sigmas, betas = _tables(n)
  times = np.linspace(1.0, eps, n)
  ends = np.append(times[1:], 0.0) if rule == 'package' else times

  def replace(x, t, z):
    m, s = gaussian.mean_std(name, np.float64(t))
    x = x.copy()
    x[:, known] = m * y[known] + (s if t > 0 else 0.0) * z[:, known]
    return x

  x = noise('prior', 0) * gaussian.prior_std(name)
  if rule == 'package':
    x = replace(x, 1.0, noise('replace_prior', 0))
  else:
    x[:, known] = y[known]
  for i, t in enumerate(times):
    vec_t = np.full(len(x), t)
    if corrector == 'ald':
      alpha = 1.0 if name == 'vesde' else 1.0 - betas[int(np.floor(t * (n - 1)))]
      step = 2 * alpha * (snr * gaussian.mean_std(name, np.float64(t))[1])**2
      x = x + step * score_fn(None, x, vec_t) + np.sqrt(2 * step) * noise('corrector', i)
    x = replace(x, t, noise('replace_corrector', i))
    score = score_fn(None, x, vec_t)
    x_mean = _reverse_diffusion(name, x, t, score, 0.0, n)
    x = _reverse_diffusion(name, x, t, score, noise('predictor', i), n)
    x = replace(x, ends[i], noise('replace_predictor', i))
  if rule == 'package':
    return x, replace(x_mean, 0.0, np.zeros_like(x))
  m_last = gaussian.mean_std(name, np.float64(times[-1]))[0]
  x_mean = x.copy()
  x_mean[:, known] = m_last * y[known]
  return x, x_mean


def package_noise(key, shape):
  """``noise`` for :func:`numpy_inpainter`: the draws of the package's inpainter from ``key``,
  by the streams it documents (per-example keys ``k_i``, one stage id per kind of draw, the step
  index folded in; a corrector's j-th step folds in j once more)."""
  keys = rng.per_example_keys(key, shape[0])
  stage = {'prior': rng.PRIOR, 'replace_prior': rng.REPLACE_PRIOR,
           'corrector': rng.CORRECTOR, 'predictor': rng.PREDICTOR,
           'replace_corrector': rng.REPLACE_CORRECTOR,
           'replace_predictor': rng.REPLACE_PREDICTOR}

  def noise(kind, n):
    k = rng.fold_in_all(keys, stage[kind])
    if kind not in ('prior', 'replace_prior'):
      k = rng.fold_in_all(k, n)
    if kind == 'corrector':
      k = rng.fold_in_all(k, 0)
    return np.asarray(rng.normal(k, shape), np.float64)

  return noise


def numpy_noise(seed, shape):
  """``noise`` for :func:`numpy_inpainter` from NumPy's generator."""
  gen = np.random.default_rng(seed)
  return lambda kind, n: gen.standard_normal(shape)


def exact_conditional(mean, cov, basis, known, y):
  """Mean and covariance of x given ``(basis^T x)[known] = y[known]``."""
  mu_u, cov_u = basis.T @ mean, basis.T @ cov @ basis
  k, f = known, ~known
  gain = cov_u[np.ix_(f, k)] @ np.linalg.inv(cov_u[np.ix_(k, k)])
  cond_mean, cond_cov = mu_u.copy(), np.zeros_like(cov_u)
  cond_mean[k] = y[k]
  cond_mean[f] = mu_u[f] + gain @ (y[k] - mu_u[k])
  cond_cov[np.ix_(f, f)] = cov_u[np.ix_(f, f)] - gain @ cov_u[np.ix_(k, f)]
  return basis @ cond_mean, basis @ cond_cov @ basis.T


# --- Statistics --------------------------------------------------------------------------------

def moments(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x.mean(0), np.cov(x.T)


def assert_same_gaussian(a, b, bias=0.005, z=4.5):
  """Two samples of Gaussians agree in mean and covariance within z standard errors + bias.

  ``SE(mean) = sqrt(C_ii / n)``, ``SE(S_ij) = sqrt((C_ij^2 + C_ii C_jj) / n)`` for each sample,
  combined in quadrature. ``z = 4.5`` over some 100 statistics in this module keeps false
  failures of a correct sampler below 0.1 %; bias absorbs float32 vs float64.
  """
  (ma, ca), (mb, cb) = moments(a), moments(b)
  se2 = lambda c, n: (np.diag(c) / n, (c**2 + np.outer(np.diag(c), np.diag(c))) / n)
  (va, wa), (vb, wb) = se2(ca, len(a)), se2(cb, len(b))
  np.testing.assert_array_less(np.abs(ma - mb), z * np.sqrt(va + vb) + bias)
  np.testing.assert_array_less(np.abs(ca - cb), z * np.sqrt(wa + wb) + bias)


def assert_gaussian(x, mean, cov, bias, z=4.5):
  """A sample agrees with N(mean, cov) within z standard errors + bias (one-sample form)."""
  m, c = moments(x)
  n = len(x)
  np.testing.assert_array_less(np.abs(m - mean), z * np.sqrt(np.diag(cov) / n) + bias)
  np.testing.assert_array_less(
      np.abs(c - cov), z * np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n) + bias)


def errors(x, mean, cov):
  """(|mean error|, ||cov error||_F) of a sample against N(mean, cov)."""
  m, c = moments(x)
  return float(np.linalg.norm(m - mean)), float(np.linalg.norm(c - cov))


# --- Runs, cached: each is used by several tests ------------------------------------------------

def _problem(task):
  """(mean, cov, basis, known, y in the basis, data, mask, shape) of the inpainting or
  colorization problem, ``data`` broadcast to the batch."""
  if task == 'inpaint':
    basis, known, y = np.eye(4), MASK4 > 0, Y4
    data, mask, shape = Y4, MASK4, (N_SAMPLES, 4)
    return MU4, COV4, basis, known, y, data, mask, shape
  basis, known = ORIGINAL_GRAY_MATRIX, np.array([True, False, False])
  y = np.array([np.sqrt(3) * GRAY, 0.0, 0.0])
  data, shape = np.full(3, GRAY), (N_SAMPLES, 1, 1, 3)
  return MU3, COV3, basis, known, y, data, None, shape


@functools.lru_cache(maxsize=None)
def run(task, name, method, num=N_SAMPLES, seed=0):
  """Samples (num, d) of ``task`` with the JAX sampler (reverse diffusion, no corrector)."""
  mean, cov, _, _, _, data, mask, shape = _problem(task)
  shape = (num,) + shape[1:]
  # GMRES solves the 2x2 (inpainting) or 1x1 (colorization) system exactly in 2 steps.
  options = dict(method=method, corrector='none', solver_iters=2, eps=EPS)
  sampler = controllable.get_controllable_sampler(task, SDES[name](N=N_STEPS), shape, **options)
  data = jnp.broadcast_to(jnp.asarray(data, jnp.float32).reshape((1,) * (len(shape) - 1) + (-1,)),
                          shape)
  args = (data,) if mask is None else (data, jnp.asarray(mask))
  x, _ = sampler(jax.random.key(seed), gaussian_score(name, mean, cov), None, *args)
  return np.asarray(x, np.float64).reshape(num, -1)


@functools.lru_cache(maxsize=None)
def run_numpy(task, name, num=N_SAMPLES):
  mean, cov, basis, known, y, *_ = _problem(task)
  return numpy_replacement(name, mean, cov, basis, known, y, num)


def exact(task):
  mean, cov, basis, known, y, *_ = _problem(task)
  return exact_conditional(mean, cov, basis, known, y)


# --- Inpainting and colorization -----------------------------------------------------------------

def test_gray_matrix_is_the_originals():
  np.testing.assert_allclose(controllable.GRAY_MATRIX, ORIGINAL_GRAY_MATRIX, atol=3e-7)
  np.testing.assert_allclose(controllable.GRAY_MATRIX.T @ controllable.GRAY_MATRIX, np.eye(3),
                             atol=1e-12)


@pytest.mark.parametrize('task, name', [('inpaint', 'vesde'), ('inpaint', 'vpsde'),
                                        ('inpaint', 'subvpsde'), ('colorize', 'vpsde')])
def test_replacement_matches_numpy_simulation(task, name):
  x = run(task, name, 'replacement')
  assert_same_gaussian(x, run_numpy(task, name))
  # Known coordinates come back exactly: y for inpainting, the gray value for colorization.
  if task == 'inpaint':
    np.testing.assert_allclose(x[:, MASK4 > 0], np.broadcast_to(Y4[MASK4 > 0], (len(x), 2)),
                               atol=1e-5)
  else:
    np.testing.assert_allclose(x.mean(axis=1), GRAY, atol=1e-5)


@pytest.mark.parametrize('task, name', [('inpaint', 'vesde'), ('inpaint', 'vpsde'),
                                        ('inpaint', 'subvpsde'), ('colorize', 'vpsde')])
def test_tmpd_is_exact_and_beats_replacement(task, name):
  """'tmpd' samples the exact conditional (bias 0.02 for N = 500 steps and the stop at eps);
  its mean and covariance errors are at most a third of the replacement rule's."""
  mean, cov = exact(task)
  x_tmpd, x_repl = run(task, name, 'tmpd'), run(task, name, 'replacement')
  assert_gaussian(x_tmpd, mean, cov, bias=0.02)
  err_tmpd, err_repl = errors(x_tmpd, mean, cov), errors(x_repl, mean, cov)
  assert err_tmpd[0] <= err_repl[0] / 3, (err_tmpd, err_repl)
  assert err_tmpd[1] <= err_repl[1] / 3, (err_tmpd, err_repl)


def test_replacement_lies_between_conditional_and_unconditional():
  """The replacement rule's bias points to the unconditional distribution (inpainting)."""
  x = run('inpaint', 'vpsde', 'replacement')
  cond_mean, cond_cov = exact('inpaint')
  free = MASK4 == 0
  m, c = moments(x[:, free])
  lo, hi = np.minimum(cond_mean[free], MU4[free]), np.maximum(cond_mean[free], MU4[free])
  assert np.all((m > lo) & (m < hi)), (m, cond_mean[free], MU4[free])
  assert np.all(np.linalg.eigvalsh(c - cond_cov[np.ix_(free, free)]) > 0)


# The package's inpainter against the original's rule, with the same draws. N = 100 steps (VP's
# reverse-diffusion step needs beta_max / N < 1), 16 examples.
PATH_STEPS, PATH_SHAPE = 100, (16, 4)


def _package_inpaint(name, key, **options):
  """(x, x_mean) of the package's inpainter of Y4 / MASK4: ``denoise`` False, then True."""
  sde = SDES[name](N=PATH_STEPS)
  data = jnp.broadcast_to(jnp.asarray(Y4, jnp.float32), PATH_SHAPE)
  out = []
  for denoise in (False, True):
    sampler = controllable.get_pc_inpainter(sde, PATH_SHAPE, denoise=denoise, **options)
    x, _ = sampler(key, gaussian_score(name, MU4, COV4), None, data, jnp.asarray(MASK4))
    out.append(np.asarray(x, np.float64))
  return out


# float32 (package) against float64 over 100 steps: measured at most 1.1e-6 (VE, VP, sub-VP, with
# and without corrector); the rules' differences and other draws move x by 2e-3 to 0.15.
PATH_ATOL = 1e-5


@pytest.mark.parametrize('name', list(SDES))
def test_replacement_without_corrector_is_the_originals_rule(name):
  """Without a corrector the package's rule and the original's give the same unknown pixels from
  the same draws (x, not denoised); only the known pixels' last values differ (y in the package,
  ``m(eps) y + s(eps) z`` in the original).

  Why: in both rules the predictor of step n sees the known pixels set at t_n by the
  replacement that follows the (absent) corrector; the replacement after the predictor, at t_n
  in the original and at t_{n+1} in the package, is overwritten before anything reads it, except
  after the last step; and the known pixels' starting values (data, or a noisy draw) are
  overwritten before the first predictor.
  """
  key = jax.random.key(21)
  noise = package_noise(key, PATH_SHAPE)
  x, x_mean = _package_inpaint(name, key, corrector='none')
  free, known, tol = MASK4 == 0, MASK4 > 0, PATH_ATOL
  orig_x, _ = numpy_inpainter(name, MU4, COV4, Y4, MASK4, noise, PATH_STEPS, 'original')
  np.testing.assert_allclose(x[:, free], orig_x[:, free], rtol=0, atol=tol)
  np.testing.assert_allclose(x[:, known], np.broadcast_to(Y4[known], (len(x), 2)), atol=1e-6)
  # The package's denoised output is its rule's x_mean (the last predictor's mean, and y).
  pkg_x, pkg_mean = numpy_inpainter(name, MU4, COV4, Y4, MASK4, noise, PATH_STEPS, 'package')
  np.testing.assert_allclose(x, pkg_x, rtol=0, atol=tol)
  np.testing.assert_allclose(x_mean, pkg_mean, rtol=0, atol=tol)
  # The comparison sees the known pixels' noise: other draws there move the unknown pixels.
  swapped = lambda kind, n: noise({'replace_corrector': 'replace_predictor'}.get(kind, kind), n)
  other, _ = numpy_inpainter(name, MU4, COV4, Y4, MASK4, swapped, PATH_STEPS, 'original')
  assert np.abs(other[:, free] - orig_x[:, free]).max() > 100 * tol


@pytest.mark.parametrize('name', list(SDES))
def test_replacement_with_corrector_is_the_documented_rule(name):
  """With a corrector (ALD) the rules differ where docs/controllable.md says: the package's
  inpainter equals the NumPy rule with the package's three changes, pixel for pixel, and the
  original's rule (the corrector sees the known pixels at t_{n-1}, and at the start the data
  itself) gives other unknown pixels."""
  key = jax.random.key(22)
  noise = package_noise(key, PATH_SHAPE)
  x, x_mean = _package_inpaint(name, key, corrector='ald', snr=0.16)
  tol, free = PATH_ATOL, MASK4 == 0
  pkg_x, pkg_mean = numpy_inpainter(name, MU4, COV4, Y4, MASK4, noise, PATH_STEPS, 'package',
                                    corrector='ald')
  np.testing.assert_allclose(x, pkg_x, rtol=0, atol=tol)
  np.testing.assert_allclose(x_mean, pkg_mean, rtol=0, atol=tol)
  orig_x, _ = numpy_inpainter(name, MU4, COV4, Y4, MASK4, noise, PATH_STEPS, 'original',
                              corrector='ald')
  assert np.abs(orig_x[:, free] - x[:, free]).max() > 10 * tol


@pytest.mark.parametrize('name', list(SDES))
def test_original_rule_samples_the_packages_distribution(name):
  """The original's rule (NumPy, its own draws, denoised output: x on the unknown pixels and
  ``m(eps) y`` on the known) and the package's replacement sampler give the same Gaussian, within
  the statistical tolerance: the outputs differ only by the last step's noise on the unknown
  pixels (std sqrt(beta_0) ~ 0.014 for VP, less for VE and sub-VP) and by ``1 - m(eps) < 1e-4``
  on the known ones, both inside the bias allowance."""
  noise = numpy_noise(3, (N_SAMPLES, 4))
  _, orig_mean = numpy_inpainter(name, MU4, COV4, Y4, MASK4, noise, N_STEPS, 'original')
  assert_same_gaussian(run('inpaint', name, 'replacement'), orig_mean)


def _small_inpainter(name, n=20, batch=3, **options):
  sde = SDES[name](N=n)
  return sde, controllable.get_pc_inpainter(sde, (batch, 4), **options)


def test_returned_mean_is_denoised_on_unknown_pixels():
  """x - x_mean on the unknown coordinates is the last predictor noise ``sqrt(beta_0) z`` (the
  original returned the noisy x there), and 0 on the known ones."""
  sde = SDES['vpsde'](N=20)
  make = functools.partial(controllable.get_pc_inpainter, sde, (3, 4), corrector='none')
  key, data = jax.random.key(3), jnp.broadcast_to(jnp.asarray(Y4, jnp.float32), (3, 4))
  score = gaussian_score('vpsde', MU4, COV4)
  x_mean, _ = make(denoise=True)(key, score, None, data, jnp.asarray(MASK4))
  x, _ = make(denoise=False)(key, score, None, data, jnp.asarray(MASK4))
  keys = rng.fold_in_all(rng.fold_in_all(rng.per_example_keys(key, 3), rng.PREDICTOR), 19)
  z = rng.normal(keys, (3, 4))
  beta0 = sde.discrete_betas[0]
  free = jnp.asarray(1 - MASK4)[None]
  chex.assert_trees_all_close((x - x_mean) * free, jnp.sqrt(beta0) * z * free, atol=1e-6)
  chex.assert_trees_all_close((x - x_mean) * (1 - free), jnp.zeros((3, 4)), atol=1e-6)


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')
def test_nothing_known_is_the_unconditional_sampler():
  """Mask 0: the same samples as the PC sampler (same per-example streams), and its nfe."""
  sde = SDES['subvpsde'](N=20)
  options = dict(predictor='euler_maruyama', corrector='langevin')
  score = gaussian_score('subvpsde', MU4, COV4)
  key, data = jax.random.key(1), jnp.ones((3, 4))
  x, nfe = controllable.get_pc_inpainter(sde, (3, 4), **options)(key, score, None, data,
                                                                  jnp.zeros(4))
  x_ref, nfe_ref = sampling.get_pc_sampler(sde, (3, 4), **options)(key, score, None)
  chex.assert_trees_all_close(x, x_ref, atol=1e-6)
  assert nfe == nfe_ref == 40


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')
@pytest.mark.parametrize('name, predictor, corrector, method', [
    ('vesde', 'reverse_diffusion', 'langevin', 'tmpd'),
    ('vpsde', 'ancestral_sampling', 'langevin_batch', 'replacement'),
    ('subvpsde', 'euler_maruyama', 'none', 'tmpd'),
    ('vesde', 'none', 'ald', 'replacement')])
def test_every_predictor_and_corrector_runs(name, predictor, corrector, method):
  """Finite samples, known pixels kept, nfe as documented, for each predictor and corrector."""
  sde = SDES[name](N=50)  # DDPM's ancestral step needs beta_max / N < 1
  shape = (2, 4)
  sampler = controllable.get_pc_inpainter(sde, shape, method=method, predictor=predictor,
                                          corrector=corrector, solver_iters=2)
  data = jnp.broadcast_to(jnp.asarray(Y4, jnp.float32), shape)
  x, nfe = sampler(jax.random.key(0), gaussian_score(name, MU4, COV4), None, data,
                   jnp.asarray(MASK4))
  assert np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_allclose(np.asarray(x)[:, MASK4 > 0], data[:, MASK4 > 0], atol=1e-5)
  evals = (predictor != 'none') + (corrector != 'none')
  assert nfe == 50 * evals * (4 if method == 'tmpd' else 1)


def test_colorizer_keeps_gray_on_images():
  """(B, H, W, 3) images: the result's channel mean is the gray input's."""
  shape = (2, 4, 4, 3)
  gray = jnp.broadcast_to(jax.random.uniform(jax.random.key(0), (2, 4, 4, 1)), shape)
  score = gaussian_score('vesde', np.zeros(3), np.eye(3) * 0.3)
  colorizer = controllable.get_pc_colorizer(SDES['vesde'](N=10), shape, method='tmpd',
                                            corrector='none', solver_iters=1)
  x, _ = colorizer(jax.random.key(1), score, None, gray)
  np.testing.assert_allclose(np.asarray(x).mean(-1), np.asarray(gray)[..., 0], atol=1e-5)


def test_no_retrace_for_new_params_data_and_key():
  score = chex.assert_max_traces(gaussian_score('vesde', MU4, COV4, scaled=True), 0)
  sde, sampler = _small_inpainter('vesde', method='tmpd', corrector='none', solver_iters=1)
  data = jnp.ones((3, 4))
  with helpers.first_compile():
    x1, _ = sampler(jax.random.key(0), score, {'scale': jnp.float32(1.0)}, data,
                    jnp.asarray(MASK4))
  x2, _ = sampler(jax.random.key(1), score, {'scale': jnp.float32(0.5)}, data * 2,
                  jnp.asarray(1 - MASK4))
  assert not np.allclose(np.asarray(x1), np.asarray(x2))


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')
def test_factory_errors():
  sde = SDES['vpsde'](N=10)
  with pytest.raises(ValueError, match="task='outpaint'"):
    controllable.get_controllable_sampler('outpaint', sde, (2, 4))
  with pytest.raises(TypeError, match='guidance_scale'):
    controllable.get_controllable_sampler('inpaint', sde, (2, 4), guidance_scale=2.0)
  with pytest.raises(ValueError, match="method='dps'"):
    controllable.get_pc_inpainter(sde, (2, 4), method='dps')
  with pytest.raises(ValueError, match='3 channels'):
    controllable.get_pc_colorizer(sde, (2, 4, 4, 1))
  with pytest.raises(ValueError, match='solver_iters'):
    controllable.get_pc_inpainter(sde, (2, 4), method='tmpd', solver_iters=0)


def test_gmres_solves_per_example():
  """Exact after as many steps as the dimension, also for a non-symmetric matrix and after a
  breakdown (the identity: solved in one step); a zero right-hand side gives zero."""
  a = jnp.asarray([[[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]],
                   [[2.0, 1.5, 0.0], [-0.5, 5.0, 1.0], [0.3, 0.0, 1.0]],
                   [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
  b = jnp.asarray([[1.0, 2.0, -1.0], [3.0, -1.0, 0.5], [1.0, 2.0, 3.0]])  # the last: breakdown
  solve = lambda b: controllable.gmres(lambda p: jnp.einsum('bij,bj->bi', a, p), b, 3)
  np.testing.assert_allclose(solve(b), np.linalg.solve(np.asarray(a), np.asarray(b)[..., None])[
      ..., 0], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(solve(jnp.zeros((3, 3))), np.zeros((3, 3)))


# --- Class-conditional sampling -------------------------------------------------------------------

MIXTURE = gaussian.GaussianMixture(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 3.0]]),
    covs=np.array([[[0.6, 0.25], [0.25, 0.4]], [[0.3, -0.1], [-0.1, 0.5]],
                   [[0.5, 0.0], [0.0, 0.3]]]))


def mixture_score_fn(name):
  """The exact score of the perturbed mixture, ``sum_k p_t(k | x) grad log N_k``."""
  return MIXTURE.score_fn(name)


def mixture_logit_fn(name):
  """The exact noisy classifier ``log p_t(k | x)`` up to a constant in k."""
  return lambda params, x, t: MIXTURE.component_logits(name, x, t)


def bayes_classes(x):
  """The most probable component of each point under the clean mixture."""
  logc = mixture_logit_fn('vpsde')(None, jnp.asarray(x, jnp.float32), jnp.zeros(len(x)))
  return np.asarray(jnp.argmax(logc, axis=-1))


def expected_hit_rate(k, n=200_000):
  """P(Bayes class = k | x ~ component k), by Monte Carlo (its error, 1e-3, is allowed for)."""
  x = np.random.default_rng(k).multivariate_normal(MIXTURE.means[k], MIXTURE.covs[k], n)
  return float(np.mean(bayes_classes(x) == k))


@pytest.mark.parametrize('name', list(SDES))
def test_class_guidance_samples_the_component(name):
  n = 3000
  labels = np.arange(n) % 3
  sampler = controllable.get_pc_conditional_sampler(SDES[name](N=N_STEPS), (n, 2),
                                                    corrector='none', eps=EPS)
  x, _ = sampler(jax.random.key(0), mixture_score_fn(name), None, mixture_logit_fn(name), None,
                 labels)
  x = np.asarray(x, np.float64)
  found = bayes_classes(x)
  for k in range(3):
    xk = x[labels == k]
    # Bias 0.02: N = 500 steps and the stop at eps, as for unconditional sampling.
    assert_gaussian(xk, MIXTURE.means[k], MIXTURE.covs[k], bias=0.02)
    p = expected_hit_rate(k)
    hit = np.mean(found[labels == k] == k)
    assert abs(hit - p) <= 4.5 * np.sqrt(p * (1 - p) / len(xk)) + 0.01, (k, hit, p)


@pytest.mark.filterwarnings('ignore:corrector=.langevin. takes its step size')
def test_class_guidance_scale_zero_is_unconditional():
  sde = SDES['vesde'](N=20)
  score = mixture_score_fn('vesde')
  key = jax.random.key(2)
  cond = controllable.get_pc_conditional_sampler(sde, (4, 2), guidance_scale=0.0)
  x, nfe = cond(key, score, None, mixture_logit_fn('vesde'), None, jnp.arange(4) % 3)
  x_ref, nfe_ref = sampling.get_pc_sampler(sde, (4, 2))(key, score, None)
  chex.assert_trees_all_close(x, x_ref, atol=1e-6)
  assert nfe == nfe_ref


def test_class_sampler_no_retrace_for_new_labels_and_classifier():
  base = mixture_logit_fn('vpsde')

  @chex.assert_max_traces(n=0)
  def logit_fn(params, x, t):
    return params * base(None, x, t)

  # N = 25: reverse diffusion needs beta_max / N < 1 (at N = 10 the samples were NaN, and
  # "x1 differs from x2" held vacuously).
  sampler = controllable.get_pc_conditional_sampler(SDES['vpsde'](N=25), (4, 2),
                                                    corrector='none')
  score = mixture_score_fn('vpsde')
  with helpers.first_compile():
    x1, _ = sampler(jax.random.key(0), score, None, logit_fn, jnp.float32(1.0), jnp.zeros(4))
  x2, _ = sampler(jax.random.key(0), score, None, logit_fn, jnp.float32(2.0), jnp.ones(4))
  assert not np.allclose(np.asarray(x1), np.asarray(x2))
  with pytest.raises(ValueError, match='labels'):
    sampler(jax.random.key(0), score, None, logit_fn, jnp.float32(1.0), jnp.zeros(3))


@pytest.mark.parametrize('name', list(SDES))
def test_classifier_noise_level_is_the_sdes(name):
  """s(t) / m(t): VE's sigma(t), and the VE-equivalent sigma for VP and sub-VP."""
  t = jnp.array([1e-3, 0.3, 1.0])
  m, s = gaussian.mean_std(name, np.asarray(t, np.float64))
  np.testing.assert_allclose(controllable.classifier_noise_level(SDES[name](), t), s / m,
                             rtol=1e-5)


# --- Jobs (the command line's functions) on a tiny RGB model -------------------------

# The digits classifier config shrunk by the test recipe (tests.helpers: DDPM++ and WRN-10-1 at
# 8x8), on 3 channels, in 25 steps (DDPM's reverse-diffusion step needs beta_max / N < 1).
# Langevin's step divides by the norm of the (zero) score: no corrector.
TINY_RGB = dict(data=dict(dataset='CIFAR10', num_channels=3), model=dict(num_scales=25),
                sampling=dict(corrector='none'), eval=dict(batch_size=2))


def _tiny_rgb_workdir(tmp_path):
  """A tiny DDPM++ (8x8 RGB, 25 steps) and WRN classifier saved with zero parameters, and a
  folder of two PNG images."""
  from PIL import Image
  from sde_jax import checkpoints, models
  from sde_jax.models import classifier as classifier_lib
  config = helpers.tiny_config('digits/classifier.py', **TINY_RGB)
  # Zero parameters (the score is 0, the logits constant): the jobs' plumbing is under test,
  # and initialising for real would compile both networks once more.
  init = lambda model: jax.tree_util.tree_map(
      lambda a: np.zeros(a.shape, a.dtype),
      jax.eval_shape(lambda k: models.init_params(model, k, (1, 8, 8, 3)), jax.random.key(0)))
  params = init(models.get_model(config))
  checkpoints.save_imported(tmp_path, checkpoints.ImportedState(params, params, 1), {})
  c_params = init(classifier_lib.get_classifier(config))
  checkpoints.save_imported(tmp_path / 'classifier',
                            checkpoints.ImportedState(c_params, c_params, 1), {})
  folder = tmp_path / 'images'
  folder.mkdir()
  gen = np.random.default_rng(0)
  for i in range(2):  # 12x10: centre-cropped to 10x10, resized to 8x8
    Image.fromarray(gen.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f'{i}.png')
  return config, str(folder)


TINY_FLAGS = helpers.tiny_flags('digits/classifier.py', **TINY_RGB)


def run_ok(*argv) -> str:
  """``sde-jax argv``'s stdout; the test fails with its stderr if it fails."""
  proc = run_cli(*argv)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_commands(tmp_path):
  """sde-jax inpaint / colorize / sample --class on the tiny workdir, options from the config
  flags; a second run keeps the first one's files."""
  config, folder = _tiny_rgb_workdir(tmp_path)
  workdir = f'--workdir={tmp_path}'
  run_ok('inpaint', *TINY_FLAGS, workdir, f'--folder={folder}',
          '--config.controllable.mask=center', '--config.controllable.method=tmpd')
  out = np.load(tmp_path / 'controllable' / 'inpaint-tmpd.npz')
  np.testing.assert_array_equal(out['mask'], controllable.make_mask('center', (8, 8, 3)))
  known = out['mask'] > 0
  np.testing.assert_array_equal(out['result'][:, known], out['images'][:, known])
  first = (tmp_path / 'controllable' / 'inpaint-tmpd.npz').read_bytes()
  run_ok('colorize', *TINY_FLAGS, workdir, f'--folder={folder}', '--num_images=1')
  out = np.load(tmp_path / 'controllable' / 'colorize-replacement.npz')
  assert out['result'].shape == (1, 8, 8, 3) and out['result'].dtype == np.uint8
  np.testing.assert_array_equal(out['gray'], images.gray_images(out['images']))
  stdout = run_ok('sample', *TINY_FLAGS, workdir, '--class=7', '--num_samples=2')
  assert np.load(tmp_path / 'controllable' / 'class-7.npz')['samples'].shape == (2, 8, 8, 3)
  assert 'Wrote 2 samples of class 7' in stdout
  # A second inpainting into the same folder (in this process) keeps the first one's files.
  config.controllable.method = 'tmpd'
  controllable_jobs.inpaint_job(config, str(tmp_path), folder=folder, mask='center')
  kept = list((tmp_path / 'controllable').glob('previous-*/inpaint-tmpd.npz'))
  assert len(kept) == 1 and kept[0].read_bytes() == first
  with pytest.raises(ValueError, match='labels'):
    controllable_jobs.sample_class(config, str(tmp_path), [10])
  config.sampling.method = 'heun'
  with pytest.raises(ValueError, match="sampling.method='heun'.*--config.sampling.method=pc"):
    controllable_jobs.sample_class(config, str(tmp_path), [7])


def test_masks():
  shape = (4, 6, 1)
  assert controllable.make_mask('right_half', shape)[:, :3].all()
  assert not controllable.make_mask('right_half', shape)[:, 3:].any()
  assert controllable.make_mask('bottom_half', shape)[:2].all()
  center = controllable.make_mask('center', (8, 8, 3))
  assert not center[2:6, 2:6].any() and center.sum() == 3 * (64 - 16)
  with pytest.raises(ValueError, match="mask='top'"):
    controllable.make_mask('top', shape)


# --- The error table of docs/controllable.md ------------------------------------------------------

def error_table(num: int) -> str:
  rows = ['| task | SDE | method | mean error | covariance error |', '|---|---|---|---|---|']
  for task, names in (('inpaint', list(SDES)), ('colorize', list(SDES))):
    mean, cov = exact(task)
    for name in names:
      for method in ('replacement', 'tmpd'):
        e = errors(run(task, name, method, num=num, seed=1), mean, cov)
        rows.append(f'| {task} | {name} | {method} | {e[0]:.4f} | {e[1]:.4f} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  print(error_table(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
