"""The :class:`~sde_jax.data.source.Source` of a folder of the user's own images
(``data.dataset = 'folder'``), local or in a bucket (``gs://``).

``data.path`` is scanned once per process (:func:`scan_folder`): every file under it, at any
depth, is opened far enough to read its format, size and channels (PIL reads the header only),
so that an empty folder, a file that is not an image (or one whose header declares more pixels
than PIL decodes, twice ``PIL.Image.MAX_IMAGE_PIXELS``), mixed channel counts or a too-small
image are one clear error, naming the files, before anything is written or compiled. Files and
folders whose names start with '.' (``.DS_Store``, ``.ipynb_checkpoints``) are left out and
counted in the log.

The split: a second folder (``data.eval_path``), or a held-out fraction (``data.eval_fraction``)
chosen by a hash of each file's path relative to the folder (the same files on every machine,
and adding images moves few files across), or, when neither is set, the training images
themselves (as the original does for FFHQ and CelebA-HQ). With ``data.labels_from_folders``, the
first-level folder names, sorted, are the classes 0, 1, ...

A split's files, in sorted order, are the examples of the elastic pipeline
(:mod:`sde_jax.data.random_access`, :mod:`sde_jax.data.elastic`): each process reads only the
files of its rows of each global batch, decoded and resized by TensorFlow (:func:`decoder`) on
Grain's read threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
from typing import Any

from absl import logging
from etils import epath

from sde_jax import workdir as workdir_lib
from sde_jax.data.tf_runtime import load_tensorflow

# PIL's format names of the images read (tf.io.decode_image decodes all three).
FORMATS = ('PNG', 'JPEG', 'WEBP')
# Channels of the decoded image, by PIL mode (a palette image decodes to RGB, or RGBA when it has
# a transparent colour). TensorFlow decodes no two-channel image (grayscale with alpha).
_MODE_CHANNELS = {'1': 1, 'L': 1, 'I': 1, 'I;16': 1, 'I;16B': 1, 'I;16L': 1, 'RGB': 3, 'P': 3,
                  'PA': 4, 'RGBA': 4, 'RGBa': 4}
_NAMED = 5  # bad files named in an error message or a log line
_SCAN_THREADS = 32  # the header reads wait on storage, not on the CPU


@dataclasses.dataclass(frozen=True)
class ImageFile:
  """One image of a folder, as its header tells."""
  path: str
  relative: str  # the path under the scanned folder, '/'-separated
  format: str  # one of FORMATS
  width: int
  height: int
  channels: int


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """What :func:`scan_folder` found under a folder."""
  root: str
  images: tuple[ImageFile, ...]  # sorted by relative path
  skipped: tuple[str, ...]  # files that are not images, left out (data.skip_bad_files only)
  hidden: int  # files under names starting with '.', left out
  channels: int


@dataclasses.dataclass(frozen=True)
class FolderSplits:
  """The train and eval files of a folder data set, with their labels."""
  train: tuple[str, ...]
  train_labels: tuple[int, ...]
  eval: tuple[str, ...]
  eval_labels: tuple[int, ...]
  class_names: tuple[str, ...]  # empty unless data.labels_from_folders
  channels: int
  eval_is_train: bool
  formats: frozenset[str]  # of the images of both splits


def _relative(file: epath.Path, root: str) -> str:
  """``file``'s path under the folder ``root``, '/'-separated."""
  return str(file)[len(root):].lstrip('/')


