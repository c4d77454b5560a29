"""The FID Inception network of an evaluation job, its weights placed on the devices once, and
the data set's features that samples are compared with."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from sde_jax import parallel
from sde_jax import workdir as workdir_lib
from sde_jax.evaluate.settings import EvalSettings
from sde_jax.metrics import fid, inception


@dataclasses.dataclass(frozen=True)
class Inception:
  """The FID Inception network with its weights; ``features`` runs it on every device.

  Attributes:
    model: the network.
    params: its weights, replicated over the job's mesh (placed once, by
      :func:`load_inception`).
    apply_fn: ``(params, uint8 images) -> outputs``; one object, so that
      ``fid.extract_features`` compiles it once.
    weights: the absolute path of the weights file.
  """

  model: inception.InceptionV3
  params: Any
  apply_fn: Callable
  weights: str

  @property
  def pool_dim(self) -> int:
    return int(inception.param_shapes(self.model)[('fc', 'kernel')].shape[0])

  def features(self, local_images: np.ndarray, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """``pool_3`` and ``logits`` of this process's uint8 images, over all processes
    (:func:`sde_jax.metrics.fid.extract_features`).

    Args:
      local_images: this process's uint8 images (n, H, W, C), n the same on every process.
      batch_size: the global batch.
      mesh: the job's mesh.

    Returns:
      ``{'pool_3', 'logits'}`` of the images of every process, in order.
    """
    return fid.extract_features(self.apply_fn, self.params, local_images, batch_size, mesh)


def load_inception(settings: EvalSettings, mesh) -> Inception:
  """The network of ``eval.inception_width`` / ``inception_image_size`` with the weights at
  ``eval.inception_weights``, replicated over ``mesh``.

  Raises:
    FileNotFoundError: if the weights are not set or not there (saying where to get them).
  """
  if not settings.inception_weights:
    raise FileNotFoundError(
        'config.eval.inception_weights is not set. sde-jax never downloads the Inception '
        f"weights: get pytorch-fid's FID Inception file from {inception.WEIGHTS_URL} and pass "
        '--config.eval.inception_weights=PATH (the .pth, or an .npz converted from it; see '
        'docs/evaluation.md).')
  model, apply_fn = inception_network(settings)
  params = inception.load_params(settings.inception_weights, model)
  # Once per job: every call of fid.extract_features then finds them in place.
  params = jax.device_put(params, parallel.replicated(mesh))
  return Inception(model, params, apply_fn, os.fspath(workdir_lib.path(settings.inception_weights)))


def inception_network(settings: EvalSettings) -> tuple[inception.InceptionV3, Callable]:
  """The network of ``eval.inception_width`` / ``inception_image_size`` and its
  ``apply_fn(params, uint8 images) -> {'pool_3', 'logits'}`` (no weights read)."""
  model = inception.InceptionV3(width=settings.inception_width,
                                image_size=settings.inception_image_size)
  return model, lambda p, x: model.apply({'params': p}, x)


def load_data_pools(settings: EvalSettings, config, net: Inception) -> np.ndarray:
  """The data set's ``pool_3`` features from ``eval.stats_path``.

  Args:
    settings: the job's settings (``stats_path``, ``inception_width``).
    config: the job's config (the data set, to name the file to compute if it is missing).
    net: the job's Inception network.

  Returns:
    ``pool_3`` features (n, d).

  Raises:
    FileNotFoundError: if the path is not set or the file is missing.
    ValueError: if the features are not the network's (another width).
  """
  if not settings.stats_path:
    name = fid.stats_filename(config.data.dataset, config.data.image_size,
                              config.data.get('category'))
    raise FileNotFoundError(
        'config.eval.stats_path is not set: FID and KID compare samples with the data set\'s '
        f'Inception features. Compute them once with `sde-jax fid-stats` (it writes {name}), '
        'or use the original score_sde file of that name, and pass '
        '--config.eval.stats_path=PATH.')
  pools = fid.load_stats(settings.stats_path)['pool_3']
  if pools.ndim != 2 or pools.shape[1] != net.pool_dim:
    raise ValueError(f'{settings.stats_path} holds pool_3 features of shape {pools.shape}; the '
                     f'Inception network of eval.inception_width={settings.inception_width} '
                     f'gives {net.pool_dim} per image.')
  return pools
