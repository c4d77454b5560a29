"""Preemption: SIGTERM on any host, or the TPU preemption notice shared by all hosts."""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
  """Context manager that turns SIGTERM into a request to save and stop.

  In a multi-process job, JAX's preemption service receives SIGTERM on any host and agrees a
  step at which all hosts stop (``reached_preemption_sync_point``); a Python handler would
  replace its own, so one is installed only in single-process jobs.
  """

  def __init__(self):
    self.requested = False
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

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step``; call at every step the loop sees."""
    if self.requested:
      return True
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # the preemption service is disabled
      return False
