"""Training metrics: kept on the device until a log line, so logging never stalls the pipeline;
checked for finiteness before every checkpoint; written to stdout and TensorBoard (local or
``gs://`` event files, through the workdir's path layer)."""

from __future__ import annotations

import io
import math
import os
import time

import jax
import numpy as np
from absl import logging
from tensorboardX import record_writer

from sde_jax import workdir as workdir_lib

REMOTE_SCHEMES = ('gs',)


class _RemoteEventFile:
  """An event file on an object store: the events so far, uploaded whole at each flush (objects
  cannot be appended to), so the object is always a complete, readable event file."""

  def __init__(self, path: str):
    self.path, self.buffer = workdir_lib.path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    workdir_lib.write_atomic(self.path, lambda f: f.write(self.buffer.getvalue()))

  def close(self) -> None:
    self.flush()


class _RemoteEventFiles:
  """tensorboardX's writer factory for a URL scheme: event files through ``etils.epath``."""

  def open(self, path: str) -> _RemoteEventFile:
    return _RemoteEventFile(path)

  def directory_check(self, path: str) -> None:
    del path  # object stores have no directories to create


for _scheme in REMOTE_SCHEMES:
  record_writer.register_writer_factory(_scheme, _RemoteEventFiles())


def format_duration(seconds: float) -> str:
  """``H:MM:SS``, or days for a day or more."""
  if seconds >= 86400:
    return f'{seconds / 86400:.1f} days'
  return time.strftime('%H:%M:%S', time.gmtime(seconds))


class MetricLog:
  """Per-step metrics, checked for finiteness and written to stdout and TensorBoard."""

  def __init__(self, directory: str, global_batch: int, last_step: int):
    self.global_batch, self.last_step = global_batch, last_step
    self.pending: list[tuple[int, dict]] = []
    self.mark: tuple[int, float] | None = None  # (step, time) the speed is measured from
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(os.path.join(directory, 'tensorboard'))

  def add(self, step: int, metrics: dict) -> None:
    """Keeps the metrics of the steps that end at ``step`` (arrays of shape (n_steps,))."""
    if self.mark is None:  # the first call has just been compiled: time from here
      self.mark = (step - metrics['loss'].shape[0], time.perf_counter())
    if self.pending:
      # The device still has this call queued, but the host goes no further ahead: a SIGTERM
      # or preemption notice is then answered within two calls, not at the next log line.
      jax.block_until_ready(self.pending[-1][1])
    self.pending.append((step, metrics))

  def fetch_and_check(self) -> dict[str, float]:
    """Fetches the pending metrics; their mean over the pending steps.

    Raises:
      FloatingPointError: naming the first step whose loss or gradient norm is not finite.
    """
    fetched = jax.device_get(self.pending)
    self.pending = []
    for end, metrics in fetched:
      first = end - len(metrics['loss']) + 1
      for name in ('loss', 'grad_norm'):
        bad = np.flatnonzero(~np.isfinite(metrics[name]))
        if bad.size:
          raise FloatingPointError(f'Non-finite {name} {metrics[name][bad[0]]} at step '
                                   f'{first + bad[0]}; training stopped.')
    if not fetched:
      return {}
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}

  def write(self, step: int) -> None:
    """Checks and logs the steps since the last line: loss, lr, grad norm, speed, ETA."""
    values = self.fetch_and_check()
    now = time.perf_counter()
    steps_per_s = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
    self.mark = (step, now)
    values.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * self.global_batch)
    logging.info('step %d/%d: loss %.5g, lr %.3g, grad norm %.3g, %.2f steps/s, %.1f images/s, '
                 'ETA %s', step, self.last_step, values.get('loss', math.nan),
                 values.get('lr', math.nan), values.get('grad_norm', math.nan), steps_per_s,
                 values['images_per_s'],
                 format_duration((self.last_step - step) / max(steps_per_s, 1e-9)))
    for name, value in values.items():
      self.scalar(f'train/{name}', value, step)

  def scalar(self, name: str, value: float, step: int, echo: bool = False) -> None:
    """Writes one value to TensorBoard (process 0), and to the log if ``echo``."""
    if echo:
      logging.info('step %d: %s %.5g', step, name, value)
    if self.writer is not None:
      self.writer.add_scalar(name, value, step)

  def flush(self) -> None:
    """Writes the TensorBoard events so far to their file (at each checkpoint)."""
    if self.writer is not None:
      self.writer.flush()

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self.writer is not None:
      self.writer.close()
