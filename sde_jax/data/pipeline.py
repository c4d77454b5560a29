""":func:`get_dataset`: the one entry point of the input pipelines."""

from __future__ import annotations

from typing import Iterator, Sequence

from absl import logging

from sde_jax.data import arrays, elastic, random_access, tf_pipeline
from sde_jax.data.digits import digits_split
from sde_jax.data.spec import DIGITS_DATASETS, PipelineSpec, make_spec
from sde_jax.data.streams import Batch
from sde_jax.data.toys import TOY_DATASETS


def split_examples(data, spec: PipelineSpec, split: str):
  """``(examples, read_threads)`` of ``split`` for the elastic pipeline
  (:mod:`sde_jax.data.random_access`), or ``(None, 0)`` where the data set has no random access
  (TFRecords, a TFDS set prepared as TFRecord)."""
  if spec.dataset in TOY_DATASETS:
    return random_access.array_examples(*arrays.toy_eval_points(spec)), 0
  if spec.dataset in DIGITS_DATASETS:
    return random_access.array_examples(*digits_split(spec.dataset, spec.example_shape[0],
                                                      split)), 0
  return random_access.elastic_examples(data, spec, split), elastic.READ_THREADS


def get_dataset(config, split: str, *, batch_size: int, seed: int = 0, start_step: int = 0,
                process_index: int | None = None, process_count: int | None = None,
                uniform_dequantization: bool | None = None,
                rows: Sequence[int] | None = None) -> Iterator[Batch]:
  """Host-local batches of ``config.data.dataset``: this process's rows of each global batch.

  Elastic data sets (all but TFRecords and TFDS sets prepared as TFRecord;
  :mod:`sde_jax.data.elastic`): the global batch is ``batch_size * process_count`` examples, and
  global batch ``t`` (its examples, flips and noise) depends on (seed, t) and the data set only;
  this process reads its ``rows`` of it. Batches carry ``'index'`` (int64 (B,), the example's
  index in the split; -1 on eval padding).

  Train: shuffled (a new permutation each epoch), repeated forever, no example dropped. Random
  horizontal flips if ``config.data.random_flip``. ``start_step=K`` yields exactly what a fresh
  iterator yields from its K-th batch on.

  Eval: the original's eval split, in order, once, no flips, ``ceil(n / global batch)`` batches on
  every process, all of ``batch_size``: the last ones are zero-padded, and eval batches carry
  ``'mask'`` (bool (B,), True for real examples).

  TFRecords (and TFDS sets prepared as TFRecord) keep the tf.data pipelines, which are not
  elastic: each process reads its own shard, and the stream depends on (seed, process_index,
  epoch, position).

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
    rows: this process's rows of each global batch (elastic sets); default
      ``[process_index * batch_size, (process_index + 1) * batch_size)``.

  Returns:
    An iterator of {'image': float32 (B, H, W, C) in [0, 1] ((B, 2) points for the toy sets),
    'label': int32 (B,) (0 where the data set has none)}, plus 'index' (elastic sets) and
    'mask' (eval).

  Raises:
    ValueError: for an unknown data set or split, a bad image size or channel count, or a shard
      smaller than one train batch (a data set smaller than one global batch, elastic).
  """
  spec = make_spec(config, split, batch_size, seed, start_step, process_index, process_count,
                   uniform_dequantization)
  if spec.dataset in TOY_DATASETS and split == 'train':
    return arrays.toy_train(spec, start_step, elastic.process_rows(spec, rows))
  examples, threads = split_examples(config.data, spec, split)
  if examples is None:
    return _tf_batches(config, spec, split, start_step, rows)
  if split == 'train':
    return elastic.train_batches(examples, spec, start_step, rows, threads)
  return elastic.eval_batches(examples, spec, rows, threads)[1]


def _tf_batches(config, spec: PipelineSpec, split: str, start_step: int,
                rows: Sequence[int] | None) -> Iterator[Batch]:
  """The tf.data pipelines (not elastic: this process's shard of the data set)."""
  if rows is not None and list(rows) != elastic.process_rows(spec, None):
    raise ValueError(f'rows={list(rows)[:8]}...: {spec.dataset} is read with tf.data, which '
                     'reads per-process shards, not rows of global batches; convert it to '
                     'ArrayRecord (sde-jax convert-arrayrecord).')
  logging.info('%s %s: tf.data pipeline, not elastic (the stream depends on the process count).',
               spec.dataset, split)
  source = tf_pipeline.get_source(config.data, spec)
  if split == 'train':
    return tf_pipeline.tf_train(source, spec, start_step)
  return tf_pipeline.tf_eval(source, spec)
