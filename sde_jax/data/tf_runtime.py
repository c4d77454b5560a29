"""TensorFlow as the tf.data pipelines use it: imported on first use, kept off the GPUs (they
belong to JAX), deterministic, on a bounded share of the cores."""

from __future__ import annotations

import functools
import os
from typing import Callable


def load_tensorflow():
  """TensorFlow, imported on first use and kept off the GPUs (they belong to JAX)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _hide_gpus(tf)
  return tf


def without_autograph(fn: Callable) -> Callable:
  """Marks a tf.data map function as plain TF code: no Python control flow for AutoGraph."""
  return load_tensorflow().autograph.experimental.do_not_convert(fn)


@functools.cache
def _hide_gpus(tf) -> None:
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF has initialised its devices already; nothing to change then
    pass


def _num_cpus() -> int:
  """The cores this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def pipeline_options():
  """Deterministic order; decoding on at most half the cores (max 32), one thread per op."""
  options = load_tensorflow().data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, min(32, _num_cpus() // 2))
  options.threading.max_intra_op_parallelism = 1
  return options
