"""The bits/dim stage: the probability-flow ODE likelihood of uniformly dequantized data
(``ckpt_<N>/bpd_<r>.npz``, one file per batch and pass)."""

from __future__ import annotations

import math

import jax
import numpy as np

from sde_jax import parallel
from sde_jax import workdir as workdir_lib
from sde_jax import data as data_lib
from sde_jax.evaluate.checkpoint_index import Checkpoint
from sde_jax.evaluate.programs import EvalPrograms
from sde_jax.evaluate.progress import progress_bar
from sde_jax.evaluate.settings import EvalSettings

Array = jax.Array


def eval_bpd(ckpt: Checkpoint, programs: EvalPrograms, config, settings: EvalSettings,
             key: Array) -> dict | None:
  """Bits/dim of uniformly dequantized data under the probability-flow ODE, over
  ``bpd_repeats`` passes of the split; one file per batch and pass.

  In pass p, example i of the split is dequantized with ``fold_in(fold_in(key, p), 0)`` and
  probed with ``fold_in(fold_in(key, p), 1)``, each folded with ``i``. Batches whose file
  exists are skipped.

  Args:
    ckpt: the checkpoint under evaluation.
    programs: the job's compiled programs.
    config: the job's config.
    settings: its :class:`EvalSettings` (split, passes).
    key: the bits/dim stream's key.

  Returns:
    The bits/dim summary (mean, standard error, passes, values, NFE) on process 0; None
    elsewhere.
  """
  split = 'eval' if settings.bpd_split == 'test' else 'train'
  per_process = programs.batch // jax.process_count()
  n_batches, _ = data_lib.whole_split(config, split, per_process)
  total = n_batches * settings.bpd_repeats
  paths = [ckpt.path(f'bpd_{r}.npz') for r in range(total)]
  done = parallel.process_zero_view([p.exists() for p in paths])
  with progress_bar(total, int(done.sum()), 'batch', f'ckpt {ckpt.number} bits/dim',
                    done.all()) as bar:
    for repeat in range(settings.bpd_repeats):
      rounds = range(repeat * n_batches, (repeat + 1) * n_batches)
      if all(done[r] for r in rounds):
        continue
      k_dequantize, k_probe = jax.random.split(jax.random.fold_in(key, repeat))
      # zip: the batches whose rounds are counted above, should a pipeline yield more.
      for b, local in zip(range(n_batches), data_lib.whole_split(config, split, per_process)[1]):
        if done[rounds[b]]:
          continue
        first = b * programs.batch
        images = parallel.host_local_to_global(local['image'], programs.mesh)
        data = programs.dequantize(k_dequantize, images, first)
        bpd, _, nfe = programs.likelihood(k_probe, programs.score_model.score_fn, ckpt.params,
                                          data, first_index=first)
        bpd = parallel.gather(bpd)[parallel.gather_mask(local['mask'])]
        if jax.process_index() == 0:
          workdir_lib.save_npz(paths[rounds[b]], bpd=bpd, nfe=np.asarray(nfe))
        bar.update(1)
  if jax.process_index() != 0:
    return None
  files = [workdir_lib.load_npz(p) for p in paths]
  bpd = np.concatenate([f['bpd'] for f in files])
  return {'bpd': float(bpd.mean()), 'bpd_sem': float(bpd.std(ddof=1) / math.sqrt(len(bpd)))
          if len(bpd) > 1 else None, 'bpd_split': settings.bpd_split,
          'bpd_repeats': settings.bpd_repeats, 'bpd_values': int(len(bpd)),
          'bpd_nfe': float(np.mean([f['nfe'] for f in files]))}
