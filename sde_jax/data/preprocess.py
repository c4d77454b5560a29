"""Preprocessing, as in the original: uint8 (H, W, C) -> float32 (size, size, C) in [0, 1].

:data:`PREPROCESS` holds each TensorFlow-read data set's crop and resize.
"""

from __future__ import annotations

from typing import Any

from sde_jax.data.tf_runtime import load_tensorflow


def to_float(image):
  """uint8 -> float32 in [0, 1]."""
  tf = load_tensorflow()
  return tf.image.convert_image_dtype(image, tf.float32)


def center_crop(image, height: Any, width: Any):
  """The centred ``height`` x ``width`` window; the odd pixel goes to the bottom/right margin.

  Args:
    image: (H, W, C), H >= height and W >= width.
    height: the window's height (an int or a scalar tensor).
    width: the window's width.

  Returns:
    (height, width, C).
  """
  shape = load_tensorflow().shape(image)
  top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
  return image[top:top + height, left:left + width]


def resize_short_side(image, size: int):
  """Bilinear (antialiased) resize that brings the shorter side to ``size``, keeping the aspect."""
  tf = load_tensorflow()
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * size / tf.reduce_min(hw)), tf.int32)
  return tf.image.resize(image, new_hw, antialias=True)


def resize(image, size: int):
  """CIFAR-10, SVHN: bilinear (antialiased) resize to size x size (the identity at 32)."""
  return load_tensorflow().image.resize(to_float(image), (size, size), antialias=True)


def celeba_crop_resize(image, size: int):
  """CelebA: the central 140 x 140 window (rows 39-178, columns 19-158), then bilinear resize."""
  return resize_short_side(center_crop(to_float(image), 140, 140), size)


def lsun_crop_resize(image, size: int):
  """LSUN: at 128, bilinear short side to 128 then central crop; else :func:`square_resize`."""
  if size == 128:
    return center_crop(resize_short_side(to_float(image), size), size, size)
  return square_resize(image, size)


def square_resize(image, size: int):
  """The central square (side: the short side), bicubic (antialiased) resize to size x size,
  clipped to [0, 255] and rounded to 8 bits (the identity for a size x size image).

  The original's LSUN pipeline, but for the rounding: it casts to uint8, which truncates (half a
  level darker on average; upsampled white becomes 254 in a third of the pixels) and wraps the
  bicubic overshoot at sharp edges around (-3 becomes 253).
  """
  tf = load_tensorflow()
  side = tf.reduce_min(tf.shape(image)[:2])
  image = tf.image.resize(center_crop(image, side, side), (size, size),
                          method='bicubic', antialias=True)
  return tf.clip_by_value(tf.round(image), 0.0, 255.0) / 255.0


PREPROCESS = {
    'CIFAR10': resize, 'SVHN': resize, 'CELEBA': celeba_crop_resize, 'LSUN': lsun_crop_resize,
    'FFHQ': lambda image, size: to_float(image),  # stored at the resolution asked for
    'CelebAHQ': lambda image, size: to_float(image),
    'folder': square_resize,  # the user's own images (sde_jax.data.folder_source)
}
