"""The import of an original checkpoint: the model's parameter template, and the file read as
the format its first bytes name, strictly checked (``sde-jax import`` is
:mod:`sde_jax.jobs.import_checkpoint`).

Import is strict: every parameter of the model must be found with its exact shape, and every
array of the file must be used, or the import fails with the names and shapes involved.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from etils import epath
from flax import traverse_util

from sde_jax import models
from sde_jax.checkpoints.errors import CheckpointError, Path
from sde_jax.checkpoints.imported_state import ImportedState, Params
from sde_jax.checkpoints.original_flax import import_flax
from sde_jax.checkpoints.original_torch import import_torch, is_torch_file, torch_layouts


def param_template(model, shape: tuple[int, ...]) -> tuple[Params, list[Path]]:
  """Shapes of ``model``'s parameters for inputs of ``shape`` (no allocation), and their paths
  in the order the model creates them (the order of the PyTorch port's ``all_modules``)."""
  order: list[Path] = []

  def init():
    variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(0)},
                           jnp.zeros(shape, jnp.float32), jnp.ones((shape[0],), jnp.float32),
                           train=False)
    order.extend(traverse_util.flatten_dict(variables['params']))
    return variables['params']

  return jax.eval_shape(init), order


def import_original(path: str | os.PathLike, config,
                    max_pth_bytes: int | None = None) -> ImportedState:
  """Reads a checkpoint of score_sde (Flax ``checkpoint_N``) or score_sde_pytorch (``.pth``).

  Args:
    path: the checkpoint file; the format is recognised from its first bytes.
    config: the config the checkpoint was trained with (``model.*``, ``data.*``).
    max_pth_bytes: for a ``.pth``, the most bytes its arrays may take (by default 4 times the
      file's size plus 16 MiB; raise it only for a file you trust).

  Returns:
    An :class:`ImportedState` with ``params``, ``params_ema`` (numpy trees in sde-jax's layout,
    which is the original Flax layout) and ``step``.

  Raises:
    CheckpointError: unreadable file, or any parameter missing, unexpected or of another shape
      (the message names it, both shapes and the config fields that likely differ).
  """
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'checkpoint {path} does not exist.')
  model = models.get_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  template, order = param_template(model, shape)
  flat_template = traverse_util.flatten_dict(template)
  if not is_torch_file(path):
    return import_flax(path, flat_template)
  layouts = torch_layouts()
  name = config.model.name
  if name not in layouts:
    raise CheckpointError(f'no PyTorch layout for model.name={name!r}; known: {sorted(layouts)}.')
  if name.startswith('ncsn') and name != 'ncsnpp' and config.model.get('flavour') != 'pytorch':
    raise CheckpointError(
        f'{path} is a score_sde_pytorch checkpoint of {name}, whose PyTorch network differs from '
        "the JAX original's; set --config.model.flavour=pytorch (and keep it for sampling).")
  layout, buffers = layouts[name]
  return import_torch(path, flat_template, order, layout, buffers, max_pth_bytes)
