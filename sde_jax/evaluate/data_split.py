"""A whole split of the data set, once, in order: what data-set statistics, the eval loss and
bits/dim read."""

# TODO(merge): replace by data.whole_split (same semantics, public), which another branch adds;
# this module then goes.

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

from sde_jax import data as data_lib


def split_batches(config, split: str, per_process: int,
                  dequantize: bool | None = False) -> tuple[int, Iterator[dict]]:
  """Every example of the ``'train'`` or ``'eval'`` split once, in order, as zero-padded
  host-local batches with ``'mask'`` (as ``data.get_dataset``'s eval split), and how many
  batches each process gets.

  The train split read this way (unshuffled, not repeated, nothing dropped) is what data-set
  statistics and bits/dim on the train split need; ``data.get_dataset`` only streams it for
  training.

  Args:
    config: the job's config (``data`` and ``seed``).
    split: ``'train'`` or ``'eval'``.
    per_process: the host-local batch size.
    dequantize: whether to dequantize uniformly; None follows ``data.uniform_dequantization``.

  Returns:
    ``(batches per process, iterator of batches)``.
  """
  # pylint: disable=protected-access
  spec = data_lib._spec(config, 'eval', per_process, config.seed, 0, None, None, dequantize)
  if spec.dataset in data_lib.TOY_DATASETS:
    raise ValueError(f'data.dataset={spec.dataset!r} is a 2-D toy set; evaluation jobs are for '
                     'image data sets (the toy sets have `sde-jax toy`).')
  if spec.dataset in data_lib.DIGITS_DATASETS:
    x_train, y_train, x_eval, y_eval = data_lib.digits_arrays(
        spec.example_shape[0], colored=spec.dataset == 'digits_rgb')
    x, y = (x_train, y_train) if split == 'train' else (x_eval, y_eval)
    largest = math.ceil(len(x) / spec.process_count)
    return math.ceil(largest / per_process), data_lib._array_eval(x, y, spec)
  source = data_lib._source(config.data, spec)
  if split == 'train':
    source = dataclasses.replace(source, eval_split=source.train_split)
  largest = source.sizes(source.eval_split)[1]
  return math.ceil(largest / per_process), data_lib._tf_eval(source, spec)
