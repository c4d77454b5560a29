"""Preemption: SIGTERM on any host, or the TPU preemption notice shared by all hosts."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
  """Context manager that turns SIGTERM (or a preemption notice) into a request to save and stop.

  One process: a Python SIGTERM handler sets a flag.

  Several processes: JAX's preemption sync manager (started by ``jax.distributed.initialize``)
  receives SIGTERM on any host and tells every host through the coordination service. Each
  host then takes ``max + 1`` as the sync point, where ``max`` is the largest value any host had
  passed to ``reached_preemption_sync_point``, and that function returns True only for a value
  *equal* to the sync point. So :meth:`reached` passes a counter of its own calls, which grows by
  exactly one per compiled call on every host from the same start, never the optimizer step: that
  grows by ``n_jitted_steps`` and would jump over the sync point (no save at all). A Python
  SIGTERM handler would replace the sync manager's, so none is installed then. (orbax's
  CheckpointManager would ask the same sync manager about each checkpoint's step; the job's
  manager, :class:`~sde_jax.checkpoints.sealed_manager.SealedManager`, does not.)
  """

  def __init__(self):
    self.requested = False
    self.calls = 0
    self._previous = None

  def __enter__(self) -> 'Preemption':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving the current step, then stopping.')
    self.requested = True

  def reached(self) -> bool:
    """Whether to save and stop now; call once after every compiled call, on every host."""
    self.calls += 1
    if self.requested:
      return True
    try:
      return bool(multihost_utils.reached_preemption_sync_point(self.calls))
    except RuntimeError:  # the preemption service is disabled
      return False
