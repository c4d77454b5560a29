"""The data sets read elastically (:mod:`sde_jax.data.elastic`): random-access sequences of
preprocessed examples ``{'image': float32 (H, W, C) in [0, 1], 'label': int32, 'index': i}``.

- in-memory arrays (the digits, a toy set's eval points): :class:`Examples` over the arrays;
- image folders: the split's sorted files, each decoded and resized when it is read;
- TFDS sets prepared as ArrayRecord: ``builder.as_data_source(split)`` (TFDS decodes the images);
- progressive-GAN records (FFHQ, CelebA-HQ) in ArrayRecord files (``sde-jax
  convert-arrayrecord`` writes them from TFRecords): Grain's ``ArrayRecordDataSource``.

:func:`elastic_examples` picks one, or says there is none (TFRecords, a TFDS set prepared as
TFRecord): those keep the tf.data pipelines, which are not elastic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from sde_jax.data.spec import FOLDER_DATASET, TFRECORD_DATASETS, PipelineSpec
from sde_jax.data.tfrecord_source import check_record_shape

ARRAY_RECORD_SUFFIX = '.array_record'
# Data sets whose preprocessing is the identity on an image already at the configured size
# (the resize rules of sde_jax.data.preprocess); such images skip TensorFlow.
_IDENTITY_AT_SIZE = ('CIFAR10', 'SVHN', 'FFHQ', 'CelebAHQ')


@dataclasses.dataclass(frozen=True)
class Examples:
  """Random-access examples: ``records`` (an array, or a source with ``__getitems__``) read a
  batch at a time, their images through ``decode`` (a list of raws -> float32 (n, H, W, C))."""
  records: Sequence[Any]
  decode: Callable[[Sequence[Any]], np.ndarray]
  labels: np.ndarray | None = None  # None: each record is a dict with its own 'label', if any
  batched: bool = True  # read a batch's records with one ``__getitems__`` call, if it has one

  def __post_init__(self):
    if self.labels is not None:
      object.__setattr__(self, 'labels', np.asarray(self.labels, np.int32))

  def __len__(self) -> int:
    return len(self.records)

  def _read(self, indices: np.ndarray) -> Sequence[Any]:
    if isinstance(self.records, np.ndarray):
      return self.records[indices]
    keys = indices.tolist()
    if self.batched and hasattr(self.records, '__getitems__'):  # ArrayRecord: one call
      return self.records.__getitems__(keys)
    return [self.records[i] for i in keys]

  def batch(self, indices: np.ndarray) -> dict:
    """{'image': float32 (n, ...), 'label': int32 (n,), 'index': int64 (n,)} of ``indices``."""
    indices = np.asarray(indices, np.int64)
    raws = self._read(indices)
    if self.labels is None:  # TFDS examples: dicts
      images = [r['image'] for r in raws]
      labels = np.asarray([r.get('label', 0) for r in raws], np.int32)
    else:
      images, labels = raws, self.labels[indices]
    return {'image': self.decode(images), 'label': labels, 'index': indices}


def array_examples(x: np.ndarray, y: np.ndarray) -> Examples:
  """In-memory examples: ``x`` float32 (N, ...) as they are, ``y`` (N,) labels."""
  return Examples(np.asarray(x), lambda images: images, y)


def _tf_preprocess(dataset: str, shape: tuple[int, ...], decode: Callable | None):
  """raw -> float32 ``shape`` in [0, 1] through TensorFlow: ``decode`` (None: the raw is a uint8
  image already), then the data set's crop and resize (:data:`PREPROCESS`), clipped.

  Run eagerly: a ``tf.function`` would let Grappler turn ``x / 255`` into ``x * (1 / 255)``,
  one ulp off the tf.data pipelines' pixels."""
  from sde_jax.data.preprocess import PREPROCESS  # pylint: disable=g-import-not-at-top
  from sde_jax.data.tf_runtime import load_tensorflow  # pylint: disable=g-import-not-at-top
  tf = load_tensorflow()

  def fn(raw):
    image = tf.convert_to_tensor(raw)
    image = image if decode is None else decode(image)
    image = PREPROCESS[dataset](image, shape[0])
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), shape).numpy()

  return fn


def image_decoder(spec: PipelineSpec, decode: Callable | None = None) -> Callable:
  """A list of uint8 (H, W, C) images (or raw bytes, with a TensorFlow ``decode``) -> float32
  ``(n, *example_shape)``: ``x * (1 / 255)`` on the whole batch where the data set's
  preprocessing is the identity at that size, else TensorFlow's preprocessing (the tf.data
  pipelines' functions) image by image."""
  tf_fn = functools.cache(lambda: _tf_preprocess(spec.dataset, spec.example_shape, decode))

  def to_float(images):
    if (decode is None and spec.dataset in _IDENTITY_AT_SIZE
        and all(np.shape(image) == spec.example_shape for image in images)):
      return np.multiply(np.stack(images), np.float32(1 / 255), dtype=np.float32)
    return np.stack([tf_fn()(image) for image in images])

  return to_float


