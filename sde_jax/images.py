"""Pixels: images in [0, 1] to and from uint8, gray and masked views, and image folders.

Two conversions to uint8 on purpose: samples are truncated as the original code does
(``clip(x * 255).astype(uint8)``, which FID figures depend on), while data images, which are
exact multiples of 1/255 up to float error, are rounded so that pixel ``k`` comes back as ``k``.
A sample that is not finite is an error, never a black image.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath

from sde_jax import nonfinite

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


def to_uint8(images) -> np.ndarray:
  """Samples in [0, 1] -> uint8, truncating as the original does (``clip(x * 255).astype``).

  Raises:
    FloatingPointError: if a sample holds a NaN or an infinity (a diverged sampler), naming how
      many and which (indices along the first axis): written as 0 they would be black images,
      counted in every metric computed on them. The samplers raise first
      (:mod:`sde_jax.nonfinite`); this is the last gate before a file or a metric.
  """
  images = np.asarray(images)
  nonfinite.check_rows(images, 'samples', 'The sampler diverged; no image or metric is made '
                       'from them. Check the score network and the sampler options.')
  return np.clip(images * 255.0, 0, 255).astype(np.uint8)


def data_to_uint8(images01: np.ndarray) -> np.ndarray:
  """Data images in [0, 1] (as the pipelines give them) -> uint8, rounded: an 8-bit pixel ``k``
  read as ``k / 255`` in float32 may come back as ``k - 1`` if truncated."""
  return np.clip(np.round(np.asarray(images01) * 255.0), 0, 255).astype(np.uint8)


def gray_images(images: np.ndarray) -> np.ndarray:
  """The gray version ``(R + G + B) / 3`` of uint8 RGB images, in 3 equal channels (uint8)."""
  gray = np.round(np.asarray(images, np.float64).mean(-1, keepdims=True))
  return np.repeat(gray.astype(np.uint8), 3, axis=-1)


def masked_view(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """uint8 images with their unknown pixels (mask 0) shown in mid-gray."""
  return np.where(np.broadcast_to(mask, images.shape) > 0, images, 128).astype(np.uint8)


def read_folder(folder: str, num_images: int, size: int, channels: int) -> np.ndarray:
  """The first ``num_images`` images of ``folder`` (PNG / JPEG / BMP files in name order),
  centre-cropped to a square and resized to ``size`` with Lanczos filtering.

  Args:
    folder: a directory of image files.
    num_images: how many to read at most.
    size: the side of the square output images.
    channels: 1 (gray) or 3 (RGB).

  Returns:
    uint8 images (N, size, size, channels), N <= num_images.

  Raises:
    FileNotFoundError: if ``folder`` holds no image file.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = epath.Path(folder)
  files = sorted(f.name for f in folder.iterdir() if f.name.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise FileNotFoundError(f'no PNG, JPEG or BMP images in {folder}.')
  out = []
  for name in files[:num_images]:
    with Image.open(io.BytesIO((folder / name).read_bytes())) as image:
      image = image.convert('L' if channels == 1 else 'RGB')
      side = min(image.size)
      left, top = (image.width - side) // 2, (image.height - side) // 2
      image = image.crop((left, top, left + side, top + side)).resize(
          (size, size), Image.Resampling.LANCZOS)
      out.append(np.asarray(image, np.uint8).reshape(size, size, channels))
  return np.stack(out)
