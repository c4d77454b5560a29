"""The score model's :class:`~sde_jax.train.loop.Trainer` built from a config: what
``sde-jax train`` fits and what ``sde-jax plan`` compiles ahead of time, one definition for
both."""

from __future__ import annotations

import json
from typing import Callable

from sde_jax.score_model import ScoreModel
from sde_jax.train import loop


def score_trainer(config, score_model: ScoreModel, evaluate: Callable | None = None,
                  after_keep: Callable | None = None) -> loop.Trainer:
  """The trainer of ``config``'s score network: its training loss on ``batch['image']``,
  ``config.training`` / ``config.optim`` / ``model.ema_rate``, and the config as metadata (what a
  resume is checked against).

  Args:
    config: the job's config.
    score_model: its :class:`~sde_jax.score_model.ScoreModel`.
    evaluate: the trainer's ``evaluate`` hook (:class:`~sde_jax.train.loop.Trainer`).
    after_keep: its ``after_keep`` hook.
  """
  train_loss = score_model.loss_fn(config, train=True)
  return loop.Trainer(
      name=config.model.name, source='sde-jax train', model=score_model.model,
      example_shape=score_model.image_shape,
      loss_fn=lambda params, key, batch: train_loss(params, key, batch['image']),
      training=config.training, optim=config.optim, ema_rate=config.model.ema_rate,
      evaluate=evaluate, after_keep=after_keep,
      meta={'config': json.loads(config.to_json_best_effort())})
