"""FID, Inception Score and KID from Inception features, with the original's conventions.

The original evaluation (score_sde ``run_lib.evaluate``) runs the Inception network over all
samples, keeps ``pool_3`` (2048 features) and ``logits`` (1008), and calls TF-GAN on all of
them at once:

* FID: ``tfgan.eval.frechet_classifier_distance_from_activations(data_pools, sample_pools)``,
  float64, unbiased (``n - 1``) covariances -> :func:`fid_from_features`.
* IS: ``tfgan.eval.classifier_score_from_logits(logits)`` over all samples as one split,
  softmax over all 1008 logits in float64 -> :func:`inception_score` with ``splits=1``.
* KID: ``tfgan.eval.kernel_classifier_distance_from_activations(data_pools, sample_pools)``,
  the unbiased MMD^2 of the kernel ``(x.y / d + 1)^3`` averaged over blocks of at most 1024
  samples -> :func:`kernel_inception_distance`.

The data set's features are stored as in the original, an ``.npz`` with key ``pool_3``
(:func:`save_stats`, :func:`load_stats`); samples' files add ``logits``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sde_jax import nonfinite, parallel

# Every metric refuses non-finite inputs: a NaN would make it NaN, or (as a black image) bias it.
NO_METRIC = 'No metric is computed on them.'

# --------------------------------------------------------------------------------------------
# Frechet distance.


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance (``n - 1``) of ``(n, d)`` features, in float64.

  Raises:
    ValueError: for fewer than 2 vectors or not (n, d).
    FloatingPointError: for a vector with a NaN or an infinity (all metrics refuse them).
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'Expected at least 2 feature vectors as an (n, d) array, got {x.shape}.')
  nonfinite.check_rows(x, 'feature vectors', NO_METRIC)
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric PSD matrix; negative rounding noise -> 0."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``Tr sqrt(S1 S2)`` of symmetric PSD ``S1, S2``, as ``Tr sqrt(A S2 A)`` with ``A = S1^1/2``.

  ``S1 S2`` and ``A S2 A`` have the same eigenvalues, and the latter is symmetric PSD, so its
  eigenvalues are real and non-negative up to rounding (clipped at 0): no complex square root
  of a non-symmetric matrix, and rank-deficient covariances (fewer samples than dimensions) are
  handled exactly. TF-GAN computes the same quantity with SVDs.
  """
  a = _psd_sqrt(np.asarray(sigma1, np.float64))
  m = a @ np.asarray(sigma2, np.float64) @ a
  eigenvalues = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance of two Gaussians, in float64:
  ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr sqrt(S1 S2)``.

  Args:
    mu1: mean of the first Gaussian, shape (d,).
    sigma1: its covariance ``S1``, shape (d, d), symmetric PSD.
    mu2: mean of the second Gaussian, shape (d,).
    sigma2: its covariance ``S2``, shape (d, d), symmetric PSD.

  Returns:
    The squared Frechet (2-Wasserstein) distance, a Python float.

  Raises:
    ValueError: if the shapes do not agree.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[-1] if mu1.ndim == 1 else -1
  if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'Expected means (d,) and covariances (d, d) of one d; got {mu1.shape}, '
                     f'{sigma1.shape}, {mu2.shape}, {sigma2.shape}.')
  mean_term = float(np.sum((mu1 - mu2) ** 2))
  return (mean_term + float(np.trace(sigma1) + np.trace(sigma2))
          - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID of two sets of ``pool_3`` features (TF-GAN's
  ``frechet_classifier_distance_from_activations``)."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# --------------------------------------------------------------------------------------------
# Inception Score.


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def _log_score(logits: np.ndarray) -> float:
  """``E_x KL(p(y|x) || p(y))``, ``p(y)`` the mean of ``p(y|x)`` over ``logits``' rows."""
  log_p = _log_softmax(logits)
  p = np.exp(log_p)
  log_q = np.log(p.mean(axis=0))
  kl = np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=1)
  return float(np.mean(kl))


def inception_score(logits: np.ndarray, splits: int = 1) -> float:
  """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y|x) = softmax(logits)`` over all classes, float64.

  Args:
    logits: ``(n, classes)``; for the FID Inception all 1008 outputs, as TF-GAN takes them.
    splits: 1 (the original: TF-GAN on all samples at once) or ``k``, the mean score over ``k``
      consecutive parts of ``n // k`` samples (Salimans et al.'s code; a remainder is dropped).

  Raises:
    ValueError: for logits that are not (n, classes) with ``n >= splits >= 1``.
    FloatingPointError: for a row with a NaN or an infinity.
  """
  x = np.asarray(logits, np.float64)
  if x.ndim != 2 or splits < 1 or len(x) < splits:
    raise ValueError(f'Expected (n, classes) logits with n >= splits >= 1; got {x.shape} and '
                     f'splits={splits}.')
  nonfinite.check_rows(x, 'logit vectors', NO_METRIC)
  size = len(x) // splits
  return float(np.mean([math.exp(_log_score(x[i * size:(i + 1) * size]))
                        for i in range(splits)]))


