"""Data-set statistics for FID (``sde-jax fid-stats``): the Inception features of every
training image, in the original's file format."""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from sde_jax import images, parallel
from sde_jax import workdir as workdir_lib
from sde_jax import data as data_lib
from sde_jax.evaluate.inception_net import load_inception
from sde_jax.evaluate.settings import EvalSettings, round_size
from sde_jax.jobs import config_check
from sde_jax.metrics import fid


def stats_paths(config, workdir: str) -> tuple[str, str]:
  """Where ``fid-stats`` writes: ``eval.stats_path`` if set, else ``workdir/<the original's
  file name>``; and the mean/covariance file beside it (``..._mean_cov.npz``)."""
  path = config.eval.get('stats_path') or os.path.join(
      workdir, fid.stats_filename(config.data.dataset, config.data.image_size,
                                  config.data.get('category')))
  stem = path[:-4] if path.endswith('.npz') else path
  return path, stem + '_mean_cov.npz'


def dataset_stats(config, workdir: str) -> str:
  """Inception features of every image of the training split, as the original's stats files.

  The images are the training pipeline's (same resize and crop), as uint8 in [0, 255]: no
  flips, no dequantization, the last partial batch kept. Writes ``pool_3`` (n, d) in the
  original's format (:func:`sde_jax.metrics.fid.save_stats`) and ``mu`` (d,), ``sigma`` (d, d)
  (float64, unbiased covariance; the names pytorch-fid's statistics files use) beside it.

  Returns:
    The path of the ``pool_3`` file.

  Raises:
    FileExistsError: if either file exists (statistics are never overwritten).
  """
  config_check.check(config, 'fid-stats')  # every field, before the workdir is touched
  settings = EvalSettings.from_config(config)
  path, mean_cov_path = stats_paths(config, workdir)
  for p in (path, mean_cov_path):
    if workdir_lib.path(p).exists():
      raise FileExistsError(f'{p} exists; statistics are never overwritten (delete it, or set '
                            '--config.eval.stats_path to another file).')
  mesh = parallel.mesh_from_config(config)
  net = load_inception(settings, mesh)
  batch = round_size(settings, mesh)
  n_batches, batches = data_lib.whole_split(config, 'train', batch // jax.process_count())
  pools = []
  with tqdm(total=n_batches, unit='batch', desc='fid-stats',
            disable=jax.process_index() != 0) as bar:
    for local in batches:
      out = net.features(images.data_to_uint8(local['image']), batch, mesh)
      pools.append(out['pool_3'][parallel.gather_mask(local['mask'])])
      bar.update(1)
  pool_3 = np.concatenate(pools)
  if jax.process_index() == 0:
    workdir_lib.path(path).parent.mkdir(parents=True, exist_ok=True)
    mu, sigma = fid.feature_statistics(pool_3)
    workdir_lib.write_atomic(path, lambda f: fid.save_stats(f, pool_3))
    workdir_lib.save_npz(mean_cov_path, mu=mu, sigma=sigma)
    logging.info('Wrote the Inception features of %d training images to %s and their mean and '
                 'covariance to %s', len(pool_3), path, mean_cov_path)
  return path
