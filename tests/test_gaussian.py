"""The tests' Gaussian oracle (tests/gaussian.py) against a second way of computing each value.

Its exact score (eigenbasis of each covariance) is checked against the matrix-inverse score
``GaussianMixture.score_t`` and against automatic differentiation of the density
``log_prob_t``; its noisy-classifier logits against the density; its numpy (float64) path
against its jax path. The first two checks moved here from tests/test_sampling.py
(``gaussian_score``) and tests/test_controllable.py (the mixture helpers), with their
tolerances, when the copies of the score in those modules were replaced by the oracle.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import gaussian

NAMES = ('vesde', 'vpsde', 'subvpsde')
MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
MIXTURE = gaussian.GaussianMixture(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 3.0]]),
    covs=np.array([[[0.6, 0.25], [0.25, 0.4]], [[0.3, -0.1], [-0.1, 0.5]],
                   [[0.5, 0.0], [0.0, 0.3]]]))


def _inverse_score(mixture, name, x, t):
  """``mixture.score_t`` (matrix inverses) for x of shape (B, ..., d), copies folded into the
  batch."""
  flat = x.reshape(-1, x.shape[-1])
  reps = flat.shape[0] // x.shape[0]
  return mixture.score_t(name, flat, jnp.repeat(t, reps)).reshape(x.shape)


@pytest.mark.parametrize('name', NAMES)
def test_gaussian_score_matches_inverse_formula(name):
  """(B, R, d): R copies of the 2-D Gaussian per example."""
  mixture = gaussian.GaussianMixture.single(MEAN, COV)
  x = jax.random.normal(jax.random.key(0), (5, 3, 2)) * 3.0
  t = jnp.array([1e-3, 0.1, 0.4, 0.7, 1.0])
  chex.assert_trees_all_close(gaussian.score_fn(name, MEAN, COV)(None, x, t),
                              _inverse_score(mixture, name, x, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_mixture_score_and_logits_match_the_density(name):
  x = jax.random.normal(jax.random.key(0), (4, 2)) * 2.0
  t = jnp.array([1e-3, 0.2, 0.6, 1.0])
  chex.assert_trees_all_close(MIXTURE.score_fn(name)(None, x, t), MIXTURE.score_t(name, x, t),
                              rtol=1e-4, atol=1e-5)
  logits = MIXTURE.component_logits(name, x, t)
  chex.assert_trees_all_close(jax.nn.logsumexp(logits, axis=-1), MIXTURE.log_prob_t(name, x, t),
                              rtol=1e-5, atol=1e-5)
  # The score is the gradient of the log-density (autodiff of the inverse-based density).
  grad = jax.grad(lambda v: jnp.sum(MIXTURE.log_prob_t(name, v, t)))(x)
  chex.assert_trees_all_close(MIXTURE.score_fn(name)(None, x, t), grad, rtol=1e-4, atol=1e-5)


def test_one_draw_per_example_of_image_shape():
  """A Gaussian in d = H W C dimensions reads each (H, W, C) example as one d-vector."""
  rs = np.random.default_rng(0)
  a = rs.normal(size=(4, 4)) * 0.4
  mean, cov = rs.uniform(-0.5, 0.5, size=4), a @ a.T + 0.05 * np.eye(4)
  x = jax.random.normal(jax.random.key(1), (3, 2, 2, 1))
  t = jnp.array([1e-3, 0.5, 1.0])
  mixture = gaussian.GaussianMixture.single(mean, cov)
  expected = mixture.score_t('vpsde', x.reshape(3, 4), t).reshape(x.shape)
  chex.assert_trees_all_close(gaussian.score_fn('vpsde', mean, cov)(None, x, t), expected,
                              rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_numpy_path_is_float64_and_agrees(name):
  x = np.random.default_rng(2).normal(size=(4, 3, 2)) * 2.0
  t = np.array([1e-3, 0.2, 0.6, 1.0])
  for score in (gaussian.score_fn(name, MEAN, COV), MIXTURE.score_fn(name)):
    out = score(None, x, t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, score(None, jnp.asarray(x, jnp.float32), jnp.asarray(t)),
                               rtol=1e-4, atol=1e-5)
  # Closed form of the one Gaussian, in float64: -(m^2 COV + s^2 I)^{-1} (x - m MEAN).
  m, s = gaussian.mean_std(name, t)
  expected = np.stack([-(x[i] - m[i] * MEAN) @ np.linalg.inv(m[i]**2 * COV + s[i]**2 * np.eye(2))
                       for i in range(4)])
  np.testing.assert_allclose(gaussian.score_fn(name, MEAN, COV)(None, x, t), expected,
                             rtol=1e-10, atol=1e-12)


def test_scale_calls_and_traces():
  """params are an input of the compiled score (one trace serves every scale); ``calls``
  counts its runtime evaluations."""
  calls = []
  score = gaussian.score_fn('vesde', MEAN, COV, scaled=True, calls=calls)
  x, t = jnp.ones((2, 2)), jnp.array([0.3, 0.6])
  chex.clear_trace_counter()
  run = jax.jit(chex.assert_max_traces(score, 1))
  exact = gaussian.score_fn('vesde', MEAN, COV)(None, x, t)
  chex.assert_trees_all_close(run({'scale': 2.0}, x, t), 2.0 * exact, rtol=1e-6)
  run({'scale': 0.5}, x, t)
  jax.effects_barrier()
  assert len(calls) == 2
  # The losses' fourth argument (a dropout key) is accepted and ignored.
  chex.assert_trees_all_close(score({'scale': 1.0}, x, t, jax.random.key(0)), exact)
