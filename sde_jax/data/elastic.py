"""The global example order of the elastic pipelines, computed a global batch at a time.

Train: stream position ``i`` is example ``perm_e[i mod N]`` of epoch ``e = i // N``, where
``perm_e`` is a permutation of the ``N`` examples computed once per epoch (and cached):
``argsort`` of ``N`` words of Philox4x64 keyed by the job's seed, counter ``e << 128``. Global
step ``t`` of a global batch ``G`` is positions ``t G, ..., t G + G - 1``; the flip and the
dequantization noise of position ``i`` are drawn from Philox counters derived from ``i`` only
(:func:`philox_words`). So what step ``t`` holds, flips and noise included, is a function of
``(seed, t, row)`` and the data set only. A process computes the indices of its rows of a step
with NumPy in one go, reads their records in one call (``Examples.batch``) and augments the
batch at once, whatever the process count, devices or FSDP degree. Epochs follow each other in
the stream: a batch may hold the end of one and the start of the next; no example is dropped.
Nothing is stateful: a job resumed at step ``t`` reads what an uninterrupted one reads from
step ``t`` on, so the checkpoint's step *is* the position.

Eval: the split in order, ``G`` examples a global batch, the last one padded (``'mask'`` False,
``'index'`` -1); dequantization noise drawn from counters derived from the example index.

Grain (``MapDataset.range(...).map(batch of step s)``) runs the batches on read threads, ahead
of the consumer. It is imported when an elastic pipeline is built, never by ``import sde_jax``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Callable, Iterator, Sequence

import numpy as np

from sde_jax import rng
from sde_jax.data.spec import PipelineSpec
from sde_jax.data.streams import Batch, stream_seeds

# Grain's read threads, each making whole batches, at most PREFETCH_BATCHES ahead (per
# process). The in-memory sets read on the consuming thread: a batch is a few array copies.
READ_THREADS = 2
PREFETCH_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class StreamKeys:
  """The 128-bit Philox keys of one stream (train or eval): the order, the flips, the noise."""
  order: int
  flip: int
  noise: int

  @classmethod
  def of(cls, tag: int, seed: int) -> 'StreamKeys':
    """Hashed (NumPy ``SeedSequence``) from the stream's tag and the job's seed only."""
    words = stream_seeds(tag, seed, n=12)
    keys = [sum(w << (32 * j) for j, w in enumerate(words[4 * k:4 * k + 4])) for k in range(3)]
    return cls(*keys)


def philox_words(key: int, counters: np.ndarray, words: int) -> np.ndarray:
  """``(len(counters), words)`` uint64: row ``k`` is the ``words`` (a multiple of 4) outputs of
  Philox4x64 ``key`` at block counters ``c B + 1, ..., c B + B`` (``c = counters[k]``,
  ``B = words / 4``), so it depends on ``(key, c)`` only. Runs of consecutive counters are drawn
  in one call."""
  blocks = words // 4
  out = np.empty((len(counters), words), np.uint64)
  starts = np.flatnonzero(np.diff(counters, prepend=-2) != 1).tolist() + [len(counters)]
  for start, stop in zip(starts[:-1], starts[1:]):
    generator = np.random.Philox(key=key, counter=int(counters[start]) * blocks)
    out[start:stop] = generator.random_raw((stop - start) * words).reshape(-1, words)
  return out


def uniform_noise(key: int, counters: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """float32 ``(len(counters), *shape)`` in [0, 1), multiples of 2^-24, from counters: the top
  24 bits of each 32-bit half (low half first) of the Philox words (float32 holds them exactly)."""
  size = math.prod(shape)
  words = philox_words(key, counters, 4 * math.ceil(size / 8))
  halves = words.astype('<u8', copy=False).view('<u4')[:, :size] >> np.uint32(8)
  noise = np.multiply(halves, np.float32(2.0 ** -24), dtype=np.float32)
  return noise.reshape(len(counters), *shape)


@functools.lru_cache(maxsize=4)
def epoch_permutation(key: int, epoch: int, n: int) -> np.ndarray:
  """The order of epoch ``epoch`` of ``n`` examples: ``argsort`` (stable) of ``n`` Philox words
  at counter ``epoch << 128`` (Philox's specified output only, whatever NumPy's version)."""
  words = np.random.Philox(key=key, counter=epoch << 128).random_raw(n)
  order = np.argsort(words, kind='stable')
  order.flags.writeable = False
  return order


def stream_indices(key: int, positions: np.ndarray, n: int) -> np.ndarray:
  """The example indices at stream ``positions`` of a data set of ``n`` examples."""
  epochs, offsets = np.divmod(positions, n)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs).tolist():
    here = epochs == epoch
    out[here] = epoch_permutation(key, epoch, n)[offsets[here]]
  return out


def augment(images: np.ndarray, counters: np.ndarray, keys: StreamKeys, spec: PipelineSpec,
            train: bool) -> np.ndarray:
  """A left-right flip with probability 1/2 (train, if configured), then ``(255 x + u) / 256``,
  ``u ~ U[0, 1)`` (if configured); example ``k`` drawn from ``counters[k]`` only. ``images``
  (a batch the caller owns) is changed in place."""
  images = np.asarray(images, np.float32)
  if train and spec.random_flip:
    flip = philox_words(keys.flip, counters, 4)[:, 0] >> np.uint64(63) == 1
    images[flip] = images[flip, :, ::-1]
  if spec.dequantize:  # in place: (255 x + u) / 256, the same float32 operations
    images *= np.float32(255)
    images += uniform_noise(keys.noise, counters, images.shape[1:])
    images /= np.float32(256)
  return images


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


def _iterate(make: Callable[[int], Batch], steps: range, threads: int) -> Iterator[Batch]:
  """``make(s)`` for ``s`` in ``steps``, in order: on Grain's read threads, or inline."""
  if threads == 0:
    return map(make, steps)
  import grain  # pylint: disable=g-import-not-at-top
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=PREFETCH_BATCHES)
  dataset = grain.MapDataset.range(steps.start, steps.stop).map(make)
  return iter(dataset.to_iter_dataset(options))


