"""Files under a workdir: written whole or not at all, never overwritten.

Every job writes its outputs through these helpers: files appear atomically (written under a
temporary name, then renamed), and a second run moves an earlier run's outputs into
``previous-<time>/`` instead of overwriting them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from absl import logging


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
  """``write(file)`` into ``path + '.tmp'``, then renames it to ``path``."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save_npz(path: str, **arrays) -> None:
  """Writes ``arrays`` into a compressed ``.npz``, atomically."""
  write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as indented JSON, atomically."""
  write_atomic(path, lambda f: f.write(json.dumps(value, indent=1, default=str).encode()))


def read_json(path: str) -> dict:
  """The JSON object in ``path``; {} if there is no such file."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_npz(path: str, *keys: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` (only ``keys`` if given: the others are not decompressed)."""
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in keys or data.files}


def remove_temporary(directory: str) -> None:
  """Deletes the temporary files that a killed job left in ``directory`` (process 0 only)."""
  if jax.process_index() == 0:
    for pattern in ('*.tmp', '*.tmp.png'):
      for path in glob.glob(os.path.join(directory, pattern)):
        os.remove(path)


def fresh_path(path: str) -> str:
  """``path``, or ``path`` with ``-1``, ``-2``, ... before its extension if it exists."""
  stem, ext = os.path.splitext(path)
  n = 0
  while os.path.exists(path):
    n += 1
    path = f'{stem}-{n}{ext}'
  return path


def keep_previous_outputs(directory: str, names: Iterable[str]) -> None:
  """Moves the files ``names`` of an earlier run into ``directory/previous-<time>/``."""
  existing = [f for f in names if os.path.exists(os.path.join(directory, f))]
  if existing:
    backup = fresh_path(os.path.join(directory, time.strftime('previous-%Y%m%d-%H%M%S')))
    os.makedirs(backup)
    for f in existing:
      shutil.move(os.path.join(directory, f), os.path.join(backup, f))
    logging.warning('Moved the outputs of an earlier run to %s', backup)


def output_folder(workdir: str, name: str, replaces: Iterable[str] = ()) -> str:
  """``workdir/name``, created, with the files ``replaces`` of an earlier run moved aside
  (:func:`keep_previous_outputs`): the folder a job writes its outputs into."""
  directory = os.path.join(workdir, name)
  os.makedirs(directory, exist_ok=True)
  keep_previous_outputs(directory, replaces)
  return directory
