"""Data: scalers, input pipelines for the image data sets, and embedded data sets.

Model space is data in [0, 1], or in [-1, 1] when ``config.data.centered``. The toy distributions
are real-valued already and are used as they are (their scaler is the identity).

:func:`get_dataset` serves every data set of the original (CIFAR-10, SVHN, CelebA, LSUN through
TFDS; FFHQ and CelebA-HQ from TFRecords), the scikit-learn 8x8 digits and the 2-D toy sets, as
host-local NumPy batches of this process's shard. TensorFlow is imported on first use only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.rng import DATA_EVAL, DATA_TRAIN

Array = jax.Array


def get_data_scaler(config) -> Callable[[Array], Array]:
  """Data in [0, 1] -> model space ([-1, 1] if ``config.data.centered``)."""
  if config.data.centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config) -> Callable[[Array], Array]:
  """Model space -> data in [0, 1] (the inverse of :func:`get_data_scaler`)."""
  if config.data.centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


def eight_gaussians(radius: float = 2.0, std: float = 0.1):
  """Eight equal Gaussians on a circle: (weights (8,), means (8, 2), std)."""
  angles = np.arange(8) * np.pi / 4
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return np.full(8, 1 / 8), means, std


def _sample_eight_gaussians(key: Array, n: int) -> Array:
  weights, means, std = eight_gaussians()
  k_c, k_z = jax.random.split(key)
  comp = jax.random.choice(k_c, len(weights), (n,), p=jnp.asarray(weights))
  return jnp.asarray(means, jnp.float32)[comp] + std * jax.random.normal(k_z, (n, 2))


def _sample_checkerboard(key: Array, n: int) -> Array:
  """Uniform on the black squares of a 4x4 board over [-2, 2]^2."""
  k_x, k_y, k_s = jax.random.split(key, 3)
  x = jax.random.uniform(k_x, (n,), minval=-2.0, maxval=2.0)
  y = jax.random.uniform(k_y, (n,), minval=0.0, maxval=1.0)
  row = jax.random.randint(k_s, (n,), 0, 2) * 2 - 2  # -2 or 0
  y = y + row + (jnp.floor(x) % 2)
  return jnp.stack([x, y], axis=1)


def _sample_rings(key: Array, n: int) -> Array:
  """Two concentric rings of radii 1 and 2 with Gaussian radial noise 0.05."""
  k_r, k_a, k_z = jax.random.split(key, 3)
  radius = jax.random.randint(k_r, (n,), 1, 3).astype(jnp.float32)
  angle = jax.random.uniform(k_a, (n,), maxval=2 * jnp.pi)
  radius = radius + 0.05 * jax.random.normal(k_z, (n,))
  return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1)


TOY_DATASETS: dict[str, Callable[[Array, int], Array]] = {
    'eight_gaussians': _sample_eight_gaussians,
    'checkerboard': _sample_checkerboard,
    'rings': _sample_rings,
}


def sample_toy(name: str, key: Array, n: int) -> Array:
  """``n`` points of the 2-D toy distribution ``name``, shape (n, 2)."""
  if name not in TOY_DATASETS:
    raise ValueError(f'Unknown toy data set {name!r}; expected one of {sorted(TOY_DATASETS)}.')
  return TOY_DATASETS[name](key, n)


# --- Input pipelines -----------------------------------------------------------------------------
#
# A batch is {'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)} on the host; eval
# batches add 'mask': bool (B,). A train stream is a function of (seed, process, epoch, position):
# shuffles and augmentations are drawn from seeds hashed from those numbers, never from a global
# random state, so a job resumed at step K reads what an uninterrupted one reads from step K.

Batch = dict[str, np.ndarray]

# Image data sets read with TFDS: name -> (TFDS name, the original's eval split). LSUN's TFDS name
# gets the category: lsun/<config.data.category>.
TFDS_DATASETS = {
    'CIFAR10': ('cifar10', 'test'),
    'SVHN': ('svhn_cropped', 'test'),
    'CELEBA': ('celeb_a', 'validation'),
    'LSUN': ('lsun', 'validation'),
}
# Read from TFRecords at config.data.tfrecords_path, in the record format of the progressive-GAN
# dataset tool. The original holds nothing out of them: eval reads the same records.
TFRECORD_DATASETS = ('FFHQ', 'CelebAHQ')
# The embedded digits and their channel counts: 'digits_rgb' draws each class in its own colour
# (DIGIT_COLORS), so that colorization has something to recover and a way to be judged.
DIGITS_DATASETS = {'digits': 1, 'digits_rgb': 3}
KNOWN_DATASETS = (*TFDS_DATASETS, *TFRECORD_DATASETS, *DIGITS_DATASETS, *TOY_DATASETS)

SHUFFLE_BUFFER = 10_000  # the original's; config.data.shuffle_buffer_size overrides it
TOY_EVAL_SIZE = 10_000  # points in a toy distribution's fixed eval set
DIGITS_EVAL_FRACTION = 0.2  # the last 20% of each class is held out
# Colour of digit k in 'digits_rgb': hue 36 k degrees, every channel in [0, 1] and the channel mean
# 0.5 for every class, so the gray image (R + G + B) / 3 says nothing about the class's colour.
DIGIT_COLORS = (0.5 + 0.5 * np.cos(2 * np.pi * (np.arange(10)[:, None] / 10
                                                - np.arange(3)[None, :] / 3))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What a pipeline needs from the config and the call, read once."""
  dataset: str
  example_shape: tuple[int, ...]  # (H, W, C), or (2,) for the toy sets
  random_flip: bool
  dequantize: bool
  seed: int
  batch_size: int
  process_index: int
  process_count: int
  shuffle_buffer: int


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
  spec = _spec(config, split, batch_size, seed, start_step, process_index, process_count,
               uniform_dequantization)
  if spec.dataset in TOY_DATASETS:
    return _toy_train(spec, start_step) if split == 'train' else _toy_eval(spec)
  if spec.dataset in DIGITS_DATASETS:
    x_train, y_train, x_eval, y_eval = digits_arrays(spec.example_shape[0],
                                                     colored=spec.dataset == 'digits_rgb')
    if split == 'train':
      return _array_train(x_train, y_train, spec, start_step)
    return _array_eval(x_eval, y_eval, spec)
  source = _source(config.data, spec)
  return _tf_train(source, spec, start_step) if split == 'train' else _tf_eval(source, spec)


