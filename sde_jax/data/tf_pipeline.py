"""The tf.data pipelines over a :class:`~sde_jax.data.source.Source`: seeded train epochs and the
eval pass, decoded, preprocessed and augmented statelessly, as NumPy batches."""

from __future__ import annotations

import functools
from typing import Iterator

from sde_jax import rng
from sde_jax.data.preprocess import PREPROCESS
from sde_jax.data.source import Source
from sde_jax.data.spec import TFRECORD_DATASETS, PipelineSpec
from sde_jax.data.streams import Batch, epochs, padded_batches, steps_per_epoch, stream_seeds
from sde_jax.data.tf_runtime import load_tensorflow, pipeline_options, without_autograph
from sde_jax.data.tfds_source import tfds_source
from sde_jax.data.tfrecord_source import tfrecord_source


def get_source(data, spec: PipelineSpec) -> Source:
  """The records of ``data.dataset`` read with tf.data (not elastic): TFRecords at
  ``data.tfrecords_path``, or a TFDS set prepared as TFRecord."""
  if spec.dataset in TFRECORD_DATASETS:
    return tfrecord_source(data.get('tfrecords_path'), spec)
  return tfds_source(data, spec)


def _example_fn(source: Source, spec: PipelineSpec, train: bool, flip_seed: int, noise_seed: int):
  """(index, record) -> example; flip and noise are seeded from (seed, index), statelessly."""
  tf = load_tensorflow()
  preprocess = PREPROCESS[spec.dataset]

  def fn(index, record):
    image = preprocess(source.decode(record['image']), spec.example_shape[0])
    image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), spec.example_shape)
    if train and spec.random_flip:
      image = tf.image.stateless_random_flip_left_right(
          image, tf.stack([tf.constant(flip_seed, tf.int64), index]))
    if spec.dequantize:
      noise = tf.random.stateless_uniform(
          spec.example_shape, tf.stack([tf.constant(noise_seed, tf.int64), index]))
      image = (255.0 * image + noise) / 256.0
    return {'image': image, 'label': record['label']}

  return without_autograph(fn)


def _tf_epoch(source: Source, spec: PipelineSpec, epoch: int, offset: int) -> Iterator[Batch]:
  """One shuffled epoch of this process's shard from example ``offset`` on, as NumPy batches."""
  tf = load_tensorflow()
  file_seed, shuffle_seed, flip_seed, noise_seed = stream_seeds(
      rng.DATA_TRAIN, spec.seed, spec.process_index, epoch, n=4)
  ds = source.read(source.train_split, file_seed)
  ds = ds.shuffle(spec.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
  ds = ds.skip(offset).enumerate(start=offset)  # skipped records are never decoded
  ds = ds.map(_example_fn(source, spec, True, flip_seed, noise_seed),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(pipeline_options()).as_numpy_iterator()


def tf_train(source: Source, spec: PipelineSpec, start_step: int) -> Iterator[Batch]:
  """Train batches, one seeded pipeline per epoch, from global step ``start_step``.

  Args:
    source: the data set's records.
    spec: the checked call.
    start_step: the first global step (a resumed job's).

  Returns:
    Batches of ``spec.batch_size``, forever; each epoch drops its last partial batch.
  """
  steps = steps_per_epoch(source.sizes(source.train_split)[0], spec)
  return epochs(functools.partial(_tf_epoch, source, spec), steps, spec.batch_size, start_step)


def tf_eval(source: Source, spec: PipelineSpec) -> Iterator[Batch]:
  """``source.eval_split`` in order, once, padded to the batch count of the largest shard."""
  tf = load_tensorflow()
  _, largest_shard = source.sizes(source.eval_split)
  (noise_seed,) = stream_seeds(rng.DATA_EVAL, spec.seed, spec.process_index, n=1)
  ds = source.read(source.eval_split, None).enumerate()
  ds = ds.map(_example_fn(source, spec, False, 0, noise_seed), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.batch_size).prefetch(tf.data.AUTOTUNE).with_options(pipeline_options())
  return padded_batches(ds.as_numpy_iterator(), largest_shard, spec)
