"""Checkpoints by the original's numbers: which stored step of ``workdir/checkpoints`` is
checkpoint ``N``, waiting for those that do not exist yet, and the one under evaluation."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from typing import Any, Callable

import jax
from absl import logging
from etils import epath

from sde_jax import checkpoints
from sde_jax import workdir as workdir_lib
from sde_jax.checkpoints import integrity

# Seconds between two looks for a checkpoint that does not exist yet (the original's 60).
WAIT_SECONDS = 60

_ORIGINAL_NAME = re.compile(r'checkpoint_(\d+)(\.pth)?$')


def checkpoint_number(step: int, meta: dict, snapshot_freq: int) -> int:
  """The original's number of the checkpoint stored as ``step``.

  An imported checkpoint whose source file is named ``checkpoint_N`` (score_sde) or
  ``checkpoint_N.pth`` (score_sde_pytorch) is number ``N``: the original saved checkpoint ``N``
  at step ``N * snapshot_freq`` but stored a step a little past it. Any other checkpoint is
  number ``step // snapshot_freq``.

  Args:
    step: the stored step.
    meta: the checkpoint's ``meta`` item (its ``source``).
    snapshot_freq: ``training.snapshot_freq``.

  Returns:
    The checkpoint's number.
  """
  source = str(meta.get('source', ''))
  absolute = workdir_lib.is_remote(source) or os.path.isabs(source)
  match = _ORIGINAL_NAME.search(os.path.basename(source)) if absolute else None
  return int(match.group(1)) if match else step // snapshot_freq


class CheckpointIndex:
  """Read-only view of ``workdir/checkpoints``: which stored step is checkpoint ``N``.

  The manager neither saves nor deletes anything (in particular it leaves the temporary
  directories of a training job's save in progress alone). Each step is checked against its
  manifest once (:func:`sde_jax.checkpoints.integrity.verify`, on every process, which needs no
  collective): a damaged step is left out, with a warning, and :meth:`wait_for` raises its
  error rather than wait for its number.
  """

  def __init__(self, workdir: str, snapshot_freq: int):
    self.directory = workdir_lib.path(workdir) / 'checkpoints'
    self.snapshot_freq = snapshot_freq
    self.manager = None
    self.meta: dict[int, dict] = {}
    self.damaged: dict[int, checkpoints.DamagedCheckpointError] = {}

  def _manager(self):
    if self.manager is None and self.directory.is_dir():
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      self.manager = ocp.CheckpointManager(
          self.directory, item_names=checkpoints.ITEMS,
          options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0))
    return self.manager

  def _meta(self, step: int) -> dict:
    if step not in self.meta:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      self.meta[step] = dict(restored['meta'])
    return self.meta[step]

  def numbers(self) -> dict[int, tuple[int, str]]:
    """``{N: (step, source)}`` of the finished checkpoints now on disk; the smallest step where
    several have one number (the snapshot, not a later preemption checkpoint)."""
    manager = self._manager()
    if manager is None:
      return {}
    manager.reload()
    out: dict[int, tuple[int, str]] = {}
    for step in sorted(manager.all_steps(), reverse=True):
      if not self._intact(step):
        continue
      meta = self._meta(step)
      out[checkpoint_number(step, meta, self.snapshot_freq)] = (step, str(meta.get('source')))
    return out

  def _intact(self, step: int) -> bool:
    if step in self.meta:
      return True
    if step not in self.damaged:
      try:
        integrity.verify(self.manager.directory / str(step))
        return True
      except checkpoints.DamagedCheckpointError as e:
        if jax.process_index() == 0:
          logging.warning('%s Leaving it out of the evaluation.', e)
        self.damaged[step] = e
    return False

  def wait_for(self, ckpt: int) -> tuple[int, str]:
    """``(step, source)`` of checkpoint ``ckpt``, waiting until it exists.

    Raises:
      DamagedCheckpointError: if ``ckpt`` is found on disk but damaged (its number taken as
        ``step // snapshot_freq``, since its metadata may be unreadable).
    """
    warned = False
    while True:
      found = self.numbers()
      if ckpt in found:
        return found[ckpt]
      for step, error in sorted(self.damaged.items()):
        if step // self.snapshot_freq == ckpt:
          raise error
      if not warned and jax.process_index() == 0:
        logging.warning(
            'Waiting for checkpoint %d (a step in [%d, %d) of %s, or one imported from '
            'checkpoint_%d[.pth]); checkpoints there now: %s. Looking again every %d s.',
            ckpt, ckpt * self.snapshot_freq, (ckpt + 1) * self.snapshot_freq, self.directory,
            ckpt, {n: s for n, (s, _) in sorted(found.items())} or 'none', WAIT_SECONDS)
        warned = True
      time.sleep(WAIT_SECONDS)

  def close(self) -> None:
    if self.manager is not None:
      self.manager.close()


@dataclasses.dataclass
class Checkpoint:
  """One checkpoint under evaluation: its number, step, folder, and lazily restored params."""

  number: int
  step: int
  source: str
  directory: str
  restore: Callable[[], Any]

  @functools.cached_property
  def params(self):
    logging.info('Restoring checkpoint %d (step %d).', self.number, self.step)
    return self.restore()

  def path(self, name: str) -> epath.Path:
    return workdir_lib.path(self.directory) / name


def check_same_checkpoint(ckpt: Checkpoint) -> None:
  """Records which stored step ``ckpt_<N>/`` is about (``checkpoint.json``), or checks it.

  Raises:
    ValueError: if the folder holds results of another step with the same number (e.g. after
      another file was imported as checkpoint N).
  """
  path = ckpt.path('checkpoint.json')
  recorded = workdir_lib.read_json(path)
  if recorded and recorded['step'] != ckpt.step:
    raise ValueError(f'{ckpt.directory} holds results of step {recorded["step"]} '
                     f'({recorded["source"]}), but checkpoint {ckpt.number} is now step '
                     f'{ckpt.step} ({ckpt.source}); evaluate into another --eval_folder.')
  if not recorded and jax.process_index() == 0:
    workdir_lib.path(ckpt.directory).mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(path, {'step': ckpt.step, 'source': ckpt.source})
