"""The data sets a pipeline knows, and :class:`PipelineSpec`: what it reads from the config and
the call, checked once by :func:`make_spec`."""

from __future__ import annotations

import dataclasses

import jax

from sde_jax.data.toys import TOY_DATASETS

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
# The embedded digits (sde_jax.data.digits) and their channel counts.
DIGITS_DATASETS = {'digits': 1, 'digits_rgb': 3}
# The user's own images: a folder at config.data.path (sde_jax.data.folder_source).
FOLDER_DATASET = 'folder'
KNOWN_DATASETS = (*TFDS_DATASETS, *TFRECORD_DATASETS, *DIGITS_DATASETS, FOLDER_DATASET,
                  *TOY_DATASETS)

SHUFFLE_BUFFER = 10_000  # the original's; config.data.shuffle_buffer_size overrides it


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
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


def make_spec(config, split, batch_size, seed, start_step, process_index, process_count,
              uniform_dequantization) -> PipelineSpec:
  """Checks the arguments of :func:`sde_jax.data.get_dataset` and reads the config.

  Args:
    config: a config with ``data.dataset`` (one of ``KNOWN_DATASETS``) and ``data.image_size``.
    split: 'train' or 'eval'.
    batch_size: examples per batch of this process.
    seed: seeds the shuffles and augmentations.
    start_step: train batches to skip (checked only: the pipelines take it themselves).
    process_index: this process; None: ``jax.process_index()``.
    process_count: processes sharing the data; None: ``jax.process_count()``.
    uniform_dequantization: overrides ``config.data.uniform_dequantization`` unless None.

  Returns:
    The :class:`PipelineSpec`; flips and dequantization are off for the toy sets.

  Raises:
    ValueError: for an unknown data set or split, a bad batch size, start step, process index,
      image size or channel count.
  """
  data = config.data
  if data.dataset not in KNOWN_DATASETS:
    raise ValueError(f'data.dataset={data.dataset!r} is not a known data set; expected one of '
                     f'{", ".join(KNOWN_DATASETS)}.')
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
  return PipelineSpec(data.dataset, (2,) if toy else _image_shape(data),
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
  if data.dataset == FOLDER_DATASET:  # the images' own count, checked against them when read
    channels = data.get('num_channels', 3)
    if channels not in (1, 3, 4):
      raise ValueError(f'data.num_channels={channels!r}; expected 1, 3 or 4 for a folder of '
                       'images.')
  if data.get('num_channels', channels) != channels:
    raise ValueError(f'{data.dataset} has {channels} channel(s); '
                     f'data.num_channels is {data.num_channels}.')
  return size, size, channels
