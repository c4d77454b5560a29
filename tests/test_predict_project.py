"""Predict-Project sampling (sde_jax.sampling.predict_project) and its projection network
(sde_jax.projection): the sampler against an independent NumPy simulation of the rule on a
Gaussian, T = 0 against Euler-Maruyama bit for bit, the training loss's minimiser for Gaussian
data in closed form and a trained MLP reaching it, and the train-projection / sample commands on
a tiny config."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax import rng
from sde_jax import sde as sde_lib
from sde_jax import sampling
from tests import gaussian

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
SDES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.SubVPSDE}
SHAPE = (4, 8, 2)  # 4 examples of 8 copies of the 2-D Gaussian (tests/gaussian.py)


def gaussian_score(name: str, **options):
  return gaussian.score_fn(name, MEAN, COV, **options)


def pull(params, x, t):
  """A projection with params: ``T(x, t) = a (1 + t) (b - x)``, linear in x."""
  return params['a'] * (1.0 + t)[:, None, None] * (params['b'][None, None] - x)


PULL = {'a': jnp.float32(0.7), 'b': jnp.asarray([0.5, 0.25], jnp.float32)}


def zero_projection(params, x, t):
  del params, t
  return jnp.zeros_like(x)


# --- The sampler --------------------------------------------------------------------------------

@pytest.mark.parametrize('name, denoise', [('vesde', True), ('vpsde', False),
                                           ('subvpsde', True)])
def test_zero_projection_is_euler_maruyama_exactly(name, denoise):
  sde = SDES[name](N=20)
  score = gaussian_score(name)
  em = sampling.get_pc_sampler(sde, SHAPE, predictor='euler_maruyama', corrector='none',
                               denoise=denoise)
  pp = sampling.get_predict_project_sampler(sde, SHAPE, zero_projection, n_steps=20,
                                            step_size=3.0, denoise=denoise)
  key = jax.random.key(5)
  x_em, nfe_em = em(key, score, None, first_index=7)
  x_pp, nfe_pp = pp(key, score, None, None, first_index=7)
  np.testing.assert_array_equal(np.asarray(x_pp), np.asarray(x_em))
  assert (nfe_em, nfe_pp) == (20, 40)


def _f_g(name: str, t: np.ndarray, x: np.ndarray):
  """Drift and diffusion of the forward SDE, from the paper's formulas (not sde_jax.sde)."""
  b0, b1 = gaussian.BETA_MIN, gaussian.BETA_MAX
  beta = b0 + t * (b1 - b0)
  if name == 'vesde':
    lo, hi = gaussian.SIGMA_MIN, gaussian.SIGMA_MAX
    return 0.0 * x, lo * (hi / lo)**t * np.sqrt(2 * np.log(hi / lo))
  g2 = beta if name == 'vpsde' else beta * (1 - np.exp(-2 * b0 * t - (b1 - b0) * t**2))
  return -0.5 * beta * x, np.sqrt(g2)


def simulate(name: str, n: int, step_size: float, eps: float, key, first_index: int):
  """The rule of the issue in float64 NumPy, with the sampler's noises (drawn here from the
  project's key convention: prior from fold_in(k_i, PRIOR), step i from fold_in(fold_in(k_i,
  PREDICTOR), i))."""
  keys = rng.per_example_keys(key, SHAPE[0], first_index)
  z0 = np.asarray(rng.normal(rng.fold_in_all(keys, rng.PRIOR), SHAPE), np.float64)
  noise_keys = rng.fold_in_all(keys, rng.PREDICTOR)
  x = z0 * gaussian.prior_std(name)
  score = gaussian_score(name)
  dt = 1.0 / n
  for i, t in enumerate(np.linspace(1.0, eps, n)):
    f, g = _f_g(name, t, x)
    x_pred = x + (g**2 * score(None, x, np.full(SHAPE[0], t)) - f) * dt
    proj = 0.7 * (1.0 + t) * (np.array([0.5, 0.25]) - x_pred)
    x_proj = x_pred + step_size * dt * np.sqrt(g**2 / 2) * proj
    z = np.asarray(rng.normal(rng.fold_in_all(noise_keys, i), SHAPE), np.float64)
    x = x_proj + g * np.sqrt(dt) * z
  return x_proj, x


