"""orbax's CheckpointManager, with each saved step sealed by its manifest of hashes
(:mod:`sde_jax.checkpoints.integrity`) before orbax commits it."""

from __future__ import annotations

import dataclasses

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sde_jax.checkpoints import integrity

# Where orbax writes a step before committing it on a file system with atomic renames; on
# gs:// it writes the final directory and commits with a commit_success.txt file.
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class SealedManager(ocp.CheckpointManager):
  """A CheckpointManager whose saves each end with ``<step>/manifest.json``.

  orbax runs the post-finalisation callback on process 0 alone, after every process has written
  its files (a barrier) and the items are finalised (OCDBT manifests merged), and before the
  step is committed (renamed, or marked with commit_success.txt). So the manifest covers every
  process's files, and a step that orbax lists as finished always holds its manifest; if the
  callback fails, orbax never commits the step and ``wait_until_finished`` raises.
  """

  def __init__(self, directory, *, options: ocp.CheckpointManagerOptions, **kwargs):
    self._saving: int | None = None  # the step of the save in flight; read by _seal
    async_options = dataclasses.replace(options.async_options or ocp.AsyncOptions(),
                                        post_finalization_callback=self._seal)
    super().__init__(directory, options=dataclasses.replace(options, async_options=async_options),
                     **kwargs)

  def save(self, step: int, *args, **kwargs) -> bool:
    # The previous save's callback must have read its own step before this one is recorded.
    self.wait_until_finished()
    self._saving = step
    return super().save(step, *args, **kwargs)

  def reached_preemption(self, step: int) -> bool:
    """Always False: the training loop saves on preemption itself
    (:class:`sde_jax.train.preemption.Preemption`).

    orbax's own answer asks JAX's preemption sync manager about ``step`` (from ``save`` and
    again from its finalize thread). The sync manager stops at one more than the largest value
    any host has passed it, and only at that exact value, so a checkpoint step passed here
    would move the point the hosts agree on past the loop's per-call counter: no host would
    ever reach it, and a preempted job would not save.
    """
    del step
    return False

  def _seal(self) -> None:
    step = self._saving
    final = epath.Path(self.directory) / str(step)
    pending = final.parent / (final.name + _TMP_SUFFIX)
    step_dir = pending if pending.exists() else final
    if not step_dir.exists():
      raise FileNotFoundError(f'neither {pending} nor {final} exists after saving step {step}; '
                              'cannot write its manifest.')
    path = integrity.write_manifest(step_dir, step)
    logging.info('Wrote the manifest of step %d: %s', step, path)
