"""The sampling stage: samples in rounds (``ckpt_<N>/samples_<r>.npz``), their Inception
features (``statistics_<r>.npz``), FID / IS / KID against the data set, and ``grid.png``."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from sde_jax import images as images_lib
from sde_jax import parallel, viz
from sde_jax import workdir as workdir_lib
from sde_jax.evaluate.checkpoint_index import Checkpoint
from sde_jax.evaluate.inception_net import Inception
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.progress import progress_bar
from sde_jax.evaluate.settings import EvalSettings
from sde_jax.metrics import fid

Array = jax.Array
GRID_SIZE = 64  # samples in a checkpoint's grid.png


def eval_samples(ckpt: Checkpoint, programs: EvalPrograms, settings: EvalSettings,
                 net: Inception, data_pools: np.ndarray | None, key: Array) -> dict | None:
  """``num_samples`` samples in rounds of ``programs.batch``, their Inception features, and
  FID / IS / KID of the first ``num_samples`` against ``data_pools``.

  Rounds whose ``statistics_<r>.npz`` exists are skipped.

  Args:
    ckpt: the checkpoint under evaluation.
    programs: the job's compiled programs.
    settings: the job's settings (``num_samples``).
    net: the Inception network.
    data_pools: the data set's ``pool_3`` features (process 0; None elsewhere).
    key: ``key(seed)``: sample i draws from ``fold_in(key, i)``.

  Returns:
    The sampler and :func:`sample_metrics` on process 0; None elsewhere.
  """
  batch, mesh = programs.batch, programs.mesh
  rounds = math.ceil(settings.num_samples / batch)
  stats = [ckpt.path(f'statistics_{r}.npz') for r in range(rounds)]
  done = parallel.process_zero_view([p.exists() for p in stats])
  per_process = batch // jax.process_count()
  mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  with progress_bar(rounds * batch, int(done.sum()) * batch, 'img',
                    f'ckpt {ckpt.number} samples', done.all()) as bar:
    for r in np.flatnonzero(~done):
      images, nfe = programs.draw(key, ckpt.params, int(r) * batch)
      # uint8 as the original: clip(x * 255).astype(uint8), truncating.
      images = images_lib.to_uint8(parallel.gather(images))
      if jax.process_index() == 0:
        workdir_lib.save_npz(ckpt.path(f'samples_{r}.npz'), samples=images, nfe=np.asarray(nfe))
      out = net.features(images[mine], batch, mesh)
      if jax.process_index() == 0:
        workdir_lib.save_npz(stats[r], pool_3=out['pool_3'], logits=out['logits'])
      bar.update(batch)
  if jax.process_index() != 0:
    return None
  return {'sampler': programs.sampler_name, 'sampling_method': programs.method,
          **sample_metrics(ckpt, rounds, settings.num_samples, data_pools)}


def sample_metrics(ckpt: Checkpoint, rounds: int, num_samples: int,
                   data_pools: np.ndarray) -> dict:
  """FID, IS and KID of the first ``num_samples`` samples, as the original computes them (all
  samples at once; KID and FID with the data set first); writes ``grid.png``.

  Args:
    ckpt: the checkpoint, whose folder holds the rounds' files.
    rounds: how many rounds there are.
    num_samples: how many samples count.
    data_pools: the data set's ``pool_3`` features.

  Returns:
    The metrics, the mean NFE and the grid's path (relative to the eval folder).
  """
  files = [workdir_lib.load_npz(ckpt.path(f'statistics_{r}.npz')) for r in range(rounds)]
  pools = np.concatenate([f['pool_3'] for f in files])[:num_samples]
  logits = np.concatenate([f['logits'] for f in files])[:num_samples]
  kid, kid_sem = fid.kernel_inception_distance_and_std(data_pools, pools)
  nfe = [float(np.mean(workdir_lib.load_npz(ckpt.path(f'samples_{r}.npz'), 'nfe')['nfe']))
         for r in range(rounds)]
  write_grid(ckpt, rounds, min(num_samples, GRID_SIZE))
  return {'num_samples': num_samples, 'fid': fid.fid_from_features(data_pools, pools),
          'inception_score': fid.inception_score(logits), 'kid': kid,
          'kid_sem': kid_sem if math.isfinite(kid_sem) else None,  # one block: no estimate
          'nfe': float(np.mean(nfe)), 'grid': os.path.join(os.path.basename(ckpt.directory),
                                                           'grid.png')}


def write_grid(ckpt: Checkpoint, rounds: int, count: int) -> None:
  """``grid.png``: the first ``count`` samples.

  Args:
    ckpt: the checkpoint, whose folder holds the rounds' samples.
    rounds: how many rounds there are.
    count: how many samples the grid shows.
  """
  images = []
  for r in range(rounds):
    images.append(workdir_lib.load_npz(ckpt.path(f'samples_{r}.npz'))['samples'])
    if sum(len(x) for x in images) >= count:
      break
  viz.image_grid_png(ckpt.path('grid.png'), np.concatenate(images)[:count])