def _spec(config, split, batch_size, seed, start_step, process_index, process_count,
          uniform_dequantization) -> _Spec:
  """Checks the arguments and reads the config."""
  data = config.data
  if data.dataset not in KNOWN_DATASETS:
    raise ValueError(f'Unknown data set {data.dataset!r}; known: {", ".join(KNOWN_DATASETS)}.')
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f'Need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}.')
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} is not in [0, process_count={count}).')
  toy = data.dataset in TOY_DATASETS
  if uniform_dequantization is None:
    uniform_dequantization = data.get('uniform_dequantization', False)
  return _Spec(data.dataset, (2,) if toy else _image_shape(data),
               random_flip=bool(data.get('random_flip', False)) and not toy,
               dequantize=bool(uniform_dequantization) and not toy, seed=seed,
               batch_size=batch_size, process_index=index, process_count=count,
               shuffle_buffer=data.get('shuffle_buffer_size', SHUFFLE_BUFFER))


def _image_shape(data) -> tuple[int, int, int]:
  """(size, size, channels) from the config, checked against what the data set has."""
  digits = data.dataset in DIGITS_DATASETS
  size = data.get('image_size', 16 if digits else None)
  channels = DIGITS_DATASETS.get(data.dataset, 3)
  if isinstance(size, bool) or not isinstance(size, int) or size < (8 if digits else 1):
    least = 'an int >= 8 (the 8x8 digits are only upsampled)' if digits else 'a positive int'
    raise ValueError(f'data.image_size must be {least} for {data.dataset}, got {size!r}.')
  if data.get('num_channels', channels) != channels:
    raise ValueError(f'{data.dataset} has {channels} channel(s); '
                     f'data.num_channels is {data.num_channels}.')
  return size, size, channels


def _seeds(*entropy: int, n: int) -> list[int]:
  """``n`` 32-bit seeds hashed from all of ``entropy`` (distinct tuples give unrelated seeds)."""
  return np.random.SeedSequence([e % 2**64 for e in entropy]).generate_state(n).tolist()


