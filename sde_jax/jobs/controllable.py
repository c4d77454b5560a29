"""Jobs: what ``sde-jax inpaint | colorize | sample --class K`` run. Single device; images are
uint8 NHWC in and out, example i of a job draws from ``fold_in(key(seed), i)``."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import checkpoints, viz
from sde_jax import data as data_lib
from sde_jax import images as images_lib
from sde_jax import workdir as workdir_lib
from sde_jax.controllable.class_guidance import get_logit_fn
from sde_jax.controllable.classifier_checkpoint import restore_classifier
from sde_jax.controllable.factory import get_controllable_sampler_from_config
from sde_jax.controllable.masks import make_mask
from sde_jax.jobs import config_check
from sde_jax.score_model import ScoreModel

OUTPUT_DIR = 'controllable'


def load_images(config, num_images: int, folder: str | None = None) -> np.ndarray:
  """``num_images`` uint8 images (N, H, W, C) at the config's size and channels.

  From ``folder`` (:func:`sde_jax.images.read_folder`: PNG / JPEG / BMP files in name order,
  centre-cropped to a square and resized with Lanczos filtering) or, without one, the first
  images of the config's eval split.

  Args:
    config: the job's config (``data``, ``seed``).
    num_images: how many images.
    folder: a folder of images, or None for the eval split.

  Returns:
    uint8 images (N, H, W, C).
  """
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  if folder is None:
    batch = next(data_lib.get_dataset(config, 'eval', batch_size=num_images, seed=config.seed))
    return images_lib.data_to_uint8(np.asarray(batch['image'])[np.asarray(batch['mask'])])
  return images_lib.read_folder(folder, num_images, size, channels)


def _restore_score_model(config, workdir: str):
  """(score model, EMA params, step) of ``workdir``'s latest score-model checkpoint, on one
  device."""
  score_model = ScoreModel.from_config(config)
  params, step = checkpoints.restore_ema(workdir, score_model.abstract_params())
  return score_model, params, step


def _in_batches(config, inputs: dict[str, np.ndarray], run) -> np.ndarray:
  """``run(batch_inputs, first_index) -> images in [0, 1]`` over ``eval.batch_size`` chunks; the
  last chunk is padded (by repeating its last example) so that one program serves all. The
  images come back as uint8 (:func:`sde_jax.images.to_uint8`)."""
  n = len(next(iter(inputs.values())))
  size = min(int(config.eval.batch_size), n)
  out = []
  for first in range(0, n, size):
    chunk = {k: v[first:first + size] for k, v in inputs.items()}
    pad = size - len(next(iter(chunk.values())))
    chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
    out.append(images_lib.to_uint8(np.asarray(run(chunk, first))[:size - pad]))
  return np.concatenate(out)


def _conditioned(config, task: str, score_model: ScoreModel, params,
                 inputs: dict[str, np.ndarray], conditions, method: str | None,
                 seed: int | None) -> np.ndarray:
  """Runs ``task``'s sampler (options from the config, ``method`` overriding
  ``controllable.method``) over ``inputs`` in batches of :func:`_in_batches`; ``conditions(chunk)``
  gives the sampler's arrays after ``params``. Example i draws from ``fold_in(key(seed), i)``.

  Returns:
    uint8 images.
  """
  overrides = {} if method is None else {'method': method}
  key = jax.random.key(config.seed if seed is None else seed)
  samplers = {}

  def run(chunk, first):
    shape = next(iter(chunk.values())).shape
    if shape not in samplers:
      samplers[shape] = get_controllable_sampler_from_config(config, task, score_model.sde,
                                                             shape, **overrides)
    x, _ = samplers[shape](key, score_model.score_fn, params, *conditions(chunk),
                           first_index=first)
    return score_model.inverse_scaler(x)

  return _in_batches(config, inputs, run)


def inpaint_images(config, workdir: str, images: np.ndarray, mask: np.ndarray, *,
                   method: str | None = None, seed: int | None = None) -> np.ndarray:
  """Inpaints uint8 ``images`` (N, H, W, C) where ``mask`` (H, W, C or N, H, W, C) is 0, with
  the EMA weights of ``workdir``'s latest checkpoint and the sampler of ``config.sampling`` /
  ``config.controllable`` (``method`` overrides ``controllable.method``).

  Args:
    config: the score model's config.
    workdir: holds its ``checkpoints/``.
    images: uint8 (N, H, W, C).
    mask: 1 on known pixels.
    method: ``'replacement'`` or ``'tmpd'``; default ``controllable.method``.
    seed: default ``config.seed``.

  Returns:
    uint8 images (N, H, W, C); the known pixels are the input's.
  """
  score_model, params, _ = _restore_score_model(config, workdir)
  images = np.asarray(images)
  mask = np.broadcast_to(np.asarray(mask, np.float32), images.shape)
  to_model = lambda u8: score_model.scaler(jnp.asarray(u8, jnp.float32) / 255.0)
  result = _conditioned(config, 'inpaint', score_model, params, {'image': images, 'mask': mask},
                        lambda c: (to_model(c['image']), jnp.asarray(c['mask'])), method, seed)
  return np.where(mask > 0, images, result)


def colorize_images(config, workdir: str, images: np.ndarray, *, method: str | None = None,
                    seed: int | None = None) -> np.ndarray:
  """Colours the gray versions (:func:`sde_jax.images.gray_images`) of uint8 RGB ``images``
  (N, H, W, 3) with ``workdir``'s RGB model; the result's channel mean is the gray input's.

  Args:
    config: the score model's config (3 channels).
    workdir: holds its ``checkpoints/``.
    images: uint8 RGB (N, H, W, 3).
    method: ``'replacement'`` or ``'tmpd'``; default ``controllable.method``.
    seed: default ``config.seed``.

  Returns:
    uint8 RGB images (N, H, W, 3).
  """
  if int(config.data.num_channels) != 3:
    raise ValueError(f'colorization needs an RGB model; this config has '
                     f'data.num_channels={config.data.num_channels}.')
  score_model, params, _ = _restore_score_model(config, workdir)
  gray = images_lib.gray_images(images)
  to_model = lambda u8: score_model.scaler(jnp.asarray(u8, jnp.float32) / 255.0)
  return _conditioned(config, 'colorize', score_model, params, {'gray': gray},
                      lambda c: (to_model(c['gray']),), method, seed)


def sample_class(config, workdir: str, labels, *, guidance_scale: float | None = None,
                 seed: int | None = None) -> np.ndarray:
  """Class-conditional samples, one per entry of ``labels``, from ``workdir``'s score model and
  the classifier under ``workdir/classifier`` (``sde-jax train-classifier``).

  Args:
    config: the score model's config with ``classifier``.
    workdir: holds ``checkpoints/`` and ``classifier/``.
    labels: int classes, one per sample.
    guidance_scale: default ``controllable.guidance_scale``.
    seed: default ``config.seed``.

  Returns:
    uint8 images (N, H, W, C).
  """
  score_model, params, _ = _restore_score_model(config, workdir)
  classifier, classifier_params, _ = restore_classifier(config, workdir)
  labels = np.asarray(labels, np.int32).reshape(-1)
  num_classes = int(config.classifier.num_classes)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}); got {labels.tolist()}.')
  logit_fn = get_logit_fn(score_model.sde, classifier)
  overrides = {} if guidance_scale is None else {'guidance_scale': guidance_scale}
  key = jax.random.key(config.seed if seed is None else seed)
  image_shape = score_model.image_shape
  samplers = {}

  def run(chunk, first):
    shape = (len(chunk['label']),) + image_shape
    if shape not in samplers:
      samplers[shape] = get_controllable_sampler_from_config(config, 'class', score_model.sde,
                                                             shape, **overrides)
    x, _ = samplers[shape](key, score_model.score_fn, params, logit_fn, classifier_params,
                           jnp.asarray(chunk['label']), first_index=first)
    return score_model.inverse_scaler(x)

  return _in_batches(config, {'label': labels}, run)


def _output(workdir: str, name: str) -> str:
  """``WORKDIR/controllable/<name>``; an earlier run's file of that name and its ``.npz`` move
  to ``controllable/previous-<time>/`` first (nothing written is lost)."""
  directory = workdir_lib.output_folder(workdir, OUTPUT_DIR,
                                        (name, os.path.splitext(name)[0] + '.npz'))
  return os.path.join(directory, name)


def inpaint_job(config, workdir: str, *, num_images: int = 8, folder: str | None = None,
                mask: str | None = None, method: str | None = None) -> str:
  """``sde-jax inpaint``: inpaints ``num_images`` images (the eval split or ``folder``).

  ``mask`` (default ``config.controllable.mask``, else 'right_half') names the unknown region,
  see :func:`~sde_jax.controllable.masks.make_mask`. Writes
  ``WORKDIR/controllable/inpaint-<method>.png`` (rows: input | known pixels | result) and
  ``.npz`` (``images``, ``mask``, ``result``).

  Args:
    config: the score model's config.
    workdir: holds its ``checkpoints/``; the outputs go to ``controllable/``.
    num_images: how many images.
    folder: a folder of images instead of the eval split.
    mask: a key of :data:`~sde_jax.controllable.masks.MASKS`.
    method: ``'replacement'`` or ``'tmpd'``; default ``controllable.method``.

  Returns:
    The path of the PNG.
  """
  config_check.check(config, 'inpaint', folder=folder)  # every field, before the workdir
  c = config.get('controllable', {})
  method = (method or c.get('method', 'replacement')).lower()
  kind = mask or c.get('mask', 'right_half')
  images = load_images(config, num_images, folder)
  known = make_mask(kind, images.shape[1:])
  result = inpaint_images(config, workdir, images, known, method=method)
  path = _output(workdir, f'inpaint-{method}.png')
  workdir_lib.write_atomic(path[:-4] + '.npz', lambda f: np.savez(
      f, images=images, mask=known, result=result))
  viz.write_rows_png(path, images, images_lib.masked_view(images, known), result)
  return path


def colorize_job(config, workdir: str, *, num_images: int = 8, folder: str | None = None,
                 method: str | None = None) -> str:
  """``sde-jax colorize``: colours the gray versions of ``num_images`` RGB images.

  Writes ``WORKDIR/controllable/colorize-<method>.png`` (rows: input | gray | result) and
  ``.npz`` (``images``, ``gray``, ``result``).

  Args:
    config: the RGB score model's config.
    workdir: holds its ``checkpoints/``; the outputs go to ``controllable/``.
    num_images: how many images.
    folder: a folder of images instead of the eval split.
    method: ``'replacement'`` or ``'tmpd'``; default ``controllable.method``.

  Returns:
    The path of the PNG.
  """
  config_check.check(config, 'colorize', folder=folder)  # every field, before the workdir
  method = (method or config.get('controllable', {}).get('method', 'replacement')).lower()
  images = load_images(config, num_images, folder)
  result = colorize_images(config, workdir, images, method=method)
  gray = images_lib.gray_images(images)
  path = _output(workdir, f'colorize-{method}.png')
  workdir_lib.write_atomic(path[:-4] + '.npz', lambda f: np.savez(
      f, images=images, gray=gray, result=result))
  viz.write_rows_png(path, images, gray, result)
  return path


def class_job(config, workdir: str, label: int, *, num_samples: int = 16,
              guidance_scale: float | None = None) -> str:
  """``sde-jax sample --class K``: ``num_samples`` samples of class ``label``.

  Writes ``WORKDIR/controllable/class-<label>.png`` (a grid, enlarged by
  :func:`sde_jax.viz.zoom`) and ``.npz`` (``samples``).

  Args:
    config: the score model's config with ``classifier``.
    workdir: holds ``checkpoints/`` and ``classifier/``; the outputs go to ``controllable/``.
    label: the class.
    num_samples: how many samples.
    guidance_scale: default ``controllable.guidance_scale``.

  Returns:
    The path of the PNG.
  """
  config_check.check(config, 'class')  # every field, before the workdir is touched
  samples = sample_class(config, workdir, np.full(num_samples, label),
                         guidance_scale=guidance_scale)
  path = _output(workdir, f'class-{label}.png')
  workdir_lib.write_atomic(path[:-4] + '.npz', lambda f: np.savez(f, samples=samples))
  viz.image_grid_png(path, viz.zoom(samples))
  return path
