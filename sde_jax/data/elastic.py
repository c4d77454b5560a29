"""The global example order of the elastic pipelines, built on Grain's random-access datasets.

Train: the stream is Grain's ``MapDataset.source(examples).seed(s).shuffle().repeat()`` (each
epoch a fresh permutation, seeded ``s + epoch``, computed per index without materialising it),
then ``random_map`` of the augmentation: the generator of the example at stream position ``i``
is seeded from ``(s, i)``. Global step ``t`` of a global batch ``G`` is stream positions
``t G, ..., t G + G - 1``, so what it holds, flips and noise included, is a function of
``(seed, t, row)`` and the data set only. A process loads only its rows of each global batch
(:class:`ProcessRows`), whatever the process count, devices or FSDP degree. Epochs follow each
other in the stream: a batch may hold the end of one and the start of the next, and no example
is dropped. Nothing is stateful: a job resumed at step ``t`` reads what an uninterrupted one
reads from step ``t`` on, so the checkpoint's step *is* the position.

Eval: the split in order, ``G`` examples a global batch, the last one padded (``'mask'`` False,
``'index'`` -1); dequantization noise seeded from ``(s, example index)``.

Grain is imported when an elastic pipeline is built, never by ``import sde_jax``.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Iterator, Sequence

import grain
import numpy as np

from sde_jax import rng
from sde_jax.data.spec import PipelineSpec
from sde_jax.data.streams import Batch, stream_seeds

# Grain's read threads each make whole batches, at most PREFETCH_BATCHES ahead (per process).
# The in-memory sets read on the consuming thread: threads there only contend for the GIL.
READ_THREADS = 4
PREFETCH_BATCHES = 8


class ProcessRows(grain.MapDataset):
  """Element ``k`` of this process: row ``rows[k % B]`` of global batch ``k // B`` of ``parent``
  (``B = len(rows)``), i.e. ``parent[(k // B) * global_batch + rows[k % B]]``."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, rows: Sequence[int],
               num_batches: int | None = None):
    super().__init__(parent)
    self._global_batch = global_batch
    self._rows = [int(r) for r in rows]
    self._length = sys.maxsize if num_batches is None else num_batches * len(self._rows)

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'ProcessRows(global_batch={self._global_batch}, rows={len(self._rows)})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, len(self._rows))
    return self._parent[step * self._global_batch + self._rows[row]]


def process_rows(spec: PipelineSpec, rows: Sequence[int] | None) -> list[int]:
  """This process's rows of each global batch: ``rows``, or ``[p B, (p + 1) B)``; checked."""
  global_batch = spec.batch_size * spec.process_count
  if rows is None:
    start = spec.process_index * spec.batch_size
    return list(range(start, start + spec.batch_size))
  rows = [int(r) for r in rows]
  if (len(rows) != spec.batch_size or len(set(rows)) != len(rows)
      or not all(0 <= r < global_batch for r in rows)):
    raise ValueError(f'rows={rows[:8]}... ({len(rows)} of them); expected batch_size='
                     f'{spec.batch_size} distinct rows in [0, {global_batch}).')
  return rows


def augmenter(spec: PipelineSpec, train: bool) -> Callable[[dict, np.random.Generator], dict]:
  """``(example, generator) -> example``: a flip with probability 1/2 (train, if configured),
  then ``(255 x + u) / 256``, ``u ~ U[0, 1)`` (if configured), drawn from ``generator``."""
  def augment(example: dict, gen: np.random.Generator) -> dict:
    image = example['image']
    if train and spec.random_flip and gen.random() < 0.5:
      image = image[:, ::-1]
    if spec.dequantize:
      image = (255 * image + gen.random(image.shape, dtype=np.float32)) / 256
    return {**example, 'image': np.ascontiguousarray(image, np.float32)}
  return augment


def _seed(tag: int, spec: PipelineSpec) -> int:
  """The Grain seed (32 bits) of a stream: hashed from its tag and the job's seed only."""
  return stream_seeds(tag, spec.seed, n=1)[0]


def _iterate(local: grain.MapDataset, threads: int) -> Iterator[Batch]:
  if threads == 0:
    return (local[i] for i in range(len(local)))
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=PREFETCH_BATCHES)
  return iter(local.to_iter_dataset(options))


def train_batches(examples: Sequence, spec: PipelineSpec, start_step: int,
                  rows: Sequence[int] | None = None, threads: int = READ_THREADS
                  ) -> Iterator[Batch]:
  """This process's rows of the global train batches from global step ``start_step``, forever.

  Args:
    examples: the data set, random access: ``examples[i]`` is {'image': float32 (H, W, C) in
      [0, 1], 'label': int32, 'index': i}.
    spec: the checked call; ``batch_size * process_count`` is the global batch.
    start_step: the first global step (a resumed job's).
    rows: this process's rows of each global batch; default ``[p B, (p + 1) B)``.
    threads: Grain's read threads (0: read on the calling thread).

  Raises:
    ValueError: if the data set is smaller than one global batch.
  """
  global_batch = spec.batch_size * spec.process_count
  if len(examples) < global_batch:
    raise ValueError(f'{spec.dataset} holds {len(examples)} training examples, fewer than one '
                     f'batch of {global_batch} (the global batch: {spec.process_count} '
                     f'process(es) x {spec.batch_size}).')
  stream = (grain.MapDataset.source(examples).seed(_seed(rng.DATA_TRAIN, spec)).shuffle()
            .repeat().random_map(augmenter(spec, train=True)))
  local = ProcessRows(stream, global_batch, process_rows(spec, rows)).batch(spec.batch_size)
  return _iterate(local[start_step:], threads)


class _Padded(grain.MapDataset):
  """``parent`` followed by empty examples (zeros, 'mask' False, 'index' -1) up to ``length``;
  real examples get 'mask' True."""

  def __init__(self, parent: grain.MapDataset, length: int, empty: dict):
    super().__init__(parent)
    self._length, self._empty = length, empty

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'Padded(length={self._length})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index >= len(self._parent):
      return self._empty
    return {**self._parent[index], 'mask': True}


def eval_batches(examples: Sequence, spec: PipelineSpec, rows: Sequence[int] | None = None,
                 threads: int = READ_THREADS) -> tuple[int, Iterator[Batch]]:
  """This process's rows of the global eval batches: the split in order, once, padded.

  Args:
    examples: as :func:`train_batches`.
    spec: the checked call.
    rows: as :func:`train_batches`.
    threads: as :func:`train_batches`.

  Returns:
    ``(num_batches, batches)``: ``ceil(n / G)`` batches of ``spec.batch_size`` with 'mask' and
    'index', the same count on every process.
  """
  global_batch = spec.batch_size * spec.process_count
  num_batches = math.ceil(len(examples) / global_batch)
  empty = {'image': np.zeros(spec.example_shape, np.float32), 'label': np.int32(0),
           'index': np.int64(-1), 'mask': False}
  split = (grain.MapDataset.source(examples).seed(_seed(rng.DATA_EVAL, spec))
           .random_map(augmenter(spec, train=False)))
  padded = _Padded(split, num_batches * global_batch, empty)
  local = ProcessRows(padded, global_batch, process_rows(spec, rows), num_batches)
  return num_batches, _iterate(local.batch(spec.batch_size), threads)
