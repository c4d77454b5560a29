"""Global-array batches for jitted programs over a mesh: stacked train batches (one compiled call
runs several steps) and the eval split, each process reading only its own part."""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from sde_jax import parallel
from sde_jax.data import pipeline


def stacked_batches(config, per_process: int, n_steps: int, start_step: int, mesh,
                    keys: tuple[str, ...] = ('image',)) -> Iterator[dict]:
  """Global arrays ``{key: (n_steps, B, ...)}`` of ``n_steps`` training batches from
  ``start_step`` (images in [0, 1]), for one compiled call of a trainer.

  Each process reads its own part of each batch; batch ``s`` is the same whether the job started
  at 0 or resumed at ``s``.

  Args:
    config: the job's config (``data.*``; ``seed`` seeds the stream).
    per_process: examples per batch of this process.
    n_steps: batches stacked into one item.
    start_step: the first global step (a resumed job's).
    mesh: the device mesh; the batch axis is split over all of it.
    keys: the batch entries to keep ('image', 'label').

  Returns:
    The stacked global batches, forever.
  """
  it = pipeline.get_dataset(config, 'train', batch_size=per_process, seed=config.seed,
                            start_step=start_step)
  sharding = parallel.steps_sharding(mesh)
  while True:
    parts = [next(it) for _ in range(n_steps)]
    yield {k: jax.make_array_from_process_local_data(sharding, np.stack([p[k] for p in parts]))
           for k in keys}


def eval_batches(config, per_process: int, mesh) -> Iterator[dict]:
  """Global batches ``{'image', 'mask'}`` of the eval split (mask: real, not padding examples);
  starts over when the split ends.

  Args:
    config: the job's config (``data.*``; ``seed`` seeds the dequantization noise).
    per_process: examples per batch of this process.
    mesh: the device mesh; the batch axis is split over all of it.

  Returns:
    The global batches, forever.
  """
  while True:
    for batch in pipeline.get_dataset(config, 'eval', batch_size=per_process, seed=config.seed):
      yield parallel.host_local_to_global({'image': batch['image'], 'mask': batch['mask']}, mesh)
