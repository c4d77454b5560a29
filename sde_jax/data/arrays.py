"""The toy distributions' pipelines: fresh train points each global step, and a fixed eval set
read as in-memory arrays (:mod:`sde_jax.data.elastic`, as the digits are)."""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import jax
import numpy as np

from sde_jax import rng
from sde_jax.data.spec import PipelineSpec
from sde_jax.data.streams import Batch
from sde_jax.data.toys import sample_toy

TOY_EVAL_SIZE = 10_000  # points in a toy distribution's fixed eval set


_sample_toy_jit = jax.jit(sample_toy, static_argnums=(0, 2))


def toy_train(spec: PipelineSpec, start_step: int, rows: Sequence[int]) -> Iterator[Batch]:
  """Fresh points each step: global batch k is drawn with key (seed, train, k), and this process
  keeps its ``rows`` of it (a global batch of 2-D points costs next to nothing to draw)."""
  key = jax.random.fold_in(jax.random.key(spec.seed), rng.DATA_TRAIN)
  global_batch = spec.batch_size * spec.process_count
  labels = np.zeros(spec.batch_size, np.int32)
  for step in itertools.count(start_step):
    points = _sample_toy_jit(spec.dataset, jax.random.fold_in(key, step), global_batch)
    yield {'image': np.asarray(points, np.float32)[np.asarray(rows)], 'label': labels}


def toy_eval_points(spec: PipelineSpec) -> tuple[np.ndarray, np.ndarray]:
  """A fixed set of ``TOY_EVAL_SIZE`` points drawn with key (seed, eval), and zero labels."""
  key = jax.random.fold_in(jax.random.key(spec.seed), rng.DATA_EVAL)
  points = np.asarray(_sample_toy_jit(spec.dataset, key, TOY_EVAL_SIZE), np.float32)
  return points, np.zeros(TOY_EVAL_SIZE, np.int32)
