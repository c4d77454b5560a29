"""TEMPORARY (merge): global batches until data/global_batches.py lands."""
from __future__ import annotations
from typing import Iterator
import jax
import numpy as np
from sde_jax import parallel
from sde_jax import data as data_lib
Array = jax.Array


def stacked_batches(config, per_process: int, n_steps: int, start_step: int, mesh,
                    keys: tuple[str, ...] = ('image',)) -> Iterator[dict]:
  """Global arrays ``{key: (n_steps, B, ...)}`` of ``n_steps`` training batches from
  ``start_step`` (images in [0, 1]), for one compiled call of a trainer.

  Each process reads its own part of each batch; batch ``s`` is the same whether the job started
  at 0 or resumed at ``s``.
  """
  it = data_lib.get_dataset(config, 'train', batch_size=per_process, seed=config.seed,
                            start_step=start_step)
  sharding = parallel.steps_sharding(mesh)
  while True:
    parts = [next(it) for _ in range(n_steps)]
    yield {k: jax.make_array_from_process_local_data(sharding, np.stack([p[k] for p in parts]))
           for k in keys}


def train_batches(config, per_process: int, start_step: int, mesh) -> Iterator[Array]:
  """The images of :func:`stacked_batches`, ``training.n_jitted_steps`` batches per item."""
  return (batch['image'] for batch in stacked_batches(
      config, per_process, config.training.n_jitted_steps, start_step, mesh))


def eval_batches(config, per_process: int, mesh) -> Iterator[dict]:
  """Global batches ``{'image', 'mask'}`` of the eval split (mask: real, not padding examples);
  starts over when the split ends."""
  while True:
    for batch in data_lib.get_dataset(config, 'eval', batch_size=per_process, seed=config.seed):
      yield parallel.host_local_to_global({'image': batch['image'], 'mask': batch['mask']}, mesh)
