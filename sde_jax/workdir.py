"""The one path layer: files under a workdir, local or remote (``gs://``), written whole or not at
all and never overwritten.

Every path a job reads or writes under a workdir goes through :func:`path` (an
``etils.epath.Path``, the path type orbax uses), so ``gs://bucket/run`` and ``/data/run`` behave
the same. Files appear atomically: locally they are written under a temporary name, synced, then
renamed; on an object store an upload becomes visible whole when it completes, so the bytes are
written in one upload of the finished file. A second run moves an earlier run's outputs into
``previous-<time>/`` instead of overwriting them.

Remote paths need a file-system client: on GCS, TensorFlow's gfile (used by etils when TensorFlow
is installed) or gcsfs (``pip install 'sde-jax[gcs]'``, used with ``EPATH_USE_TF=false``).
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from absl import logging
from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """``p`` as an ``epath.Path``; a local path is made absolute, a URL (``gs://...``) kept."""
  if is_remote(p):
    return epath.Path(os.fspath(p))
  return epath.Path(os.path.abspath(os.fspath(p)))


def is_remote(p: PathLike) -> bool:
  """Whether ``p`` is a URL (``gs://``, ``s3://``, ...) rather than a local path."""
  return '://' in os.fspath(p)


def write_atomic(p: PathLike, write: Callable[[Any], None]) -> None:
  """``write(binary file)``, then the bytes appear at ``p`` whole: locally through
  ``p + '.tmp'`` and a rename, remotely in one upload."""
  p = path(p)
  if is_remote(p):
    buffer = io.BytesIO()
    write(buffer)
    p.write_bytes(buffer.getvalue())
    return
  tmp = p.with_name(p.name + '.tmp')
  with open(tmp, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, p)


def write_text(p: PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``p``, atomically."""
  write_atomic(p, lambda f: f.write(text.encode()))


def append_text(p: PathLike, text: str) -> None:
  """Appends ``text`` to ``p`` (created if missing), atomically: the file is rewritten whole."""
  p = path(p)
  write_text(p, (p.read_text() if p.exists() else '') + text)


def save_npz(p: PathLike, **arrays) -> None:
  """Writes ``arrays`` into a compressed ``.npz``, atomically."""
  write_atomic(p, lambda f: np.savez_compressed(f, **arrays))


def write_json(p: PathLike, value: Any) -> None:
  """Writes ``value`` as indented JSON, atomically."""
  write_text(p, json.dumps(value, indent=1, default=str))


def read_json(p: PathLike) -> dict:
  """The JSON object in ``p``; {} if there is no such file."""
  p = path(p)
  if not p.exists():
    return {}
  return json.loads(p.read_text())


def load_npz(p: PathLike, *keys: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` (only ``keys`` if given: the others are not decompressed)."""
  with path(p).open('rb') as f, np.load(f, allow_pickle=False) as data:
    return {k: data[k] for k in keys or data.files}


def remove_temporary(directory: PathLike) -> None:
  """Deletes the temporary files that a killed job left in ``directory`` (process 0 only)."""
  directory = path(directory)
  if jax.process_index() == 0 and directory.exists():
    for pattern in ('*.tmp', '*.tmp.png'):
      for leftover in directory.glob(pattern):
        leftover.unlink()


def fresh_path(p: PathLike) -> epath.Path:
  """``p``, or ``p`` with ``-1``, ``-2``, ... before its extension if it exists."""
  p = path(p)
  stem, ext = os.path.splitext(p.name)
  n = 0
  while p.exists():
    n += 1
    p = p.with_name(f'{stem}-{n}{ext}')
  return p


def keep_previous_outputs(directory: PathLike, names: Iterable[str]) -> None:
  """Moves the files ``names`` of an earlier run into ``directory/previous-<time>/``."""
  directory = path(directory)
  existing = [f for f in names if (directory / f).exists()]
  if existing:
    backup = fresh_path(directory / time.strftime('previous-%Y%m%d-%H%M%S'))
    backup.mkdir(parents=True)
    for f in existing:
      move(directory / f, backup / f)
    logging.warning('Moved the outputs of an earlier run to %s', backup)


def move(source: PathLike, target: PathLike) -> None:
  """Renames a file or a folder. On an object store, which has no folders and no renames,
  every object under ``source`` is copied to the same name under ``target``, then deleted."""
  source, target = path(source), path(target)
  if not is_remote(source):
    source.rename(target)
    return
  if not source.is_dir():
    source.copy(target)
    source.unlink()
    return
  for file in files_under(source):
    destination = target / file.relative_to(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    file.copy(destination)
  source.rmtree()


def output_folder(workdir: PathLike, name: str, replaces: Iterable[str] = ()) -> epath.Path:
  """``workdir/name``, created, with the files ``replaces`` of an earlier run moved aside
  (:func:`keep_previous_outputs`): the folder a job writes its outputs into."""
  directory = path(workdir) / name
  directory.mkdir(parents=True, exist_ok=True)
  keep_previous_outputs(directory, replaces)
  return directory


def files_under(root: PathLike) -> list[epath.Path]:
  """Every file under the folder ``root``, at any depth, sorted. (On an object store one
  listing per folder: epath has no recursive glob there.)"""
  root = path(root)
  if not is_remote(root):
    return sorted(epath.Path(folder) / f for folder, _, files in os.walk(root) for f in files)
  found, folders = [], [root]
  while folders:
    for child in folders.pop().iterdir():
      if child.is_dir():
        folders.append(child)
      else:
        found.append(child)
  return sorted(found)


def find_files(root: PathLike, name: str) -> list[epath.Path]:
  """Every file called ``name`` under ``root``, at any depth, sorted."""
  return [f for f in files_under(root) if f.name == name]
