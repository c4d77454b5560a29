"""``sde-jax sample``: draws images with the EMA weights of a workdir's latest checkpoint."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from sde_jax import checkpoints, images, parallel, sampling, viz
from sde_jax import projection as projection_lib
from sde_jax import workdir as workdir_lib
from sde_jax.jobs import config_check
from sde_jax.sampling import sharded
from sde_jax.score_model import ScoreModel

OUTPUTS = ('samples.npz', 'grid.png')


def sample(config, workdir: str, num_samples: int,
           allow_projection_mismatch: bool = False) -> str:
  """Draws ``num_samples`` images with the EMA weights of ``workdir``'s latest checkpoint.

  Sample i comes from ``fold_in(key(config.seed), i)`` whatever the batch size or device count.
  Writes ``workdir/samples/samples.npz`` (``samples``: uint8, NHWC) and ``grid.png`` (the first
  64); outputs of an earlier call move to ``samples/previous-<time>/``.

  Args:
    config: the model's config (``sampling`` picks the sampler).
    workdir: a directory with ``checkpoints/``.
    num_samples: how many images.
    allow_projection_mismatch: with ``sampling.method='predict_project'``, sample with a
      projection network trained against another score checkpoint than the one used.

  Returns:
    The path of ``samples.npz``.

  Raises:
    ValueError: if ``num_samples < 1``, or for bad config values
      (:func:`sde_jax.jobs.config_check.check`, all of them named).
    FileNotFoundError: with ``sampling.method='predict_project'``, if ``workdir/projection``
      holds no projection network (``sde-jax train-projection``).
    ValueError: with ``sampling.method='predict_project'``, if the projection network was trained
      against another score checkpoint (unless ``allow_projection_mismatch``).
  """
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples} must be positive.')
  mesh = parallel.mesh_from_config(config)
  config_check.check(config, 'sample', mesh)  # every field, before the workdir is touched
  score_model = ScoreModel.from_config(config)
  params, step = checkpoints.restore_ema(workdir, score_model.abstract_params(), mesh)
  projection = projection_lib.projection_if_used(config, workdir, score_model, mesh)
  if projection is not None:
    projection_lib.check_pairing(projection, step, workdir, allow_projection_mismatch)
  batch = sharded.sample_batch_size(config, num_samples, mesh)
  draw = sharded.sharded_sampler(config, score_model, batch, mesh, projection)
  logging.info('Sampling %d images from checkpoint %d in batches of %d with %s.', num_samples,
               step, batch, sampling.describe_from_config(config))
  key, parts = jax.random.key(config.seed), []
  with tqdm(total=num_samples, unit='img', disable=jax.process_index() != 0) as bar:
    for first in range(0, num_samples, batch):
      parts.append(images.to_uint8(parallel.gather(draw(key, params, first)[0]))
                   [:num_samples - first])
      bar.update(len(parts[-1]))
  samples = np.concatenate(parts)
  out = workdir_lib.path(workdir) / 'samples'
  if jax.process_index() == 0:
    workdir_lib.output_folder(workdir, 'samples', OUTPUTS)
    workdir_lib.write_atomic(out / 'samples.npz', lambda f: np.savez(f, samples=samples))
    viz.image_grid_png(out / 'grid.png', samples[:64])
  return str(out / 'samples.npz')