def train_batches(examples, spec: PipelineSpec, start_step: int,
                  rows: Sequence[int] | None = None, threads: int = READ_THREADS
                  ) -> Iterator[Batch]:
  """This process's rows of the global train batches from global step ``start_step``, forever.

  Args:
    examples: the data set, random access (:class:`sde_jax.data.random_access.Examples`):
      ``examples.batch(indices)`` is {'image': float32 (n, H, W, C) in [0, 1], 'label': int32,
      'index': the indices}.
    spec: the checked call; ``batch_size * process_count`` is the global batch.
    start_step: the first global step (a resumed job's).
    rows: this process's rows of each global batch; default ``[p B, (p + 1) B)``.
    threads: Grain's read threads (0: read on the calling thread).

  Raises:
    ValueError: if the data set is smaller than one global batch.
  """
  global_batch = spec.batch_size * spec.process_count
  n = len(examples)
  if n < global_batch:
    raise ValueError(f'{spec.dataset} holds {n} training examples, fewer than one '
                     f'batch of {global_batch} (the global batch: {spec.process_count} '
                     f'process(es) x {spec.batch_size}).')
  keys = StreamKeys.of(rng.DATA_TRAIN, spec.seed)
  local = np.asarray(process_rows(spec, rows), np.int64)

  def make(step: int) -> Batch:
    positions = step * global_batch + local
    batch = examples.batch(stream_indices(keys.order, positions, n))
    batch['image'] = augment(batch['image'], positions, keys, spec, train=True)
    return batch

  return _iterate(make, range(start_step, sys.maxsize), threads)


def eval_batches(examples, spec: PipelineSpec, rows: Sequence[int] | None = None,
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
  n = len(examples)
  keys = StreamKeys.of(rng.DATA_EVAL, spec.seed)
  local = np.asarray(process_rows(spec, rows), np.int64)

  def make(step: int) -> Batch:
    positions = step * global_batch + local
    mask = positions < n
    batch = {'image': np.zeros((len(local), *spec.example_shape), np.float32),
             'label': np.zeros(len(local), np.int32), 'index': np.where(mask, positions, -1),
             'mask': mask}
    if mask.any():
      real = examples.batch(positions[mask])
      batch['image'][mask] = augment(real['image'], positions[mask], keys, spec, train=False)
      batch['label'][mask] = real['label']
    return batch

  num_batches = math.ceil(n / global_batch)
  return num_batches, _iterate(make, range(num_batches), threads)
