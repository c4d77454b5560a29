"""The noise-conditional classifier that ``sde-jax train-classifier`` saves under
``WORKDIR/classifier/``, restored for class-conditional sampling."""

from __future__ import annotations

import os
from typing import Any

from sde_jax import checkpoints
from sde_jax.models import classifier as classifier_lib
from sde_jax.score_model import ScoreModel

SUBDIR = 'classifier'  # the classifier's folder under a workdir, beside the score model's files


def restore_classifier(config, workdir: str, step: int | None = None) -> tuple[Any, Any, int]:
  """The classifier module, its EMA parameters from ``workdir/classifier``, and their step.

  Args:
    config: a config with ``classifier`` (and the data fields).
    workdir: the job's directory.
    step: the checkpoint; default the latest.

  Returns:
    ``(module, params on one device, step)``.

  Raises:
    FileNotFoundError: if ``workdir`` holds no classifier checkpoint (train one first).
  """
  classifier = ScoreModel.from_config(config, model=classifier_lib.get_classifier(config))
  try:
    params, step = checkpoints.restore_ema(os.path.join(workdir, SUBDIR),
                                           classifier.abstract_params(), step=step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e} Train a classifier first: sde-jax train-classifier --config '
                            f'... --workdir {workdir}') from e
  return classifier.model, params, step