def _steps_per_epoch(num_examples: int, spec: _Spec) -> int:
  steps = num_examples // spec.batch_size
  if steps == 0:
    raise ValueError(f'Process {spec.process_index} holds {num_examples} training examples of '
                     f'{spec.dataset}, fewer than one batch of {spec.batch_size}.')
  return steps


def _epochs(make_epoch: Callable[[int, int], Iterator[Batch]], steps_per_epoch: int,
            batch_size: int, start_step: int) -> Iterator[Batch]:
  """Epochs one after another from global step ``start_step``; ``make_epoch(epoch, offset)``."""
  first, step = divmod(start_step, steps_per_epoch)
  for epoch in itertools.count(first):
    yield from make_epoch(epoch, step * batch_size)
    step = 0


def _pad(batch: Batch, batch_size: int) -> Batch:
  """Zero-pads a batch to ``batch_size`` and adds 'mask' (True for the real examples)."""
  n = len(batch['label'])
  pad = [(0, batch_size - n)]
  return {'image': np.pad(batch['image'], pad + [(0, 0)] * (batch['image'].ndim - 1)),
          'label': np.pad(batch['label'], pad),
          'mask': np.arange(batch_size) < n}


def _padded(batches: Iterator[Batch], largest_shard: int, spec: _Spec) -> Iterator[Batch]:
  """Padded eval batches, as many as the largest shard needs, so every process yields as many."""
  empty = {'image': np.zeros((0, *spec.example_shape), np.float32),
           'label': np.zeros(0, np.int32)}
  count = 0
  for batch in batches:
    count += 1
    yield _pad(batch, spec.batch_size)
  for _ in range(math.ceil(largest_shard / spec.batch_size) - count):
    yield _pad(empty, spec.batch_size)


def to_uint8_data(images01: np.ndarray) -> np.ndarray:
  """Data images in [0, 1] (as the pipelines give them) -> uint8, rounded: an 8-bit pixel ``k``
  read as ``k / 255`` in float32 may come back as ``k - 1`` if truncated."""
  return np.clip(np.round(np.asarray(images01) * 255.0), 0, 255).astype(np.uint8)


# --- In-memory data: the digits and the toy distributions ----------------------------------------

def _augment(images: np.ndarray, rng: np.random.Generator, spec: _Spec, train: bool):
  """Flips (train only) and dequantization of a NumPy batch, as configured."""
  if train and spec.random_flip:
    flip = rng.random(len(images)) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  if spec.dequantize:
    images = (255 * images + rng.random(images.shape, dtype=np.float32)) / 256
  return images.astype(np.float32)


def _array_epoch(x, y, spec: _Spec, epoch: int, offset: int) -> Iterator[Batch]:
  """One shuffled epoch of (x, y) from example ``offset`` on."""
  order_seed, augment_seed = _seeds(DATA_TRAIN, spec.seed, spec.process_index, epoch, n=2)
  order = np.random.default_rng(order_seed).permutation(len(x))
  for start in range(offset, len(x) - spec.batch_size + 1, spec.batch_size):
    rows = order[start:start + spec.batch_size]
    rng = np.random.default_rng([augment_seed, start])
    yield {'image': _augment(x[rows], rng, spec, train=True), 'label': y[rows]}


def _array_train(x, y, spec: _Spec, start_step: int) -> Iterator[Batch]:
  """Train batches of in-memory arrays; process p owns rows p, p + P, p + 2P, ..."""
  x, y = x[spec.process_index::spec.process_count], y[spec.process_index::spec.process_count]
  steps = _steps_per_epoch(len(x), spec)
  return _epochs(functools.partial(_array_epoch, x, y, spec), steps, spec.batch_size, start_step)


