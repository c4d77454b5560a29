"""FID, IS and KID against independent computations, the statistics files, and sharded feature
extraction (8 fake devices here; 2 processes x 2 devices in the multi-host test).

Run as ``python -m tests.test_metrics_fid extract``, this module is the multi-host test's worker.
"""

import functools
import itertools
import json
import math
import os
import subprocess
import sys
import warnings

import chex
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from sde_jax import parallel
from sde_jax.metrics import fid, inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _features(rng, n, d, shift=0.0):
  """Correlated, non-negative (post-ReLU-like) features."""
  return np.abs(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)) + shift


def _scipy_fid(mu1, s1, mu2, s2):
  """The textbook computation (pytorch-fid's): scipy's general matrix square root of S1 S2."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # sqrtm warns on singular products
    root = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def _stats(x):
  return np.mean(x, axis=0), np.cov(x, rowvar=False)  # np.cov: ddof 1


# --------------------------------------------------------------------------------------------
# Frechet distance.


def test_fid_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a, b = _features(rng, 400, 32), _features(rng, 300, 32, shift=0.1)
  expected = _scipy_fid(*_stats(a), *_stats(b))
  np.testing.assert_allclose(fid.fid_from_features(a, b), expected, rtol=1e-10)
  np.testing.assert_allclose(fid.frechet_distance(*_stats(a), *_stats(b)), expected, rtol=1e-10)
  mu, sigma = fid.feature_statistics(a.astype(np.float32))
  assert mu.dtype == sigma.dtype == np.float64


@pytest.mark.parametrize('n1,n2,d', [(20, 30, 50), (5, 8, 64)])
def test_fid_rank_deficient_covariances(n1, n2, d):
  """Fewer samples than dimensions: singular covariances (rank n - 1)."""
  rng = np.random.default_rng(n1)
  a, b = _features(rng, n1, d), _features(rng, n2, d, shift=0.3)
  ours = fid.fid_from_features(a, b)
  np.testing.assert_allclose(ours, _scipy_fid(*_stats(a), *_stats(b)), rtol=1e-7)
  # Tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2.
  (mu1, s1), (mu2, s2) = _stats(a), _stats(b)
  eig = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
  by_eig = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig))
  np.testing.assert_allclose(ours, by_eig, rtol=1e-7)


def test_fid_ill_conditioned_closed_form():
  """Covariances with a common (random) eigenbasis, eigenvalues from 0 and 1e-12 to 1e3:
  FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
  rng = np.random.default_rng(1)
  d = 40
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  a = np.concatenate([np.logspace(-12, 2, 30), np.zeros(10)])
  b = rng.permutation(np.concatenate([np.logspace(-10, 3, 35), np.zeros(5)]))
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), exact, rtol=1e-8)
  np.testing.assert_allclose(fid.trace_sqrt_product(s1, s2), np.sum(np.sqrt(a * b)), rtol=1e-6)
  np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), exact, rtol=1e-8)


def test_fid_diagonal_closed_form_and_zero():
  rng = np.random.default_rng(2)
  a, b = rng.uniform(0, 3, 16), rng.uniform(0, 3, 16)
  mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
  exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), exact,
                             rtol=1e-12)
  x = _features(rng, 100, 16)
  assert abs(fid.fid_from_features(x, x)) < 1e-10 * np.trace(np.cov(x, rowvar=False))


def test_fid_shape_errors():
  with pytest.raises(ValueError, match=r'\(3,\)'):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='at least 2'):
    fid.feature_statistics(np.zeros((1, 5)))


@pytest.mark.parametrize('metric', ['fid', 'inception_score', 'kid', 'kid_and_std'])
def test_metrics_refuse_non_finite_rows(metric):
  """Before: FID and KID came out NaN, the Inception Score NaN or finite (an inf logit is a
  confident class), without an error. The message names how many rows and which."""
  x = _features(np.random.default_rng(0), 6, 4)
  bad = x.copy()
  bad[1, 0], bad[4, 2] = np.nan, np.inf
  call = {'fid': lambda a: fid.fid_from_features(x, a),
          'inception_score': fid.inception_score,
          'kid': lambda a: fid.kernel_inception_distance(x, a),
          'kid_and_std': lambda a: fid.kernel_inception_distance_and_std(a, x)}[metric]
  assert math.isfinite(np.ravel(call(x))[0])
  with pytest.raises(FloatingPointError, match=r'2 of 6 .* \(indices 1, 4\)'):
    call(bad)


# --------------------------------------------------------------------------------------------
# Inception Score.


