"""The score model of a config: network, SDE, score function, image shape and data scalers.

Every job that trains or samples the score network (train, sample, eval, inpaint, colorize,
sample --class) builds this once from its config; the math below it takes plain arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from sde_jax import data as data_lib
from sde_jax import losses, models
from sde_jax import sde as sde_lib


@dataclasses.dataclass(frozen=True)
class ScoreModel:
  """The pieces a job builds from its config, read once.

  Attributes:
    model: the flax network.
    sde: the config's SDE.
    score_fn: ``(params, x, t) -> score`` (None for a network that is not a score model, such
      as the noise-conditional classifier).
    image_shape: (H, W, C).
    scaler: [0, 1] data -> model space.
    inverse_scaler: model space -> [0, 1].
  """

  model: Any
  sde: sde_lib.SDE
  score_fn: Callable | None
  image_shape: tuple[int, int, int]
  scaler: Callable
  inverse_scaler: Callable

  @classmethod
  def from_config(cls, config, model=None) -> 'ScoreModel':
    """The config's score network (or ``model`` in its place, without a score function)."""
    sde = sde_lib.from_config(config)
    d = config.data
    score_fn = None
    if model is None:
      model = models.get_model(config)
      score_fn = models.get_score_fn(sde, model, continuous=config.training.continuous)
    return cls(model, sde, score_fn, (d.image_size, d.image_size, d.num_channels),
               data_lib.get_data_scaler(config), data_lib.get_data_inverse_scaler(config))

  def loss_fn(self, config, train: bool):
    """``loss(params, key, images)`` with images in [0, 1] (scaled to model space inside)."""
    loss = losses.get_loss_fn(config, self.sde, self.model, train=train)
    return lambda params, key, images: loss(params, key, self.scaler(images))

  def abstract_params(self):
    """The network's parameters as ``ShapeDtypeStruct`` leaves (nothing is computed)."""
    return jax.eval_shape(lambda key: models.init_params(self.model, key, (1, *self.image_shape)),
                          jax.random.key(0))