@pytest.mark.parametrize('name', sorted(SDES))
def test_matches_a_numpy_simulation_of_the_rule(name):
  n, step_size, eps = 12, 0.8, 1e-3
  sde = SDES[name](N=1000)  # n_steps overrides the SDE's N
  pp = sampling.get_predict_project_sampler(sde, SHAPE, pull, n_steps=n, step_size=step_size,
                                            eps=eps, denoise=True)
  noisy = sampling.get_predict_project_sampler(sde, SHAPE, pull, n_steps=n,
                                               step_size=step_size, eps=eps, denoise=False)
  key = jax.random.key(3)
  expected_proj, expected_x = simulate(name, n, step_size, eps, key, first_index=2)
  x_proj, nfe = pp(key, gaussian_score(name), None, PULL, first_index=2)
  x, _ = noisy(key, gaussian_score(name), None, PULL, first_index=2)
  assert nfe == 2 * n
  scale = np.abs(expected_x).max()
  np.testing.assert_allclose(x_proj, expected_proj, rtol=1e-4, atol=2e-5 * scale)
  np.testing.assert_allclose(x, expected_x, rtol=1e-4, atol=2e-5 * scale)
  # The projection moves the samples far beyond the tolerance: a sampler that ignored it fails.
  without, _ = simulate(name, n, 0.0, eps, key, first_index=2)
  assert np.abs(without - expected_proj).max() > 100 * 2e-5 * scale


def test_samples_do_not_depend_on_the_batch():
  """Sample i comes from (key, first_index + i), as the PC sampler's."""
  sde = sde_lib.VPSDE(N=10)
  score = gaussian_score('vpsde')
  whole = sampling.get_predict_project_sampler(sde, SHAPE, pull, 10, 1.0)
  half = sampling.get_predict_project_sampler(sde, (2, *SHAPE[1:]), pull, 10, 1.0)
  key = jax.random.key(0)
  x, _ = whole(key, score, None, PULL)
  y, _ = half(key, score, None, PULL, first_index=2)
  chex.assert_trees_all_close(y, x[2:], atol=1e-6)


def test_new_params_and_keys_reuse_the_compiled_program():
  traces = []
  score = gaussian_score('vesde', scaled=True, traces=traces)
  pp = sampling.get_predict_project_sampler(sde_lib.VESDE(N=5), SHAPE, pull, 5, 1.0)
  pp(jax.random.key(0), score, {'scale': jnp.float32(1.0)}, PULL)
  n = len(traces)
  other = {'a': jnp.float32(0.1), 'b': jnp.zeros(2)}
  pp(jax.random.key(1), score, {'scale': jnp.float32(0.5)}, other, first_index=4)
  assert len(traces) == n > 0


def test_get_sampler_and_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  sde = sde_lib.VPSDE(N=7)
  pp = sampling.get_sampler('predict_project', sde, SHAPE, projection_fn=pull, n_steps=3,
                            step_size=0.5)
  assert pp(jax.random.key(0), gaussian_score('vpsde'), None, PULL)[1] == 6
  config = ml_collections.ConfigDict({'sampling': {
      'method': 'predict_project', 'noise_removal': True, 'pp_n_steps': None,
      'pp_step_size': 2.0}})
  method, options = sampling.options_from_config(config, sde)
  assert (method, options) == ('predict_project', {'eps': 1e-3, 'denoise': True,
                                                   'n_steps': None, 'step_size': 2.0})
  pp = sampling.get_sampler_from_config(config, sde, SHAPE, projection_fn=pull)
  assert pp(jax.random.key(0), gaussian_score('vpsde'), None, PULL)[1] == 14  # N of the SDE
  assert sampling.describe_from_config(config) == 'predict_project (pp_step_size 2.0)'


@pytest.mark.parametrize('options, match', [
    (dict(n_steps=0, step_size=1.0), 'n_steps=0 must be an integer >= 1'),
    (dict(n_steps=4, step_size=-1.0), 'step_size=-1.0 must be finite and >= 0'),
    (dict(n_steps=4, step_size=float('nan')), 'step_size=nan'),
])
def test_bad_options(options, match):
  with pytest.raises(ValueError, match=match):
    sampling.get_predict_project_sampler(sde_lib.VPSDE(), SHAPE, pull, **options)
