"""Global-array batches for jitted programs over a mesh: stacked train batches (one compiled call
runs several steps) and the eval split, each process reading only its own part."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np

from sde_jax import parallel
from sde_jax.data import pipeline


def stacked_batches(config, per_process: int, n_steps: int, start_step: int, mesh,
                    keys: tuple[str, ...] = ('image',)) -> Iterator[dict]:
  """Global arrays ``{key: (n_steps, B, ...)}`` of ``n_steps`` training batches from
  ``start_step`` (images in [0, 1]), for one compiled call of a trainer.

  Each process reads only the rows of each global batch that its devices hold (for the elastic
  data sets, global batch ``s`` is the same at any layout); batch ``s`` is the same whether the
  job started at 0 or resumed at ``s``.

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
  sharding = parallel.steps_sharding(mesh)
  rows = sharded_rows(sharding, (n_steps, per_process * jax.process_count()), axis=1)
  it = pipeline.get_dataset(config, 'train', batch_size=per_process, seed=config.seed,
                            start_step=start_step, rows=rows)
  while True:
    parts = [next(it) for _ in range(n_steps)]
    yield {k: jax.make_array_from_process_local_data(sharding, np.stack([p[k] for p in parts]))
           for k in keys}


# The dtypes of a batch's entries (sde_jax.data.get_dataset), for compile-time arguments.
BATCH_DTYPES = {'image': np.float32, 'label': np.int32, 'mask': np.bool_}


def abstract_stacked_batches(n_steps: int, batch: int, example_shape: tuple[int, ...], mesh,
                             keys: tuple[str, ...] = ('image',)) -> dict:
  """What :func:`stacked_batches` yields, as ``ShapeDtypeStruct`` leaves with their shardings:
  ``{key: (n_steps, batch, ...)}`` for a global ``batch`` (compiling ahead of time)."""
  shapes = {'image': tuple(example_shape), 'label': (), 'mask': ()}
  sharding = parallel.steps_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((n_steps, batch, *shapes[k]), BATCH_DTYPES[k],
                                  sharding=sharding) for k in keys}


def abstract_eval_batch(batch: int, example_shape: tuple[int, ...], mesh) -> dict:
  """What :func:`eval_batches` yields, as ``ShapeDtypeStruct`` leaves with their shardings."""
  sharding = parallel.batch_sharding(mesh)
  return {'image': jax.ShapeDtypeStruct((batch, *example_shape), BATCH_DTYPES['image'],
                                        sharding=sharding),
          'mask': jax.ShapeDtypeStruct((batch,), BATCH_DTYPES['mask'], sharding=sharding)}


class Prefetch:
  """Draws the items of an iterator ahead on a background thread, at most ``depth`` of them.

  Meant for the training loop (the next global batch read, stacked and sent to the devices
  while the current step runs); not wired in yet: the loop's SIGTERM test then stopped calls
  late (see docs/benchmarks.md). ``bench/bench_input.py`` uses it. The order is the iterator's.
  An exception raised by the iterator is raised again by the ``next`` call that would have
  returned its item; :meth:`close` stops the thread.
  """

  _DONE = object()

  def __init__(self, iterator: Iterator, depth: int = 2):
    if depth < 1:
      raise ValueError(f'Prefetch depth={depth}; expected at least 1.')
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True,
                                    name='sde-jax-prefetch')
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, iterator: Iterator) -> None:
    try:
      for item in iterator:
        if not self._put((item, None)):
          return
    except BaseException as error:  # pylint: disable=broad-except  (re-raised by __next__)
      self._put((None, error))
      return
    self._put((self._DONE, None))

  def __iter__(self):
    return self

  def __next__(self):
    item, error = self._queue.get()
    if error is not None:
      raise error
    if item is self._DONE:
      raise StopIteration
    return item

  def close(self) -> None:
    """Stops the thread (it finishes the item it is drawing) and drops what it had drawn."""
    self._stop.set()
    self._thread.join()
    while not self._queue.empty():
      self._queue.get_nowait()

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()


def eval_batches(config, per_process: int, mesh) -> Iterator[dict]:
  """Global batches ``{'image', 'mask'}`` of the eval split (mask: real, not padding examples);
  starts over when the split ends. For the elastic data sets, global batch ``j`` is the same
  examples at any layout (:func:`sde_jax.data.get_dataset`).

  Args:
    config: the job's config (``data.*``; ``seed`` seeds the dequantization noise).
    per_process: examples per batch of this process.
    mesh: the device mesh; the batch axis is split over all of it.

  Returns:
    The global batches, forever.
  """
  rows = sharded_rows(parallel.batch_sharding(mesh), (per_process * jax.process_count(),), 0)
  while True:
    for batch in pipeline.get_dataset(config, 'eval', batch_size=per_process, seed=config.seed,
                                      rows=rows):
      yield parallel.host_local_to_global({'image': batch['image'], 'mask': batch['mask']}, mesh)


def sharded_rows(sharding, shape: tuple[int, ...], axis: int, devices=None) -> list[int]:
  """The indices along ``axis`` of a global array of ``shape`` that ``devices`` (default: this
  process's) hold, sorted: the rows of each global batch this process loads."""
  indices = sharding.devices_indices_map(shape)
  devices = sharding.addressable_devices if devices is None else set(devices)
  held = [index for device, index in indices.items() if device in devices]
  return sorted({r for index in held for r in range(*index[axis].indices(shape[axis]))})
