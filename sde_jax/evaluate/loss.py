"""The eval loss stage: the training loss of the EMA weights on every example of the eval
split (``ckpt_<N>/loss.npz``)."""

from __future__ import annotations


import jax
import numpy as np

from sde_jax import parallel
from sde_jax import workdir as workdir_lib
from sde_jax import data as data_lib
from sde_jax.evaluate.checkpoint_index import Checkpoint
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.progress import progress_bar

Array = jax.Array


def eval_loss(ckpt: Checkpoint, programs: EvalPrograms, config, key: Array) -> dict | None:
  """The loss of the EMA weights on every example of the eval split (as the original: its
  dequantization if ``data.uniform_dequantization``); batch b draws from ``fold_in(key, b)``.

  Skipped if ``loss.npz`` exists.

  Args:
    ckpt: the checkpoint under evaluation.
    programs: the job's compiled programs.
    config: the job's config.
    key: the loss stream's key.

  Returns:
    ``{'loss', 'loss_examples'}`` on process 0; None elsewhere.
  """
  path = ckpt.path('loss.npz')
  if not parallel.process_zero_view([path.exists()])[0]:
    n_batches, batches = data_lib.whole_split(config, 'eval', programs.batch // jax.process_count(),
                                       dequantize=None)
    losses = []
    with progress_bar(n_batches, 0, 'batch', f'ckpt {ckpt.number} loss') as bar:
      for b, local in enumerate(batches):
        images = parallel.host_local_to_global(local['image'], programs.mesh)
        per_example = parallel.gather(programs.loss(ckpt.params, jax.random.fold_in(key, b),
                                                    images))
        losses.append(per_example[parallel.gather_mask(local['mask'])])
        bar.update(1)
    if jax.process_index() == 0:
      all_losses = np.concatenate(losses)
      workdir_lib.save_npz(path, all_losses=all_losses, mean_loss=all_losses.mean())
  if jax.process_index() != 0:
    return None
  all_losses = workdir_lib.load_npz(path)['all_losses']
  return {'loss': float(np.mean(all_losses)), 'loss_examples': int(len(all_losses))}