def _array_eval(x, y, spec: _Spec) -> Iterator[Batch]:
  """Eval batches of in-memory arrays; process p owns rows p, p + P, p + 2P, ..."""
  largest_shard = math.ceil(len(x) / spec.process_count)
  x, y = x[spec.process_index::spec.process_count], y[spec.process_index::spec.process_count]
  (augment_seed,) = _seeds(DATA_EVAL, spec.seed, spec.process_index, n=1)

  def batches():
    for start in range(0, len(x), spec.batch_size):
      rng = np.random.default_rng([augment_seed, start])
      yield {'image': _augment(x[start:start + spec.batch_size], rng, spec, train=False),
             'label': y[start:start + spec.batch_size]}

  return _padded(batches(), largest_shard, spec)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear interpolation with half-pixel centres and clamped edges.

  For upsampling this is ``jax.image.resize(..., 'linear')`` along one axis.
  """
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  frac = pos - lo
  matrix = np.zeros((n_out, n_in))
  np.add.at(matrix, (np.arange(n_out), lo), 1 - frac)
  np.add.at(matrix, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), frac)
  return matrix


def _held_out(labels: np.ndarray, fraction: float) -> np.ndarray:
  """Boolean mask of the last ``fraction`` (rounded) of each class, in data-set order."""
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    mask[rows[len(rows) - round(fraction * len(rows)):]] = True
  return mask


@functools.lru_cache(maxsize=8)
def digits_arrays(image_size: int = 16, colored: bool = False):
  """scikit-learn's 1797 8x8 handwritten digits, bilinearly upsampled, split train/eval.

  Pixel values 0..16 are divided by 16, then each image is upsampled to ``image_size`` with
  bilinear interpolation (half-pixel centres, the same as ``jax.image.resize(..., 'linear')``),
  which keeps values in [0, 1]. The last 20% of each class (in scikit-learn's order) is held out
  for eval; both parts keep scikit-learn's order. The arrays are read-only and cached.

  Args:
    image_size: output height and width, at least 8.
    colored: RGB digits ('digits_rgb'): the stroke of digit k has the colour DIGIT_COLORS[k].

  Returns:
    (x_train, y_train, x_eval, y_eval): float32 (N, image_size, image_size, 1 or 3) and int32
    (N,); 1438 train and 359 eval examples.
  """
  if image_size < 8:
    raise ValueError(f'image_size must be at least 8 (the digits are 8x8), got {image_size}.')
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  resize = _bilinear_matrix(8, image_size)
  x = np.einsum('ih,nhw,jw->nij', resize, digits.images / 16.0, resize)
  x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  if colored:
    x = x * DIGIT_COLORS[y][:, None, None, :]
  held_out = _held_out(y, DIGITS_EVAL_FRACTION)
  arrays = (x[~held_out], y[~held_out], x[held_out], y[held_out])
  for a in arrays:
    a.setflags(write=False)
  return arrays


_sample_toy_jit = jax.jit(sample_toy, static_argnums=(0, 2))


def _toy_train(spec: _Spec, start_step: int) -> Iterator[Batch]:
  """Fresh points each step: batch k of process p is drawn with key (seed, train, p, k)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed), DATA_TRAIN),
                           spec.process_index)
  labels = np.zeros(spec.batch_size, np.int32)
  for step in itertools.count(start_step):
    points = _sample_toy_jit(spec.dataset, jax.random.fold_in(key, step), spec.batch_size)
    yield {'image': np.asarray(points, np.float32), 'label': labels}


def _toy_eval(spec: _Spec) -> Iterator[Batch]:
  """A fixed set of ``TOY_EVAL_SIZE`` points drawn with key (seed, eval), sharded by row."""
  key = jax.random.fold_in(jax.random.key(spec.seed), DATA_EVAL)
  points = np.asarray(_sample_toy_jit(spec.dataset, key, TOY_EVAL_SIZE), np.float32)
  return _array_eval(points, np.zeros(TOY_EVAL_SIZE, np.int32), spec)


# --- TensorFlow pipelines: TFDS and TFRecords ----------------------------------------------------

