"""Checkpoints: import of the original score_sde / score_sde_pytorch files, and orbax storage.

The original files are untrusted input. The Flax ones are msgpack (``flax.serialization``),
which holds only arrays and containers; the PyTorch ones are read without PyTorch by
``torch_pickle``, which runs nothing in them and refuses anything but tensors and plain
containers.
Import is strict: every parameter of the model must be found with its exact shape, and every
array of the file must be used, or the import fails with the names and shapes involved.

One concept a file: ``errors`` (CheckpointError, config hints, tree checks), ``imported_state``,
``original_flax`` (score_sde files), ``original_torch`` (score_sde_pytorch files and layouts),
``torch_pickle`` (the ``torch.save`` formats, read with numpy alone, through ``pth_container``,
``pth_unpickler``, ``pth_tensors`` and ``pth_bounds``),
``storage`` (orbax), ``integrity`` (manifests of hashes, the newest intact step),
``sealed_manager`` (orbax's manager writing them), ``original`` (``import_original``: the
template of a model's parameters and the file read into it; ``sde-jax import`` is
:mod:`sde_jax.jobs.import_checkpoint`).
"""

from sde_jax.checkpoints.errors import CheckpointError, check_tree, config_hint
from sde_jax.checkpoints.integrity import DamagedCheckpointError
from sde_jax.checkpoints.imported_state import ImportedState
from sde_jax.checkpoints.original import import_original, param_template
from sde_jax.checkpoints.original_flax import import_flax, read_flax
from sde_jax.checkpoints.original_torch import (Layout, all_modules_layout, import_torch,
                                                read_torch, to_flax_array,
                                                unused_time_projections)
from sde_jax.checkpoints.storage import (ITEMS, TRAIN_ITEMS, checkpoint_manager, has_item,
                                         intact_step, latest_step, num_params, on_one_device,
                                         restore, restore_ema, restore_items, restore_meta,
                                         restore_params, save_imported, save_items)

__all__ = [
    'CheckpointError', 'DamagedCheckpointError', 'ITEMS', 'ImportedState', 'Layout',
    'TRAIN_ITEMS', 'all_modules_layout', 'check_tree', 'checkpoint_manager', 'config_hint',
    'has_item', 'import_flax', 'import_original', 'import_torch',
    'intact_step', 'latest_step', 'num_params', 'on_one_device', 'param_template', 'read_flax',
    'read_torch', 'restore', 'restore_ema', 'restore_items', 'restore_meta', 'restore_params',
    'save_imported', 'save_items', 'to_flax_array', 'unused_time_projections',
]