# --------------------------------------------------------------------------------------------
# Kernel Inception Distance.


def _block_bounds(n: int, n_blocks: int) -> np.ndarray:
  """TF-GAN's blocks: ``n // n_blocks`` samples each, the last ``n % n_blocks`` one more."""
  small, extra = divmod(n, n_blocks)
  sizes = [small] * (n_blocks - extra) + [small + 1] * extra
  return np.concatenate([[0], np.cumsum(sizes)])


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  d = x.shape[1]
  k_xx = (x @ x.T / d + 1) ** 3
  k_yy = (y @ y.T / d + 1) ** 3
  k_xy = (x @ y.T / d + 1) ** 3
  m, n = len(x), len(y)
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
               + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) - 2 * k_xy.mean())


def kid_block_estimates(features1: np.ndarray, features2: np.ndarray,
                        max_block_size: int = 1024) -> np.ndarray:
  """The unbiased MMD^2 of each block pair, with TF-GAN's blocking, in float64.

  Both sets are cut into ``ceil(max(n1, n2) / max_block_size)`` consecutive blocks
  (:func:`_block_bounds`); block i of one set is compared with block i of the other only.

  Args:
    features1: features of one set, shape (n1, d).
    features2: features of the other, shape (n2, d).
    max_block_size: the largest block of the larger set (TF-GAN's default, 1024).

  Returns:
    The MMD^2 estimate of each block, float64 of shape (blocks,).

  Raises:
    ValueError: if the features are not (n1, d) and (n2, d) of one ``d``, or a block would hold
      fewer than 2 samples.
    FloatingPointError: for a feature vector with a NaN or an infinity.
  """
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'Expected features (n1, d) and (n2, d), got {x.shape} and {y.shape}.')
  for name, z in (('features1', x), ('features2', y)):
    nonfinite.check_rows(z, f'feature vectors of {name}', NO_METRIC)
  n_blocks = math.ceil(max(len(x), len(y)) / max_block_size)
  bx, by = _block_bounds(len(x), n_blocks), _block_bounds(len(y), n_blocks)
  if min(np.diff(bx).min(), np.diff(by).min()) < 2:
    raise ValueError(f'KID needs at least 2 samples per block; got {len(x)} and {len(y)} '
                     f'samples in {n_blocks} blocks.')
  return np.array([_mmd2_unbiased(x[bx[i]:bx[i + 1]], y[by[i]:by[i + 1]])
                   for i in range(n_blocks)])


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              max_block_size: int = 1024) -> float:
  """KID: mean over blocks of the unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``.

  ``MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
  - 2 sum_{i, j} k(x_i, y_j) / (m n)`` within each block (:func:`kid_block_estimates`). The
  original computes it in the features' float32; this is float64.

  Args:
    features1: features of one set, shape (n1, d).
    features2: features of the other, shape (n2, d).
    max_block_size: the largest block of the larger set (TF-GAN's default, 1024).

  Returns:
    The KID, a Python float.

  Raises:
    ValueError: as :func:`kid_block_estimates`.
  """
  return float(np.mean(kid_block_estimates(features1, features2, max_block_size)))


def kernel_inception_distance_and_std(features1: np.ndarray, features2: np.ndarray,
                                      max_block_size: int = 1024) -> tuple[float, float]:
  """KID and TF-GAN's estimate of its standard error, ``std(blocks, ddof=1) / sqrt(blocks)``
  (NaN for a single block).

  Args:
    features1: features of one set, shape (n1, d).
    features2: features of the other, shape (n2, d).
    max_block_size: the largest block of the larger set (TF-GAN's default, 1024).

  Returns:
    ``(kid, standard_error)``, Python floats.

  Raises:
    ValueError: as :func:`kid_block_estimates`.
  """
  ests = kid_block_estimates(features1, features2, max_block_size)
  std = float(np.std(ests, ddof=1) / math.sqrt(len(ests))) if len(ests) > 1 else math.nan
  return float(np.mean(ests)), std


# --------------------------------------------------------------------------------------------
# Statistics files, as the original writes them.


def stats_filename(dataset: str, image_size: int | None = None,
                   category: str | None = None) -> str:
  """The original's name of a data set's statistics file (in its ``assets/stats/``):
  ``cifar10_stats.npz``, ``celeba_stats.npz``, ``lsun_{category}_{image_size}_stats.npz``; for
  a folder of one's own images, ``folder_{image_size}_stats.npz``.

  Args:
    dataset: the data set's name (``config.data.dataset``), any case; lower-cased in the name.
    image_size: the image side in pixels; needed for LSUN and folders only, ignored otherwise.
    category: the LSUN category (e.g. ``'church_outdoor'``); needed for LSUN only.

  Returns:
    The file name, without a folder.

  Raises:
    ValueError: for LSUN without both ``category`` and ``image_size``.
  """
  name = dataset.lower()
  if name == 'lsun':
    if category is None or image_size is None:
      raise ValueError('LSUN statistics are per category and image size; pass both.')
    return f'lsun_{category}_{image_size}_stats.npz'
  if name == 'folder' and image_size is not None:
    return f'folder_{image_size}_stats.npz'
  return f'{name}_stats.npz'


