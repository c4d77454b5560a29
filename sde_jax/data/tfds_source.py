"""The :class:`~sde_jax.data.source.Source` of a TFDS data set (CIFAR-10, SVHN, CelebA, LSUN)."""

from __future__ import annotations

import math

from sde_jax.data.source import Source
from sde_jax.data.spec import TFDS_DATASETS, PipelineSpec
from sde_jax.data.tf_runtime import load_tensorflow, without_autograph


def tfds_name(data) -> str:
  """The TFDS name of ``data.dataset``: lsun/<data.category> for LSUN."""
  name = TFDS_DATASETS[data.dataset][0]
  if data.dataset != 'LSUN':
    return name
  if not data.get('category'):
    raise ValueError("LSUN needs data.category, e.g. 'bedroom' or 'church_outdoor'.")
  return f'{name}/{data.category}'


def prepared_builder(data, spec: PipelineSpec):
  """The TFDS builder of ``data.dataset``, downloaded and prepared on first use (as the original
  does; as ArrayRecord, which has random access), and its ``{'train': ..., 'eval': ...}`` split
  names."""
  load_tensorflow()  # first, so that the GPUs are hidden before anything can touch them
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(tfds_name(data), data_dir=data.get('data_dir'),
                         file_format='array_record')
  builder.download_and_prepare()
  return builder, {'train': 'train', 'eval': TFDS_DATASETS[spec.dataset][1]}


def tfds_source(data, spec: PipelineSpec) -> Source:
  """A TFDS data set read with tf.data: the sets prepared as TFRecord (not elastic)."""
  tf = load_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder, _ = prepared_builder(data, spec)

  def read(split, file_seed, shard=True):
    if shard:
      split = tfds.split_for_jax_process(split, process_index=spec.process_index,
                                         process_count=spec.process_count)
    ds = builder.as_dataset(
        split=split, shuffle_files=file_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},  # decode after shuffle and skip
        read_config=tfds.ReadConfig(shuffle_seed=file_seed, try_autocache=False))
    return ds.map(without_autograph(lambda ex: {'image': ex['image'],
                                                'label': tf.cast(ex.get('label', 0), tf.int32)}))

  def sizes(split):
    total = int(read(split, None, shard=False).cardinality())
    return int(read(split, None).cardinality()), math.ceil(total / spec.process_count)

  return Source(read, builder.info.features['image'].decode_example, sizes, 'train',
                TFDS_DATASETS[spec.dataset][1])
