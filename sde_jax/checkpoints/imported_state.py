""":class:`ImportedState`: what an import of an original checkpoint yields, and what sde-jax's
own checkpoints restore as a whole."""

from __future__ import annotations

import dataclasses
from typing import Any

Params = Any


@dataclasses.dataclass(frozen=True)
class ImportedState:
  """What the original checkpoints hold that sde-jax uses: weights, EMA weights, step."""

  params: Params
  params_ema: Params
  step: int
