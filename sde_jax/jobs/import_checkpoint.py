"""``sde-jax import``: an original checkpoint (score_sde ``checkpoint_N`` or score_sde_pytorch
``.pth``) read by :func:`sde_jax.checkpoints.import_original` and stored as an orbax checkpoint."""

from __future__ import annotations

import os

from sde_jax import checkpoints
from sde_jax import workdir as workdir_lib
from sde_jax.jobs import config_check


def import_to_workdir(config, checkpoint: str, workdir: str,
                      max_pth_bytes: int | None = None) -> str:
  """``sde-jax import``: reads an original checkpoint and stores it as an orbax checkpoint.

  Args:
    config: the config the checkpoint was trained with.
    checkpoint: the original file (score_sde ``checkpoint_N`` or score_sde_pytorch ``.pth``).
    workdir: where to write ``checkpoints/<step>``; an existing step is never overwritten.
    max_pth_bytes: for a ``.pth``, the reader's budget for its arrays (by default 4 times the
      file's size plus 16 MiB; raise it only for a file you trust).

  Returns:
    The directory of the written checkpoint.
  """
  config_check.check(config, 'import', checkpoint=checkpoint)  # before the workdir is touched
  state = checkpoints.import_original(checkpoint, config, max_pth_bytes)
  count = checkpoints.num_params(state.params)
  source = os.fspath(workdir_lib.path(checkpoint))
  path = checkpoints.save_imported(workdir, state, {'source': source, 'model': config.model.name,
                                                    'num_params': count})
  print(f'Imported {checkpoint} (step {state.step}, {count:,} parameters, EMA included) '
        f'into {path}')
  return path
