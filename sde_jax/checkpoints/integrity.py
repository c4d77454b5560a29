"""Integrity of sde-jax's checkpoints: a manifest of hashes per step, checked before a restore.

orbax writes no checksum of its own over a whole checkpoint: its zarr3 layout puts tensorstore's
crc32c codec on the shard index only (not on the chunk bytes), its default OCDBT layout has
none, and its JSON files (``_METADATA``, ``meta/metadata``, ...) are never checked. So each step
gets ``checkpoints/<step>/manifest.json``: the size and SHA-256 of every file of the step (array
chunks, OCDBT files, every orbax metadata file, the ``meta`` item), written by process 0 after
every process has written its part and orbax has finalised the step, and before orbax commits
it (:class:`sde_jax.checkpoints.sealed_manager` hooks orbax's post-finalisation callback). A
committed step therefore always holds its manifest; only two files are not hashed, because
orbax rewrites them at the commit itself: ``commit_success.txt`` (no data) and the top-level
``_CHECKPOINT_METADATA`` (timestamps), which must still parse as JSON.

A step written before manifests existed (its ``meta`` has no ``integrity`` field) restores
unverified, with a warning. A step whose ``meta`` says it had a manifest but has none, or whose
manifest is unreadable or lists no file (every step holds at least its ``meta`` item), is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

import jax
import numpy as np
from absl import logging
from etils import epath

from sde_jax import workdir as workdir_lib
from sde_jax.checkpoints.errors import CheckpointError

MANIFEST = 'manifest.json'
FORMAT = 'sde-jax checkpoint manifest 1'
# What `meta` records, so that a step whose manifest went missing is known to have had one.
META_FIELD = 'integrity'
META_VALUE = f'sha256 {MANIFEST}'
# Files orbax rewrites while committing the step, after the manifest is written.
UNHASHED = ('commit_success.txt', '_CHECKPOINT_METADATA')
_CHUNK = 16 << 20


class DamagedCheckpointError(CheckpointError):
  """A checkpoint step whose files differ from its manifest (or that cannot be checked)."""

  def __init__(self, directory: epath.Path, file: str, problem: str):
    self.directory, self.file, self.problem = directory, file, problem
    super().__init__(f'checkpoint {directory} is damaged: {file}: {problem}.')


def file_hash(path: epath.Path) -> tuple[int, str]:
  """``(size in bytes, SHA-256 hex digest)`` of ``path``, read in 16 MiB pieces."""
  digest, size = hashlib.sha256(), 0
  with path.open('rb') as f:
    while piece := f.read(_CHUNK):
      digest.update(piece)
      size += len(piece)
  return size, digest.hexdigest()


def _files(step_dir: epath.Path) -> dict[str, epath.Path]:
  """The files under ``step_dir`` that the manifest covers, by path relative to it."""
  return {path.relative_to(step_dir).as_posix(): path
          for path in workdir_lib.files_under(step_dir)
          if path.name not in UNHASHED and path != step_dir / MANIFEST}


def write_manifest(step_dir: str | os.PathLike, step: int) -> epath.Path:
  """Hashes every file of ``step_dir`` into ``step_dir/manifest.json``; returns its path.

  Args:
    step_dir: the directory of one checkpoint step, complete (every process's files written).
    step: its step, recorded in the manifest.

  Raises:
    FileNotFoundError: if ``step_dir`` holds no file to list.
  """
  step_dir = workdir_lib.path(step_dir)
  found = _files(step_dir)
  if not found:  # verify() calls such a step damaged: never seal one
    raise FileNotFoundError(f'{step_dir} holds no file to list in its manifest; orbax wrote '
                            f'nothing for step {step}.')
  files = {}
  for name, path in sorted(found.items()):
    size, digest = file_hash(path)
    files[name] = {'bytes': size, 'sha256': digest}
  path = step_dir / MANIFEST
  path.write_text(json.dumps({'format': FORMAT, 'step': step, 'files': files}, indent=1))
  return path


def _read_json(step_dir: epath.Path, name: str):
  try:
    return json.loads((step_dir / name).read_text())
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise DamagedCheckpointError(step_dir, name, f'unreadable ({type(e).__name__}: {e})') from e


def _check_file(step_dir: epath.Path, name: str, path: epath.Path | None, want) -> None:
  """Raises DamagedCheckpointError unless ``path`` exists with the size and hash ``want``."""
  if path is None:
    raise DamagedCheckpointError(step_dir, name, 'missing')
  if not isinstance(want, dict) or not {'bytes', 'sha256'} <= set(want):
    raise DamagedCheckpointError(step_dir, MANIFEST, f'its entry of {name} is {want!r}')
  size, digest = file_hash(path)
  if size != want['bytes']:
    raise DamagedCheckpointError(step_dir, name, f'{size} bytes, the manifest says '
                                                 f'{want["bytes"]}')
  if digest != want['sha256']:
    raise DamagedCheckpointError(step_dir, name, f'sha256 {digest[:12]}..., the manifest says '
                                                 f'{want["sha256"][:12]}...')


def verify(step_dir: str | os.PathLike) -> bool:
  """Checks every file of ``step_dir`` against its manifest.

  Args:
    step_dir: the directory of one checkpoint step.

  Returns:
    True if the step matches its manifest; False if it was written without one (by a version
    of sde-jax before manifests), so could not be checked.

  Raises:
    DamagedCheckpointError: naming the first file found missing, truncated, changed or
      unreadable (the manifest and ``meta`` included).
  """
  step_dir = workdir_lib.path(step_dir)
  if not (step_dir / MANIFEST).exists():
    meta = _read_json(step_dir, 'meta/metadata')
    if isinstance(meta, dict) and META_FIELD in meta:
      raise DamagedCheckpointError(step_dir, MANIFEST, 'missing (meta says it was written)')
    return False
  manifest = _read_json(step_dir, MANIFEST)
  if not (isinstance(manifest, dict) and manifest.get('format') == FORMAT
          and isinstance(manifest.get('files'), dict)):
    raise DamagedCheckpointError(step_dir, MANIFEST, f'not a manifest of format {FORMAT!r}')
  if not manifest['files']:  # every step holds its items' files, at least meta/metadata
    raise DamagedCheckpointError(step_dir, MANIFEST, 'lists no files (a step holds at least its '
                                 'meta item), so nothing of the step can be checked')
  found = _files(step_dir)
  for name, want in manifest['files'].items():
    _check_file(step_dir, name, found.get(name), want)
  if (step_dir / UNHASHED[1]).exists():
    _read_json(step_dir, UNHASHED[1])
  extra = sorted(set(found) - set(manifest['files']))
  if extra:  # orbax reads only the files its metadata names, all of which are listed
    logging.warning('Checkpoint %s holds files its manifest does not list (not read): %s',
                    step_dir, extra[:5])
  return True


def newest_intact(directory: epath.Path, steps: Iterable[int]):
  """The newest of ``steps`` under ``directory`` that is intact, and the newer damaged ones.

  Each damaged step is logged as a warning naming it and its damaged file; a step without a
  manifest counts as intact, with a warning that it is unverified.

  Returns:
    ``(step or None, [DamagedCheckpointError of each newer step, newest first])``.
  """
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      if not verify(directory / str(step)):
        logging.warning('Checkpoint %s has no %s (written by an older sde-jax): restoring it '
                        'unverified.', directory / str(step), MANIFEST)
      return step, damaged
    except DamagedCheckpointError as e:
      logging.warning('%s Falling back to an older step.', e)
      damaged.append(e)
  return None, damaged


def agreed(value: int) -> int:
  """``value`` of process 0, on every process (integrity is checked by process 0 alone, so
  that every host restores the same step and the files are read once)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def choose_step(directory: epath.Path, steps: Iterable[int], step: int | None = None):
  """The step to restore: ``step``, checked, or the newest intact of ``steps``; agreed by all
  processes.

  Args:
    directory: the checkpoints' directory (``workdir/checkpoints``).
    steps: the steps there.
    step: a step asked for; None: the newest intact one.

  Returns:
    ``(step, [DamagedCheckpointError of each newer damaged step])`` (the list on process 0).

  Raises:
    FileNotFoundError: if there are no steps.
    CheckpointError: if ``step`` is damaged, or every step is.
  """
  steps = sorted(steps)
  if not steps:
    raise FileNotFoundError(f'no checkpoint under {directory}.')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'no checkpoint {step} under {directory}; there are {steps}.')
  candidates = steps if step is None else [step]
  chosen, damaged = -1, []
  if jax.process_index() == 0:
    found, damaged = newest_intact(directory, candidates)
    chosen = -1 if found is None else found
  chosen = agreed(chosen)
  if chosen >= 0:
    return chosen, damaged
  if step is not None:
    raise damaged[0] if damaged else CheckpointError(f'checkpoint {directory / str(step)} is '
                                                     'damaged (see process 0).')
  raise CheckpointError(
      f'every checkpoint under {directory} is damaged ({len(steps)} steps: '
      + ('; '.join(f'{e.directory.name}: {e.file}: {e.problem}' for e in damaged) or
         'see process 0') + '); nothing to restore. Move them aside (or delete them) to start '
      'afresh, or use another --workdir.')