def _direct_is(logits, splits):
  """Salimans et al.: exp(mean KL(p(y|x) || p(y))) per split of n // splits, averaged."""
  p = scipy.special.softmax(np.asarray(logits, np.float64), axis=1)
  size = len(p) // splits
  scores = []
  for i in range(splits):
    part = p[i * size:(i + 1) * size]
    q = part.mean(axis=0)
    scores.append(math.exp(np.mean([scipy.stats.entropy(row, q) for row in part])))
  return float(np.mean(scores))


@pytest.mark.parametrize('splits', [1, 10])
def test_inception_score_matches_direct_computation(splits):
  logits = np.random.default_rng(3).standard_normal((503, 1008)).astype(np.float32) * 4
  np.testing.assert_allclose(fid.inception_score(logits, splits=splits),
                             _direct_is(logits, splits), rtol=1e-10)


def test_inception_score_limits():
  assert fid.inception_score(np.zeros((50, 1008))) == pytest.approx(1.0)
  confident = np.full((40, 10), -1e3)
  confident[np.arange(40), np.arange(40) % 10] = 1e3  # every class equally often, surely
  assert fid.inception_score(confident) == pytest.approx(10.0)
  assert fid.inception_score(confident, splits=4) == pytest.approx(10.0)
  with pytest.raises(ValueError, match='splits'):
    fid.inception_score(np.zeros((3, 5)), splits=4)


# --------------------------------------------------------------------------------------------
# Kernel Inception Distance.


def _k(x, y):
  return (float(np.dot(x, y)) / len(x) + 1.0) ** 3


