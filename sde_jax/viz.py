"""Pictures people look at: scatter plots of 2-D samples as PNG (no plotting library needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def scatter_png(path: str, panels: dict[str, np.ndarray], extent: float = 3.0,
                size: int = 360) -> None:
  """Writes side-by-side scatter plots of 2-D point sets, one titled panel per entry.

  Args:
    path: output PNG file.
    panels: title -> points of shape (n, 2).
    extent: each panel shows ``[-extent, extent]^2``.
    size: side of one panel in pixels.
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
  image.save(path)