def _tf():
  """TensorFlow, imported on first use and kept off the GPUs (they belong to JAX)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _hide_gpus(tf)
  return tf


def _plain(fn: Callable) -> Callable:
  """Marks a tf.data map function as plain TF code: no Python control flow for AutoGraph."""
  return _tf().autograph.experimental.do_not_convert(fn)


@functools.cache
def _hide_gpus(tf) -> None:
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF has initialised its devices already; nothing to change then
    pass


def _num_cpus() -> int:
  """The cores this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _tf_options():
  """Deterministic order; decoding on at most half the cores (max 32), one thread per op."""
  options = _tf().data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, min(32, _num_cpus() // 2))
  options.threading.max_intra_op_parallelism = 1
  return options


@dataclasses.dataclass(frozen=True)
class _Source:
  """Records of one data set and how to decode them.

  ``read(split, file_seed)`` gives this process's shard as a tf.data.Dataset of
  {'image': undecoded, 'label': int32}, its files shuffled with ``file_seed`` unless it is None;
  ``decode(raw) -> uint8 (H, W, C)``; ``sizes(split) -> (examples in this process's shard, in the
  largest shard)``.
  """
  read: Callable[[str, int | None], Any]
  decode: Callable[[Any], Any]
  sizes: Callable[[str], tuple[int, int]]
  train_split: str
  eval_split: str


def _source(data, spec: _Spec) -> _Source:
  if spec.dataset in TFRECORD_DATASETS:
    return _tfrecord_source(data.get('tfrecords_path'), spec)
  return _tfds_source(data, spec)


def _tfds_name(data) -> str:
  name = TFDS_DATASETS[data.dataset][0]
  if data.dataset != 'LSUN':
    return name
  if not data.get('category'):
    raise ValueError("LSUN needs data.category, e.g. 'bedroom' or 'church_outdoor'.")
  return f'{name}/{data.category}'


def _tfds_source(data, spec: _Spec) -> _Source:
  """A TFDS data set (downloaded and prepared on first use, as the original does)."""
  tf = _tf()  # first, so that the GPUs are hidden before anything can touch them
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(_tfds_name(data), data_dir=data.get('data_dir'))
  builder.download_and_prepare()

  def read(split, file_seed, shard=True):
    if shard:
      split = tfds.split_for_jax_process(split, process_index=spec.process_index,
                                         process_count=spec.process_count)
    ds = builder.as_dataset(
        split=split, shuffle_files=file_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},  # decode after shuffle and skip
        read_config=tfds.ReadConfig(shuffle_seed=file_seed, try_autocache=False))
    return ds.map(_plain(lambda ex: {'image': ex['image'],
                                     'label': tf.cast(ex.get('label', 0), tf.int32)}))

  def sizes(split):
    total = int(read(split, None, shard=False).cardinality())
    return int(read(split, None).cardinality()), math.ceil(total / spec.process_count)

  return _Source(read, builder.info.features['image'].decode_example, sizes, 'train',
                 TFDS_DATASETS[spec.dataset][1])


def _tfrecord_source(path: str | None, spec: _Spec) -> _Source:
  """Records of the progressive-GAN tool: 'shape' int64 (C, H, W), 'data' raw uint8 bytes."""
  tf = _tf()
  files = sorted(tf.io.gfile.glob(path)) if path else []
  if not files:
    raise FileNotFoundError(f'No TFRecords file matches data.tfrecords_path={path!r}.')
  _check_record_shape(files, spec)

  def read(split, file_seed):
    del split, file_seed  # one split; a single file has no file order to shuffle
    ds = tf.data.TFRecordDataset(files).shard(spec.process_count, spec.process_index)
    return ds.map(_plain(lambda record: {'image': record, 'label': tf.constant(0, tf.int32)}))

  def sizes(split):
    del split
    total = _count_records(tuple(files))
    return len(range(spec.process_index, total, spec.process_count)), math.ceil(
        total / spec.process_count)

  return _Source(read, _decode_record, sizes, 'train', 'train')


def _decode_record(record):
  """A progressive-GAN record -> uint8 (H, W, C)."""
  tf = _tf()
  example = tf.io.parse_single_example(record, {
      'shape': tf.io.FixedLenFeature([3], tf.int64),
      'data': tf.io.FixedLenFeature([], tf.string)})
  chw = tf.reshape(tf.io.decode_raw(example['data'], tf.uint8), example['shape'])
  return tf.transpose(chw, (1, 2, 0))


def _check_record_shape(files: list[str], spec: _Spec) -> None:
  """The records are stored at one resolution and are not resized: it must be the config's."""
  tf = _tf()
  first = next(iter(tf.data.TFRecordDataset(files).take(1)), None)
  if first is None:
    raise ValueError(f'{files} hold no records.')
  shape = tuple(_decode_record(first).shape)
  if shape != spec.example_shape:
    raise ValueError(f'The records of {files[0]} are {shape} (H, W, C), but the config asks for '
                     f'{spec.example_shape}: set data.image_size, or point data.tfrecords_path '
                     'at the records of that resolution.')


@functools.lru_cache(maxsize=16)
def _count_records(files: tuple[str, ...]) -> int:
  records = _tf().data.TFRecordDataset(list(files))
  return int(records.reduce(np.int64(0), _plain(lambda n, _: n + 1)))