def _brute_mmd2(x, y):
  """Unbiased MMD^2, one pair at a time."""
  m, n = len(x), len(y)
  xx = sum(_k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
  yy = sum(_k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
  xy = sum(_k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def _tfgan_blocks(n, n_blocks):
  """TF-GAN's rule, written out: n // n_blocks each, the *last* n % n_blocks get one more."""
  small = n // n_blocks
  sizes = [small] * (n_blocks - n % n_blocks) + [small + 1] * (n % n_blocks)
  ends = np.cumsum(sizes)
  return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def test_kid_single_block_matches_brute_force():
  rng = np.random.default_rng(4)
  x, y = _features(rng, 30, 16), _features(rng, 40, 16, shift=0.2)
  np.testing.assert_allclose(fid.kernel_inception_distance(x, y), _brute_mmd2(x, y), rtol=1e-10)
  kid, std = fid.kernel_inception_distance_and_std(x, y)
  assert kid == pytest.approx(_brute_mmd2(x, y)) and math.isnan(std)


def test_kid_blocks_as_tfgan():
  """23 and 31 samples, blocks of at most 7: 5 blocks of sizes 4,4,5,5,5 and 6,6,6,6,7."""
  rng = np.random.default_rng(5)
  x, y = _features(rng, 23, 8), _features(rng, 31, 8, shift=0.1)
  bx, by = _tfgan_blocks(23, 5), _tfgan_blocks(31, 5)
  assert [e - s for s, e in bx] == [4, 4, 5, 5, 5] and [e - s for s, e in by] == [6, 6, 6, 6, 7]
  ests = np.array([_brute_mmd2(x[s:e], y[t:u]) for (s, e), (t, u) in zip(bx, by)])
  np.testing.assert_allclose(fid.kid_block_estimates(x, y, max_block_size=7), ests, rtol=1e-10)
  kid, std = fid.kernel_inception_distance_and_std(x, y, max_block_size=7)
  np.testing.assert_allclose([kid, std], [ests.mean(), ests.std(ddof=1) / np.sqrt(5)],
                             rtol=1e-10)


def test_kid_is_about_zero_for_one_distribution_and_checks_shapes():
  rng = np.random.default_rng(6)
  x, y = _features(rng, 1000, 8), _features(rng, 1000, 8)
  far = _features(rng, 1000, 8, shift=1.0)
  kid_same = fid.kernel_inception_distance(x, y, max_block_size=250)
  assert abs(kid_same) < 0.05 * fid.kernel_inception_distance(x, far, max_block_size=250)
  with pytest.raises(ValueError, match=r'\(3, 4\)'):
    fid.kernel_inception_distance(np.zeros((3, 4)), np.zeros((3, 5)))
  with pytest.raises(ValueError, match='at least 2 samples per block'):
    fid.kernel_inception_distance(np.zeros((3, 4)), np.zeros((30, 4)), max_block_size=10)


# --------------------------------------------------------------------------------------------
# Statistics files.


def test_stats_files_round_trip(tmp_path):
  rng = np.random.default_rng(7)
  pool, logits = rng.standard_normal((5, 2048)).astype(np.float32), rng.standard_normal((5, 1008))
  fid.save_stats(tmp_path / 'samples.npz', pool, logits)
  fid.save_stats(tmp_path / 'cifar10_stats.npz', pool)
  loaded = fid.load_stats(tmp_path / 'samples.npz')
  chex.assert_trees_all_equal(loaded, {'pool_3': pool, 'logits': logits})
  assert set(fid.load_stats(tmp_path / 'cifar10_stats.npz')) == {'pool_3'}
  np.savez(tmp_path / 'musigma.npz', mu=pool[0], sigma=np.eye(3))
  with pytest.raises(ValueError, match=r"no pool_3.*\['mu', 'sigma'\]"):
    fid.load_stats(tmp_path / 'musigma.npz')
  with pytest.raises(FileNotFoundError, match='nothere.npz'):
    fid.load_stats(tmp_path / 'nothere.npz')


def test_stats_filenames_are_the_originals():
  assert fid.stats_filename('CIFAR10') == 'cifar10_stats.npz'
  assert fid.stats_filename('CELEBA') == 'celeba_stats.npz'
  assert fid.stats_filename('LSUN', 256, 'church_outdoor') == 'lsun_church_outdoor_256_stats.npz'
  with pytest.raises(ValueError, match='category'):
    fid.stats_filename('LSUN')


# --------------------------------------------------------------------------------------------
# Feature extraction.

TINY = inception.InceptionV3(width=1 / 16, image_size=75)


def _tiny_apply(params, images):
  return TINY.apply({'params': params}, images)


@functools.lru_cache(maxsize=1)
def _tiny_params():
  return inception.init_params(jax.random.key(0), TINY)


def _images(n):
  return np.random.default_rng(8).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def test_extract_features_over_eight_devices():
  params, images = _tiny_params(), _images(21)
  expected = jax.jit(_tiny_apply)(params, images)  # all images in one unsharded batch
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  fid.sharded_feature_fn.cache_clear()  # earlier tests (the eval job) may have compiled other programs
  out = fid.extract_features(_tiny_apply, params, images, batch_size=8, mesh=mesh)  # 3 steps
  chex.assert_shape([out['pool_3'], out['logits']], [(21, 128), (21, 1008)])
  chex.assert_trees_all_close(out, jax.tree_util.tree_map(np.asarray, expected), rtol=1e-5,
                              atol=1e-6)
  again = fid.extract_features(_tiny_apply, params, images[:5], batch_size=8, mesh=mesh)
  chex.assert_trees_all_close(again, jax.tree_util.tree_map(lambda v: v[:5], out), rtol=1e-6)
  assert fid.sharded_feature_fn.cache_info().currsize == 1  # one program for both calls
  with pytest.raises(ValueError, match='multiple of the number of devices'):
    fid.extract_features(_tiny_apply, params, images, batch_size=12, mesh=mesh)


def _extract_worker():
  """Process p of 2 holds images [5p, 5p + 5) of 10 and extracts with a global batch of 4."""
  parallel.initialize()
  p = jax.process_index()
  images = _images(10)[5 * p:5 * p + 5]
  out = fid.extract_features(_tiny_apply, _tiny_params(), images, batch_size=4)
  print('RESULT ' + json.dumps({'process': p, 'devices': jax.device_count(),
                                'pool_3': out['pool_3'].tolist()}), flush=True)


def test_extract_features_over_two_processes():
  env = {**os.environ, 'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'local.py'), '-n', '2',
       '--devices-per-process', '2', '--timeout', '150', '--', sys.executable, '-m',
       'tests.test_metrics_fid', 'extract'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = [json.loads(line.split('RESULT ', 1)[1]) for line in proc.stdout.splitlines()
             if 'RESULT ' in line]
  assert sorted(r['process'] for r in results) == [0, 1]
  expected = np.asarray(jax.jit(_tiny_apply)(_tiny_params(), _images(10))['pool_3'])
  for r in results:  # every process has every image's features, process 0's first
    assert r['devices'] == 4
    np.testing.assert_allclose(np.array(r['pool_3']), expected, rtol=1e-4, atol=1e-6)


if __name__ == '__main__':
  if sys.argv[1:] != ['extract']:
    sys.exit('usage: python -m tests.test_metrics_fid extract')
  _extract_worker()
