"""The :class:`~sde_jax.data.source.Source` of TFRecords in the progressive-GAN tool's format
(FFHQ, CelebA-HQ): 'shape' int64 (C, H, W), 'data' raw uint8 bytes, one resolution per file."""

from __future__ import annotations

import functools
import math

import numpy as np

from sde_jax.data.source import Source
from sde_jax.data.spec import PipelineSpec
from sde_jax.data.tf_runtime import load_tensorflow, without_autograph


def tfrecord_source(path: str | None, spec: PipelineSpec) -> Source:
  """Records of the progressive-GAN tool: 'shape' int64 (C, H, W), 'data' raw uint8 bytes."""
  tf = load_tensorflow()
  files = sorted(tf.io.gfile.glob(path)) if path else []
  if not files:
    raise FileNotFoundError(f'No TFRecords file matches data.tfrecords_path={path!r}.')
  _check_record_shape(files, spec)

  def read(split, file_seed):
    del split, file_seed  # one split; a single file has no file order to shuffle
    ds = tf.data.TFRecordDataset(files).shard(spec.process_count, spec.process_index)
    return ds.map(without_autograph(
        lambda record: {'image': record, 'label': tf.constant(0, tf.int32)}))

  def sizes(split):
    del split
    total = _count_records(tuple(files))
    return len(range(spec.process_index, total, spec.process_count)), math.ceil(
        total / spec.process_count)

  return Source(read, decode_record, sizes, 'train', 'train')


def decode_record(record):
  """A progressive-GAN record -> uint8 (H, W, C)."""
  tf = load_tensorflow()
  example = tf.io.parse_single_example(record, {
      'shape': tf.io.FixedLenFeature([3], tf.int64),
      'data': tf.io.FixedLenFeature([], tf.string)})
  chw = tf.reshape(tf.io.decode_raw(example['data'], tf.uint8), example['shape'])
  return tf.transpose(chw, (1, 2, 0))


def _check_record_shape(files: list[str], spec: PipelineSpec) -> None:
  """The records are stored at one resolution and are not resized: it must be the config's."""
  tf = load_tensorflow()
  first = next(iter(tf.data.TFRecordDataset(files).take(1)), None)
  if first is None:
    raise ValueError(f'{files} hold no records.')
  check_record_shape(tuple(decode_record(first).shape), files[0], spec)


def check_record_shape(shape: tuple[int, ...], path: str, spec: PipelineSpec) -> None:
  """Raises ValueError unless the records of ``path``, of image ``shape`` (H, W, C), are at the
  config's resolution (they are stored at one and not resized)."""
  if shape != spec.example_shape:
    raise ValueError(f'The records of {path} are {shape} (H, W, C), but the config asks for '
                     f'{spec.example_shape}: set data.image_size, or point data.tfrecords_path '
                     'at the records of that resolution.')


@functools.lru_cache(maxsize=16)
def _count_records(files: tuple[str, ...]) -> int:
  records = load_tensorflow().data.TFRecordDataset(list(files))
  return int(records.reduce(np.int64(0), without_autograph(lambda n, _: n + 1)))
