"""Scalers between data space ([0, 1]) and model space ([-1, 1] when ``config.data.centered``).

The toy distributions are real-valued already and are used as they are (their configs are not
centered, so their scaler is the identity).
"""

from __future__ import annotations

from typing import Callable

import jax

Array = jax.Array


def get_data_scaler(config) -> Callable[[Array], Array]:
  """Data in [0, 1] -> model space ([-1, 1] if ``config.data.centered``)."""
  if config.data.centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config) -> Callable[[Array], Array]:
  """Model space -> data in [0, 1] (the inverse of :func:`get_data_scaler`)."""
  if config.data.centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x