# Preprocessing, as in the original: uint8 (H, W, C) -> float32 (size, size, C) in [0, 1].

def _to_float(image):
  tf = _tf()
  return tf.image.convert_image_dtype(image, tf.float32)


def _center_crop(image, height: Any, width: Any):
  """The centred ``height`` x ``width`` window; the odd pixel goes to the bottom/right margin."""
  shape = _tf().shape(image)
  top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
  return image[top:top + height, left:left + width]


def _resize_short_side(image, size: int):
  """Bilinear (antialiased) resize that brings the shorter side to ``size``, keeping the aspect."""
  tf = _tf()
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * size / tf.reduce_min(hw)), tf.int32)
  return tf.image.resize(image, new_hw, antialias=True)


def _resize(image, size: int):
  """CIFAR-10, SVHN: bilinear (antialiased) resize to size x size (the identity at 32)."""
  return _tf().image.resize(_to_float(image), (size, size), antialias=True)


def _celeba(image, size: int):
  """CelebA: the central 140 x 140 window (rows 39-178, columns 19-158), then bilinear resize."""
  return _resize_short_side(_center_crop(_to_float(image), 140, 140), size)


def _lsun(image, size: int):
  """LSUN: at 128, bilinear short side to 128 then central crop; else central square + bicubic.

  The bicubic result is clipped to [0, 255] and rounded to 8 bits. The original casts it to uint8,
  which truncates (half a level darker on average; upsampled white becomes 254 in a third of the
  pixels) and wraps the bicubic overshoot at sharp edges around (-3 becomes 253).
  """
  tf = _tf()
  if size == 128:
    return _center_crop(_resize_short_side(_to_float(image), size), size, size)
  side = tf.reduce_min(tf.shape(image)[:2])
  image = tf.image.resize(_center_crop(image, side, side), (size, size),
                          method='bicubic', antialias=True)
  return tf.clip_by_value(tf.round(image), 0.0, 255.0) / 255.0


_PREPROCESS = {
    'CIFAR10': _resize, 'SVHN': _resize, 'CELEBA': _celeba, 'LSUN': _lsun,
    'FFHQ': lambda image, size: _to_float(image),  # stored at the resolution asked for
    'CelebAHQ': lambda image, size: _to_float(image),
}


def _example_fn(source: _Source, spec: _Spec, train: bool, flip_seed: int, noise_seed: int):
  """(index, record) -> example; flip and noise are seeded from (seed, index), statelessly."""
  tf = _tf()
  preprocess = _PREPROCESS[spec.dataset]

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

  return _plain(fn)


def _tf_epoch(source: _Source, spec: _Spec, epoch: int, offset: int) -> Iterator[Batch]:
  """One shuffled epoch of this process's shard from example ``offset`` on, as NumPy batches."""
  tf = _tf()
  file_seed, shuffle_seed, flip_seed, noise_seed = _seeds(
      DATA_TRAIN, spec.seed, spec.process_index, epoch, n=4)
  ds = source.read(source.train_split, file_seed)
  ds = ds.shuffle(spec.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
  ds = ds.skip(offset).enumerate(start=offset)  # skipped records are never decoded
  ds = ds.map(_example_fn(source, spec, True, flip_seed, noise_seed),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_tf_options()).as_numpy_iterator()


def _tf_train(source: _Source, spec: _Spec, start_step: int) -> Iterator[Batch]:
  """Train batches, one seeded pipeline per epoch (see :func:`_tf_epoch`)."""
  steps = _steps_per_epoch(source.sizes(source.train_split)[0], spec)
  return _epochs(functools.partial(_tf_epoch, source, spec), steps, spec.batch_size, start_step)


def _tf_eval(source: _Source, spec: _Spec) -> Iterator[Batch]:
  """The eval split in order, once, padded to the batch count of the largest shard."""
  tf = _tf()
  _, largest_shard = source.sizes(source.eval_split)
  (noise_seed,) = _seeds(DATA_EVAL, spec.seed, spec.process_index, n=1)
  ds = source.read(source.eval_split, None).enumerate()
  ds = ds.map(_example_fn(source, spec, False, 0, noise_seed), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(spec.batch_size).prefetch(tf.data.AUTOTUNE).with_options(_tf_options())
  return _padded(ds.as_numpy_iterator(), largest_shard, spec)