def _read_header(file: epath.Path, root: str) -> ImageFile | str:
  """The header of ``file``, or why it is not an image this pipeline reads."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  relative = _relative(file, root)
  try:
    with file.open('rb') as f, Image.open(f) as image:
      fmt, mode, (width, height) = image.format, image.mode, image.size
      transparent = 'transparency' in image.info
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    return f'{relative} ({type(e).__name__}: {e})'
  except Image.DecompressionBombError as e:  # a header that declares a huge image
    return f'{relative} (too large to decode: {e})'
  if fmt not in FORMATS:
    return f'{relative} (a {fmt} image; expected one of {", ".join(FORMATS)})'
  if mode not in _MODE_CHANNELS:
    return f'{relative} (PIL mode {mode}, which is not decoded as 1, 3 or 4 channels)'
  channels = 4 if mode == 'P' and transparent else _MODE_CHANNELS[mode]
  return ImageFile(str(file), relative, fmt, width, height, channels)


def _is_hidden(relative: str) -> bool:
  return any(part.startswith('.') for part in relative.split('/'))


@functools.lru_cache(maxsize=8)
def scan_folder(root: str, skip_bad_files: bool = False, field: str = 'data.path') -> FolderScan:
  """Every image under ``root`` (at any depth), with its size and channels.

  Args:
    root: a local folder or a ``gs://`` URL.
    skip_bad_files: leave out (and count) the files that are not PNG, JPEG or WebP images,
      instead of raising.
    field: the config field that named ``root``, for the error messages.

  Returns:
    The :class:`FolderScan`; the same object for the same arguments within a process.

  Raises:
    ValueError: if ``root`` is not a folder or holds no image, if a file is not an image (unless
      ``skip_bad_files``; the message names the first ones), or if the images have different
      channel counts.
  """
  folder = workdir_lib.path(root)
  if not folder.is_dir():
    raise ValueError(f'{field}={root!r} is not a folder; expected a folder of PNG, JPEG or WebP '
                     'images (local or gs://).')
  prefix = str(folder)
  files = workdir_lib.files_under(folder)
  visible = [f for f in files if not _is_hidden(_relative(f, prefix))]
  hidden = len(files) - len(visible)
  found = _read_headers(visible, prefix)
  images = tuple(sorted((f for f in found if isinstance(f, ImageFile)), key=lambda f: f.relative))
  bad = tuple(sorted(f for f in found if isinstance(f, str)))
  if bad and not skip_bad_files:
    raise ValueError(f'{len(bad)} of the {len(visible)} files under {field}={root!r} are not '
                     f'images sde-jax reads: {"; ".join(bad[:_NAMED])}'
                     f'{" ..." if len(bad) > _NAMED else ""}. Remove them, or set '
                     'data.skip_bad_files=True to leave them out (they are counted in the log).')
  if not images:
    raise ValueError(f'{field}={root!r} holds no PNG, JPEG or WebP image (found {len(files)} '
                     f'file(s), {hidden} of them hidden, {len(bad)} not images).')
  by_channels: dict[int, list[str]] = {}
  for image in images:
    by_channels.setdefault(image.channels, []).append(image.relative)
  if len(by_channels) > 1:
    counts = '; '.join(f'{len(names)} with {c} (e.g. {names[0]})'
                       for c, names in sorted(by_channels.items()))
    raise ValueError(f'The images under {field}={root!r} have different channel counts: {counts}. '
                     'Convert them to one (all RGB, or all grayscale) first.')
  if bad:
    logging.warning('%s=%s: left out %d file(s) that are not images (data.skip_bad_files): %s',
                    field, root, len(bad), '; '.join(bad[:_NAMED]))
  if hidden:
    logging.info('%s=%s: left out %d hidden file(s) (names starting with ".").', field, root,
                 hidden)
  return FolderScan(prefix, images, bad, hidden, next(iter(by_channels)))


def _read_headers(files: list[epath.Path], root: str) -> list[ImageFile | str]:
  """:func:`_read_header` of every file, on a thread pool, with a periodic progress line."""
  if len(files) < 64:
    return [_read_header(f, root) for f in files]
  out, every = [], max(1000, len(files) // 20)
  with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
    for i, result in enumerate(pool.map(lambda f: _read_header(f, root), files), 1):
      out.append(result)
      if i % every == 0:
        logging.info('Scanning %s: %d of %d files', root, i, len(files))
  return out


def _held_out(relative: str) -> bytes:
  """The order in which files are held out for eval: a hash of the relative path."""
  return hashlib.sha256(relative.encode()).digest()


def folder_splits(data) -> FolderSplits:
  """The train and eval files of ``data.path`` (and ``data.eval_path``), checked.

  Args:
    data: ``config.data`` with ``path`` and the optional ``eval_path``, ``eval_fraction``,
      ``labels_from_folders``, ``skip_bad_files``, ``upsample_small``, ``image_size`` and
      ``num_channels``.

  Returns:
    The :class:`FolderSplits`.

  Raises:
    ValueError: for a missing or bad option, or for images that do not fit the config (as
      :func:`scan_folder`, and: channels other than ``data.num_channels``, an image smaller than
      ``data.image_size`` unless ``data.upsample_small``, an image at the top of a folder with
      ``labels_from_folders``, eval classes the training folder lacks, a split left empty).
  """
  root = data.get('path')
  if not root or not isinstance(root, (str, epath.Path)):
    raise ValueError(f"data.path={root!r}; expected the folder of your images for data.dataset="
                     "'folder' (a local path or gs://...).")
  fraction = data.get('eval_fraction', 0.0) or 0.0
  eval_root = data.get('eval_path')
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0 <= fraction < 1):
    raise ValueError(f'data.eval_fraction={fraction!r}; expected a number in [0, 1).')
  if eval_root and fraction:
    raise ValueError(f'data.eval_path={eval_root!r} and data.eval_fraction={fraction!r} are both '
                     'set; expected one way of choosing the eval images (or neither: eval reads '
                     'the training images).')
  skip = bool(data.get('skip_bad_files', False))
  train_scan = scan_folder(str(root), skip, 'data.path')
  scans = [('data.path', train_scan)]
  if eval_root:
    scans.append(('data.eval_path', scan_folder(str(eval_root), skip, 'data.eval_path')))
  channels = data.get('num_channels', 3)
  size = data.image_size
  for field, scan in scans:
    if scan.channels != channels:
      raise ValueError(f'The images under {field}={scan.root!r} have {scan.channels} channel(s), '
                       f'but data.num_channels={channels}; set data.num_channels={scan.channels} '
                       'or convert the images.')
    if not data.get('upsample_small', False):
      small = [f for f in scan.images if min(f.width, f.height) < size]
      if small:
        named = ', '.join(f'{f.relative} ({f.width}x{f.height})' for f in small[:_NAMED])
        raise ValueError(f'{len(small)} image(s) under {field}={scan.root!r} are smaller than '
                         f'data.image_size={size} on their short side: {named}. Lower '
                         'data.image_size, remove them, or set data.upsample_small=True to '
                         'upsample them.')
  labels_from_folders = bool(data.get('labels_from_folders', False))
  class_names = _class_names(train_scan) if labels_from_folders else ()
  train = train_scan.images
  if eval_root:
    evals = scans[1][1].images
  elif fraction:
    ranked = sorted(train, key=lambda f: _held_out(f.relative))
    held = round(fraction * len(train))
    if held == 0 or held == len(train):
      raise ValueError(f'data.eval_fraction={fraction} of {len(train)} images holds out {held}; '
                       'expected at least one image in each split.')
    chosen = {f.relative for f in ranked[:held]}
    evals = tuple(f for f in train if f.relative in chosen)
    train = tuple(f for f in train if f.relative not in chosen)
  else:
    evals = train

  def labels(images, field):
    if not labels_from_folders:
      return (0,) * len(images)
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for f in images:
      name = _class_of(f, field)
      if name not in index:
        raise ValueError(f'{field}: {f.relative} is in class folder {name!r}, which data.path '
                         f'lacks; the classes are {list(class_names)}.')
      out.append(index[name])
    return tuple(out)

  return FolderSplits(tuple(f.path for f in train), labels(train, 'data.path'),
                      tuple(f.path for f in evals),
                      labels(evals, 'data.eval_path' if eval_root else 'data.path'),
                      class_names, channels, eval_is_train=evals is train,
                      formats=frozenset(f.format for f in (*train, *evals)))


def _class_of(image: ImageFile, field: str) -> str:
  if '/' not in image.relative:
    raise ValueError(f'{field}: {image.relative} is not in a class folder, but '
                     'data.labels_from_folders=True takes the first-level folder names as the '
                     'classes; move it into one, or set data.labels_from_folders=False.')
  return image.relative.split('/', 1)[0]


def _class_names(scan: FolderScan) -> tuple[str, ...]:
  return tuple(sorted({_class_of(f, 'data.path') for f in scan.images}))


def check_decodable(data, splits: FolderSplits) -> None:
  """Raises ValueError for WebP images where TensorFlow has no WebP decoder."""
  tf = load_tensorflow()
  if 'WEBP' in splits.formats and not hasattr(tf.io, 'decode_webp'):
    raise ValueError(f'data.path={data.path!r} holds WebP images, which TensorFlow '
                     f'{tf.__version__} cannot decode; install a TensorFlow that has '
                     'tf.io.decode_webp, or convert them to PNG.')
  if splits.eval_is_train:
    logging.info('data.path=%s: no data.eval_path or data.eval_fraction, so eval reads the '
                 '%d training images.', data.path, len(splits.train))


def read_file(path: str) -> bytes:
  """The bytes of an image file, local or in a bucket (through etils, the workdirs' client)."""
  return workdir_lib.path(path).read_bytes()


def decoder(channels: int):
  """Encoded PNG / JPEG / WebP bytes -> uint8 (H, W, channels), decoded by TensorFlow."""
  tf = load_tensorflow()

  def decode(encoded: Any):
    image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8,
                               expand_animations=False)
    return tf.ensure_shape(image, (None, None, channels))

  return decode
