"""What every pipeline's batch stream shares: batches, seeds, epochs, padded eval batches.

A batch is {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)} on the host; eval
batches add 'mask': bool (B,). A train stream is a function of (seed, process, epoch, position):
shuffles and augmentations are drawn from seeds hashed from those numbers, never from a global
random state, so a job resumed at step K reads what an uninterrupted one reads from step K.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import numpy as np

from sde_jax.data.spec import PipelineSpec

Batch = dict[str, np.ndarray]


def stream_seeds(*entropy: int, n: int) -> list[int]:
  """``n`` 32-bit seeds hashed from all of ``entropy`` (distinct tuples give unrelated seeds)."""
  return np.random.SeedSequence([e % 2**64 for e in entropy]).generate_state(n).tolist()


def steps_per_epoch(num_examples: int, spec: PipelineSpec) -> int:
  """Full batches in this process's ``num_examples``; ValueError if not even one."""
  steps = num_examples // spec.batch_size
  if steps == 0:
    raise ValueError(f'Process {spec.process_index} holds {num_examples} training examples of '
                     f'{spec.dataset}, fewer than one batch of {spec.batch_size}.')
  return steps


def epochs(make_epoch: Callable[[int, int], Iterator[Batch]], steps: int, batch_size: int,
           start_step: int) -> Iterator[Batch]:
  """Epochs one after another from global step ``start_step``.

  Args:
    make_epoch: ``make_epoch(epoch, offset)``, the batches of ``epoch`` from example ``offset``.
    steps: batches per epoch.
    batch_size: examples per batch.
    start_step: the first global step.

  Returns:
    The batches, forever.
  """
  first, step = divmod(start_step, steps)
  for epoch in itertools.count(first):
    yield from make_epoch(epoch, step * batch_size)
    step = 0


def _pad(batch: Batch, batch_size: int) -> Batch:
  """Zero-pads a batch to ``batch_size`` and adds 'mask' (True for the real examples)."""
  n = len(batch['label'])
  pad = [(0, batch_size - n)]
  return {'image': np.pad(batch['image'], pad + [(0, 0)] * (batch['image'].ndim - 1)),
          'label': np.pad(batch['label'], pad),
          'mask': np.arange(batch_size) < n}


def padded_batches(batches: Iterator[Batch], largest_shard: int,
                   spec: PipelineSpec) -> Iterator[Batch]:
  """Padded eval batches, as many as the largest shard needs, so every process yields as many.

  Args:
    batches: this process's eval batches, the last one possibly short.
    largest_shard: examples in the largest process's shard.
    spec: gives the batch size and the example shape.

  Returns:
    Batches of ``spec.batch_size`` with 'mask', ``ceil(largest_shard / batch_size)`` of them.
  """
  empty = {'image': np.zeros((0, *spec.example_shape), np.float32),
           'label': np.zeros(0, np.int32)}
  count = 0
  for batch in batches:
    count += 1
    yield _pad(batch, spec.batch_size)
  for _ in range(math.ceil(largest_shard / spec.batch_size) - count):
    yield _pad(empty, spec.batch_size)
