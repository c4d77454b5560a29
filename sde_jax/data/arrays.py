"""In-memory pipelines: shuffled epochs and padded eval passes over arrays (the digits, a toy
set's eval points), and the toy distributions' fresh train points.

Process p owns rows p, p + P, p + 2P, ... of the arrays. Flips and dequantization are drawn with
NumPy generators seeded from (stream, seed, process, epoch, position) (see
:mod:`sde_jax.data.streams`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator

import jax
import numpy as np

from sde_jax import rng
from sde_jax.data.spec import PipelineSpec
from sde_jax.data.streams import Batch, epochs, padded_batches, steps_per_epoch, stream_seeds
from sde_jax.data.toys import sample_toy

TOY_EVAL_SIZE = 10_000  # points in a toy distribution's fixed eval set


def _augment(images: np.ndarray, gen: np.random.Generator, spec: PipelineSpec, train: bool):
  """Flips (train only) and dequantization of a NumPy batch, as configured."""
  if train and spec.random_flip:
    flip = gen.random(len(images)) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if spec.dequantize:
    images = (255 * images + gen.random(images.shape, dtype=np.float32)) / 256
  return images.astype(np.float32)


def _array_epoch(x, y, spec: PipelineSpec, epoch: int, offset: int) -> Iterator[Batch]:
  """One shuffled epoch of (x, y) from example ``offset`` on."""
  order_seed, augment_seed = stream_seeds(rng.DATA_TRAIN, spec.seed, spec.process_index, epoch,
                                          n=2)
  order = np.random.default_rng(order_seed).permutation(len(x))
  for start in range(offset, len(x) - spec.batch_size + 1, spec.batch_size):
    rows = order[start:start + spec.batch_size]
    gen = np.random.default_rng([augment_seed, start])
    yield {'image': _augment(x[rows], gen, spec, train=True), 'label': y[rows]}


def array_train(x, y, spec: PipelineSpec, start_step: int) -> Iterator[Batch]:
  """Train batches of in-memory arrays, this process's rows, reshuffled each epoch.

  Args:
    x: all examples (N, ...).
    y: their labels (N,).
    spec: the checked call.
    start_step: the first global step (a resumed job's).

  Returns:
    Batches of ``spec.batch_size``, forever; each epoch drops its last partial batch.
  """
  x, y = x[spec.process_index::spec.process_count], y[spec.process_index::spec.process_count]
  steps = steps_per_epoch(len(x), spec)
  return epochs(functools.partial(_array_epoch, x, y, spec), steps, spec.batch_size, start_step)


def array_eval(x, y, spec: PipelineSpec) -> Iterator[Batch]:
  """Eval batches of in-memory arrays: this process's rows in order, once, zero-padded.

  Args:
    x: all examples (N, ...).
    y: their labels (N,).
    spec: the checked call.

  Returns:
    Batches of ``spec.batch_size`` with 'mask', as many on every process.
  """
  largest_shard = math.ceil(len(x) / spec.process_count)
  x, y = x[spec.process_index::spec.process_count], y[spec.process_index::spec.process_count]
  (augment_seed,) = stream_seeds(rng.DATA_EVAL, spec.seed, spec.process_index, n=1)

  def batches():
    for start in range(0, len(x), spec.batch_size):
      gen = np.random.default_rng([augment_seed, start])
      yield {'image': _augment(x[start:start + spec.batch_size], gen, spec, train=False),
             'label': y[start:start + spec.batch_size]}

  return padded_batches(batches(), largest_shard, spec)


_sample_toy_jit = jax.jit(sample_toy, static_argnums=(0, 2))


def toy_train(spec: PipelineSpec, start_step: int) -> Iterator[Batch]:
  """Fresh points each step: batch k of process p is drawn with key (seed, train, p, k)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed), rng.DATA_TRAIN),
                           spec.process_index)
  labels = np.zeros(spec.batch_size, np.int32)
  for step in itertools.count(start_step):
    points = _sample_toy_jit(spec.dataset, jax.random.fold_in(key, step), spec.batch_size)
    yield {'image': np.asarray(points, np.float32), 'label': labels}


def toy_eval(spec: PipelineSpec) -> Iterator[Batch]:
  """A fixed set of ``TOY_EVAL_SIZE`` points drawn with key (seed, eval), sharded by row."""
  key = jax.random.fold_in(jax.random.key(spec.seed), rng.DATA_EVAL)
  points = np.asarray(_sample_toy_jit(spec.dataset, key, TOY_EVAL_SIZE), np.float32)
  return array_eval(points, np.zeros(TOY_EVAL_SIZE, np.int32), spec)
