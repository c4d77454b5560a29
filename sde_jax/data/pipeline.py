""":func:`get_dataset`: the one entry point of the input pipelines."""

from __future__ import annotations

from typing import Iterator

from sde_jax.data import arrays, tf_pipeline
from sde_jax.data.digits import digits_split
from sde_jax.data.spec import DIGITS_DATASETS, make_spec
from sde_jax.data.streams import Batch
from sde_jax.data.toys import TOY_DATASETS


def get_dataset(config, split: str, *, batch_size: int, seed: int = 0, start_step: int = 0,
                process_index: int | None = None, process_count: int | None = None,
                uniform_dequantization: bool | None = None) -> Iterator[Batch]:
  """Host-local batches of ``config.data.dataset``, read from this process's shard only.

  Train: shuffled, repeated forever; each epoch drops its last partial batch. Random horizontal
  flips if ``config.data.random_flip``. The stream depends on (seed, process_index, epoch,
  position) only, so ``start_step=K`` yields exactly what a fresh iterator yields from its K-th
  batch on.

  Eval: the original's eval split, in order, once, no flips. Every process yields the same number
  of batches, all of ``batch_size``: the last ones are zero-padded, and eval batches carry
  ``'mask'`` (bool (B,), True for real examples).

  Uniform dequantization ``x <- (255 x + u) / 256``, ``u ~ U[0, 1)``, applies to both splits (the
  original's training job does the same) when ``uniform_dequantization`` is True, or when it is
  None and ``config.data.uniform_dequantization`` is set.

  Args:
    config: a config with ``data.dataset`` (one of ``KNOWN_DATASETS``) and ``data.image_size``.
    split: 'train' or 'eval'.
    batch_size: examples per batch of this process.
    seed: seeds the shuffles and augmentations.
    start_step: train batches to skip (a resumed job's step).
    process_index: this process; default ``jax.process_index()``.
    process_count: processes sharing the data; default ``jax.process_count()``.
    uniform_dequantization: overrides ``config.data.uniform_dequantization``.

  Returns:
    An iterator of {'image': float32 (B, H, W, C) in [0, 1] ((B, 2) points for the toy sets),
    'label': int32 (B,) (0 where the data set has none)}, plus 'mask' for eval.

  Raises:
    ValueError: for an unknown data set or split, a bad image size or channel count, or a shard
      smaller than one train batch.
  """
  spec = make_spec(config, split, batch_size, seed, start_step, process_index, process_count,
                   uniform_dequantization)
  if spec.dataset in TOY_DATASETS:
    return arrays.toy_train(spec, start_step) if split == 'train' else arrays.toy_eval(spec)
  if spec.dataset in DIGITS_DATASETS:
    x, y = digits_split(spec.dataset, spec.example_shape[0], split)
    if split == 'train':
      return arrays.array_train(x, y, spec, start_step)
    return arrays.array_eval(x, y, spec)
  source = tf_pipeline.get_source(config.data, spec)
  if split == 'train':
    return tf_pipeline.tf_train(source, spec, start_step)
  return tf_pipeline.tf_eval(source, spec)
