""":func:`whole_split`: every example of a split once, in order, for evaluation jobs."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

from sde_jax.data import elastic, pipeline, tf_pipeline
from sde_jax.data.spec import make_spec
from sde_jax.data.streams import Batch
from sde_jax.data.toys import TOY_DATASETS


def whole_split(config, split: str, per_process: int,
                dequantize: bool | None = False) -> tuple[int, Iterator[Batch]]:
  """Every example of the ``'train'`` or ``'eval'`` split once, in order, as zero-padded
  host-local batches with ``'mask'`` (as :func:`~sde_jax.data.get_dataset`'s eval split), and how
  many batches each process gets. For the elastic sets, global batch ``j`` is examples
  ``[j G, (j + 1) G)`` of the split (``G = per_process * process_count``), the same at any
  layout; each process reads its rows.

  The train split read this way (unshuffled, not repeated, nothing dropped) is what data-set
  statistics and bits/dim on the train split need; ``get_dataset`` only streams it for training.

  Args:
    config: the job's config (``data.*``; ``seed`` seeds the dequantization noise).
    split: 'train' or 'eval'.
    per_process: examples per batch of this process.
    dequantize: uniform dequantization; None follows ``data.uniform_dequantization``.

  Returns:
    ``(num_batches, batches)``: the same count on every process.

  Raises:
    ValueError: for a toy data set (evaluation jobs are for image data sets), or as
      ``get_dataset``.
  """
  spec = make_spec(config, 'eval', per_process, config.seed, 0, None, None, dequantize)
  if spec.dataset in TOY_DATASETS:
    raise ValueError(f'data.dataset={spec.dataset!r} is a 2-D toy set; evaluation jobs are for '
                     'image data sets (the toy sets have `sde-jax toy`).')
  examples, threads = pipeline.split_examples(config.data, spec, split)
  if examples is not None:
    return elastic.eval_batches(examples, spec, threads=threads)
  source = tf_pipeline.get_source(config.data, spec)
  if split == 'train':
    source = dataclasses.replace(source, eval_split=source.train_split)
  largest = source.sizes(source.eval_split)[1]
  return math.ceil(largest / per_process), tf_pipeline.tf_eval(source, spec)