def save_stats(path: str | os.PathLike, pool_3: np.ndarray,
               logits: np.ndarray | None = None) -> None:
  """Writes features as the original does: a compressed ``.npz`` with ``pool_3`` (and
  ``logits`` for samples).

  Args:
    path: the output file (``np.savez_compressed`` appends ``.npz`` if it is missing).
    pool_3: Inception ``pool_3`` features, shape (n, 2048).
    logits: Inception logits, shape (n, 1008), or None to store ``pool_3`` only (data sets).
  """
  arrays = {'pool_3': np.asarray(pool_3)}
  if logits is not None:
    arrays['logits'] = np.asarray(logits)
  np.savez_compressed(path, **arrays)


def load_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """``{'pool_3': (n, 2048)[, 'logits': (n, 1008)]}`` from a statistics file (no pickles).

  Raises:
    FileNotFoundError: naming ``path`` and how to make the file.
    ValueError: if the file has no ``pool_3`` array.
  """
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(
        f'Inception statistics not found at {path!r}: compute them from the data set '
        f'(`sde-jax fid-stats`), or take the original score_sde file of that name.')
  with epath.Path(path).open('rb') as f, np.load(f, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files if k in ('pool_3', 'logits')}
    if 'pool_3' not in arrays:
      raise ValueError(f'{path} has no pool_3 array (it holds {sorted(data.files)}); a '
                       f'statistics file stores the Inception pool_3 features of every image.')
  return arrays


# --------------------------------------------------------------------------------------------
# Feature extraction over all devices and processes.


@functools.lru_cache(maxsize=8)
def sharded_feature_fn(apply_fn: Callable, mesh: Mesh) -> Callable:
  """``apply_fn(params, images)`` jitted over ``mesh`` (weights replicated, batch split); one
  program per (network, mesh), cached."""
  return jax.jit(apply_fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.batch_sharding(mesh))


def extract_features(apply_fn: Callable[[Any, Any], dict], params: Any, images_uint8: np.ndarray,
                     batch_size: int, mesh: Mesh | None = None) -> dict[str, np.ndarray]:
  """Inception outputs of images, the batch split over every device of every process.

  Each process passes its own images (the same number on every process); they are run in
  global batches of ``batch_size`` (each process contributing ``batch_size / processes``), the
  last one padded and the padding dropped. One compiled program serves every call with the
  same ``apply_fn``, mesh and batch size.

  Args:
    apply_fn: ``(params, uint8 NHWC batch) -> {'pool_3': ..., 'logits': ...}``, e.g.
      ``lambda p, x: model.apply({'params': p}, x)`` for an ``InceptionV3`` ``model``; keep one
      function object, so that it compiles once.
    params: the network's parameters (replicated on the mesh).
    images_uint8: this process's images, ``(n, H, W, C)`` uint8.
    batch_size: the global batch, a multiple of the device and process counts.
    mesh: default ``parallel.make_mesh()`` over all devices.

  Returns:
    Every output of ``apply_fn`` as a numpy array over the images of all processes, process 0's
    first, in order; the same on every process.

  Raises:
    ValueError: if ``batch_size`` is not a multiple of the device and process counts, or the
      processes pass different numbers of images.
  """
  mesh = mesh or parallel.make_mesh()
  processes = jax.process_count()
  if batch_size % mesh.size or batch_size % processes:
    raise ValueError(f'the Inception batch size {batch_size} must be a multiple of the number '
                     f'of devices ({mesh.size}) and of processes ({processes}).')
  local_batch = batch_size // processes
  images = np.asarray(images_uint8)
  n = len(images)
  counts = np.reshape(multihost_utils.process_allgather(np.array(n)), -1)
  if np.any(counts != n):
    raise ValueError(f'every process must pass the same number of images; got '
                     f'{counts.tolist()}.')
  fn = sharded_feature_fn(apply_fn, mesh)
  params = jax.device_put(params, parallel.replicated(mesh))
  chunks = []
  for start in range(0, n, local_batch):
    chunk = images[start:start + local_batch]
    padded = np.concatenate([chunk, np.zeros((local_batch - len(chunk), *chunk.shape[1:]),
                                             chunk.dtype)]) if len(chunk) < local_batch else chunk
    out = fn(params, parallel.host_local_to_global(padded, mesh))
    chunks.append(jax.tree_util.tree_map(_gather, out))
  return jax.tree_util.tree_map(lambda *xs: _process_major(xs, n), *chunks)


def _gather(x: jax.Array) -> np.ndarray:
  """A batch-sharded global array as ``(processes, per-process batch, ...)`` numpy."""
  full = parallel.gather(x)
  return full.reshape(jax.process_count(), -1, *full.shape[1:])


def _process_major(chunks: tuple[np.ndarray, ...], n: int) -> np.ndarray:
  per_process = np.concatenate(chunks, axis=1)[:, :n]
  return per_process.reshape(-1, *per_process.shape[2:])
