"""Pictures people look at, as PNG (no plotting library needed): scatter plots of 2-D samples,
grids of images, and rows of images side by side (enlarged)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sde_jax import workdir as workdir_lib

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def scatter_png(path: str, panels: dict[str, np.ndarray], extent: float = 3.0,
                size: int = 360) -> None:
  """Writes side-by-side scatter plots of 2-D point sets, one titled panel per entry.

  Args:
    path: output PNG file.
    panels: title -> points of shape (n, 2).
    extent: each panel shows ``[-extent, extent]^2``.
    size: side of one panel in pixels.

  Raises:
    ValueError: if a panel's points are not of shape (n, 2).
  """
  image = Image.new('RGB', (size * len(panels), size + 20), 'white')
  draw = ImageDraw.Draw(image)
  for p, (title, points) in enumerate(panels.items()):
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
      raise ValueError(f'Panel {title!r}: expected points of shape (n, 2), got {points.shape}.')
    x0 = p * size
    draw.rectangle([x0, 20, x0 + size - 1, size + 19], outline=(180, 180, 180))
    draw.text((x0 + 6, 4), f'{title} (n={len(points)})', fill='black')
    pix = (points + extent) / (2 * extent) * (size - 1)
    inside = np.all((pix >= 0) & (pix <= size - 1), axis=1)
    colour = _COLOURS[p % len(_COLOURS)]
    for u, v in pix[inside]:
      cx, cy = x0 + u, 20 + (size - 1 - v)
      draw.ellipse([cx - 1, cy - 1, cx + 1, cy + 1], fill=colour)
  _save_png(path, image)


def image_grid(images: np.ndarray, ncol: int | None = None, padding: int = 2) -> np.ndarray:
  """Images (N, H, W, C) as one (rows, cols) grid with ``padding`` black pixels between them.

  ``ncol`` defaults to ``ceil(sqrt(N))``; the last row may be partly empty.

  Args:
    images: shape (N, H, W, C), any dtype.
    ncol: images per row; None (or 0) for ``ceil(sqrt(N))``.
    padding: pixels of zeros around and between the images.

  Returns:
    The grid, shape ``(rows (H + padding) + padding, ncol (W + padding) + padding, C)``, dtype of
    ``images``.

  Raises:
    ValueError: if ``images`` is not 4-D.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'expected images of shape (N, H, W, C), got {images.shape}.')
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = -(-n // ncol)
  grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c),
                  images.dtype)
  for i, image in enumerate(images):
    top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def image_grid_png(path: str, images_uint8_nhwc: np.ndarray, ncol: int | None = None) -> None:
  """Writes uint8 images (N, H, W, C) with 1 or 3 channels as one PNG grid.

  Args:
    path: output PNG file.
    images_uint8_nhwc: uint8 images, shape (N, H, W, 1 or 3).
    ncol: images per row; None for ``ceil(sqrt(N))`` (see :func:`image_grid`, padding 2).

  Raises:
    ValueError: if the images are not uint8 of shape (N, H, W, 1 or 3).
  """
  images = np.asarray(images_uint8_nhwc)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected uint8 images of shape (N, H, W, 1 or 3), got {images.dtype} '
                     f'{images.shape}.')
  grid = image_grid(images, ncol)
  _save_png(path, Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid))


def _save_png(path, image: Image.Image) -> None:
  """Writes ``image`` as a PNG at ``path`` (local or remote), atomically."""
  workdir_lib.write_atomic(path, lambda f: image.save(f, format='PNG'))


def zoom(images: np.ndarray, factor: int | None = None) -> np.ndarray:
  """Nearest-neighbour enlargement of (N, H, W, C) images by ``factor`` (default: to at least
  64 pixels high), so that 16 px digits are visible in a grid."""
  images = np.asarray(images)
  factor = factor or max(1, -(-64 // images.shape[1]))
  return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def write_rows_png(path: str, *columns: np.ndarray) -> None:
  """Writes one row per example, ``columns`` side by side (uint8 (N, H, W, C) each; 1-channel
  columns are shown in gray next to 3-channel ones), enlarged by :func:`zoom`."""
  columns = [zoom(c) for c in columns]
  if max(c.shape[-1] for c in columns) == 3:
    columns = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c for c in columns]
  rows = np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])
  image_grid_png(path, rows, ncol=len(columns))
