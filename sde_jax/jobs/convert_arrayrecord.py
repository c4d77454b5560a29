"""``sde-jax convert-arrayrecord``: TFRecord files, or a TFDS set prepared as TFRecord, to
ArrayRecord files, which have random access and so are read by the elastic input pipeline
(:mod:`sde_jax.data.elastic`). Records are copied byte for byte, in order."""

from __future__ import annotations

import os

from absl import logging

from sde_jax import workdir as workdir_lib
from sde_jax.data.random_access import ARRAY_RECORD_SUFFIX
from sde_jax.data.tf_runtime import load_tensorflow

# One record per chunk: the fastest random access (ArrayRecord's own advice for random reads).
WRITER_OPTIONS = 'group_size:1'
_TFRECORD_SUFFIXES = ('.tfrecords', '.tfrecord')


def array_record_name(tfrecord_path: str) -> str:
  """``r08.tfrecords`` -> ``r08.array_record`` (the name without a TFRecord suffix, plus ours)."""
  name = os.path.basename(tfrecord_path)
  for suffix in _TFRECORD_SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
      break
  return name + ARRAY_RECORD_SUFFIX


def convert_records(pattern: str, out_dir: str) -> list[str]:
  """Each TFRecord file matching ``pattern`` -> ``out_dir/<name>.array_record``, record by record.

  Args:
    pattern: a TFRecord file or glob (local or ``gs://``).
    out_dir: the folder of the ArrayRecord files (made if missing).

  Returns:
    The paths written, in the sorted order of their sources.

  Raises:
    FileNotFoundError: if nothing matches ``pattern``.
    FileExistsError: if an output exists already (it is never overwritten).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  tf = load_tensorflow()
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'--records={pattern!r} matches no file; expected TFRecord files.')
  outputs = [os.path.join(out_dir, array_record_name(f)) for f in files]
  existing = [o for o in outputs if workdir_lib.path(o).exists()]
  if existing or len(set(outputs)) < len(outputs):
    raise FileExistsError(f'Refusing to overwrite (or write twice): {existing or outputs}; '
                          'choose another --out.')
  workdir_lib.path(out_dir).mkdir(parents=True, exist_ok=True)
  for source, target in zip(files, outputs):
    writer = array_record_module.ArrayRecordWriter(target, WRITER_OPTIONS)
    count = 0
    for record in tf.data.TFRecordDataset(source).as_numpy_iterator():
      writer.write(record)
      count += 1
    writer.close()
    logging.info('Converted %s (%d records) to %s', source, count, target)
  return outputs


def convert_tfds(dataset_version_dir: str, out_dir: str | None) -> None:
  """A TFDS set prepared as TFRecord (its version folder, e.g.
  ``~/tensorflow_datasets/cifar10/3.0.2``) -> the same set as ArrayRecord, through TFDS's own
  converter; in place when ``out_dir`` is None (TFDS then finds both formats)."""
  load_tensorflow()
  from tensorflow_datasets.scripts.cli import convert_format_utils  # pylint: disable=g-import-not-at-top
  convert_format_utils.convert_dataset(out_dir=out_dir, out_file_format='array_record',
                                       dataset_version_dir=dataset_version_dir)
