"""Evaluation: eval loss, bits/dim, and samples scored with FID / IS / KID; data-set
statistics for FID. Resumable: every round's result is a file, and a restarted job skips the
rounds whose file exists. See ``docs/evaluation.md``.

``sde-jax eval`` (:func:`sde_jax.jobs.evaluate.evaluate`) goes over the checkpoints
``eval.begin_ckpt .. eval.end_ckpt`` of ``workdir``, waiting for those that do not exist yet, as
the original's ``run_lib.evaluate`` does. Checkpoint numbers are the original's: checkpoint ``N``
is the one of step ``N * training.snapshot_freq`` (a stored step ``s`` has number ``s //
snapshot_freq``), except that a checkpoint imported from the original's ``checkpoint_N`` or
``checkpoint_N.pth`` has the number ``N`` of its file name (:func:`checkpoint_number`).

Files under ``workdir/<eval_folder>/`` (``eval`` by default)::

  config.json                 the settings that the files below depend on (a mismatch is an error)
  ckpt_<N>/checkpoint.json    the stored step that checkpoint N is (another one is an error)
  ckpt_<N>/loss.npz           per-example eval losses
  ckpt_<N>/bpd_<r>.npz        bits/dim of batch ``r % batches`` in pass ``r // batches``
  ckpt_<N>/samples_<r>.npz    uint8 samples ``r * round_size ..`` (+ the sampler's nfe)
  ckpt_<N>/statistics_<r>.npz their Inception ``pool_3`` and ``logits``
  ckpt_<N>/report.json, grid.png
  report.md, report.json      one row per checkpoint evaluated so far

Each file is written to a temporary name and renamed (:mod:`sde_jax.workdir`), so a job killed
mid-write leaves either the whole file or none.

Modules: ``settings`` (what the job reads from the config, and the folder's record of it),
``checkpoint_index`` (checkpoint numbers, waiting),
``programs`` (the compiled programs), ``loss``, ``bpd``, ``samples`` (the stages),
``inception_net`` (the Inception network and the data set's features), ``report``
(``report.md`` / ``report.json``). The jobs that run them are :mod:`sde_jax.jobs.evaluate`
(``sde-jax eval``) and :mod:`sde_jax.jobs.fid_stats` (``sde-jax fid-stats``).
"""

from sde_jax.evaluate.checkpoint_index import (WAIT_SECONDS, Checkpoint, CheckpointIndex,
                                               check_same_checkpoint, checkpoint_number)
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.settings import EvalSettings

__all__ = ['WAIT_SECONDS', 'Checkpoint', 'CheckpointIndex', 'EvalPrograms', 'EvalSettings',
           'check_same_checkpoint', 'checkpoint_number']