def _record_image(record: bytes) -> np.ndarray:
  """A progressive-GAN record ('shape' int64 (C, H, W), 'data' raw uint8) -> uint8 (H, W, C),
  parsed with protobuf (no TensorFlow op per example)."""
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  features = example_pb2.Example.FromString(record).features.feature
  chw = tuple(features['shape'].int64_list.value)
  data = features['data'].bytes_list.value[0]
  if len(chw) != 3 or len(data) != math.prod(chw):
    raise ValueError(f'A record with shape {chw} and {len(data)} bytes; expected a '
                     'progressive-GAN record (shape (C, H, W), C H W bytes).')
  return np.frombuffer(data, np.uint8).reshape(chw).transpose(1, 2, 0)


def record_examples(paths: Sequence[str], spec: PipelineSpec) -> Examples:
  """Progressive-GAN records in ArrayRecord files, checked against ``spec.example_shape``."""
  import grain  # pylint: disable=g-import-not-at-top
  source = grain.sources.ArrayRecordDataSource(list(paths))
  if len(source) == 0:
    raise ValueError(f'{list(paths)} hold no records.')
  check_record_shape(_record_image(source[0]).shape, paths[0], spec)
  decode = image_decoder(spec)
  return Examples(source, lambda records: decode([_record_image(r) for r in records]),
                  np.zeros(len(source), np.int32))


def folder_examples(data, spec: PipelineSpec, split: str) -> Examples:
  """The sorted files of a folder split, decoded (TensorFlow) and resized when read."""
  from sde_jax.data import folder_source  # pylint: disable=g-import-not-at-top
  splits = folder_source.folder_splits(data)
  folder_source.check_decodable(data, splits)
  files = {'train': (splits.train, splits.train_labels), 'eval': (splits.eval, splits.eval_labels)}
  paths, labels = files[split]
  decode = image_decoder(spec, folder_source.decoder(splits.channels))
  return Examples(paths, lambda batch: decode([folder_source.read_file(p) for p in batch]),
                  labels)


def tfds_examples(data, spec: PipelineSpec, split: str) -> Examples | None:
  """A TFDS split through ``as_data_source`` (TFDS prepares new sets as ArrayRecord); None if the
  set is prepared as TFRecord only, which has no random access."""
  from sde_jax.data.tfds_source import prepared_builder  # pylint: disable=g-import-not-at-top
  builder, splits = prepared_builder(data, spec)
  try:
    source = builder.as_data_source(splits[split])
  except NotImplementedError:
    logging.warning(
        '%s is prepared as TFRecord in %s, which has no random access: reading it with tf.data, '
        'which is NOT elastic (the stream depends on the process count; a job must resume at '
        'the same one). Convert it: sde-jax convert-arrayrecord --tfds_dir=%s', spec.dataset,
        builder.data_dir, builder.data_dir)
    return None
  # One record at a time: TFDS deserialises each example in Python anyway, and the batched read
  # of tfds.testing.mock_data fails (its __getitems__ is set on a mock, without self).
  return Examples(source, image_decoder(spec), batched=False)


def elastic_examples(data, spec: PipelineSpec, split: str) -> Examples | None:
  """The random-access examples of ``split`` ('train' or 'eval') of ``data.dataset``, or None
  where the data set has no random access (it then keeps tf.data, not elastic)."""
  if spec.dataset == FOLDER_DATASET:
    return folder_examples(data, spec, split)
  if spec.dataset in TFRECORD_DATASETS:
    paths = array_record_paths(data.get('tfrecords_path'))
    if paths:
      return record_examples(paths, spec)
    logging.warning('data.tfrecords_path=%s: TFRecords have no random access, so %s is read '
                    'with tf.data, which is NOT elastic (a job must resume at the same process '
                    'count). Convert them: sde-jax convert-arrayrecord.', data.get('tfrecords_path'),
                    spec.dataset)
    return None
  return tfds_examples(data, spec, split)


def array_record_paths(pattern: str | None) -> list[str]:
  """The files of ``pattern`` (a path or glob) if they are ArrayRecord files (by their suffix),
  else []."""
  if not pattern or not str(pattern).endswith(ARRAY_RECORD_SUFFIX):
    return []
  from etils import epath  # pylint: disable=g-import-not-at-top
  pattern = str(pattern)
  folder, _, name = pattern.rpartition('/')
  paths = sorted(str(p) for p in epath.Path(folder or '.').glob(name))
  if not paths:
    raise FileNotFoundError(f'No ArrayRecord file matches data.tfrecords_path={pattern!r}.')
  return paths
