"""The progress bar of an evaluation stage."""

from __future__ import annotations

import jax
from tqdm import tqdm


def progress_bar(total: int, done: int, unit: str, desc: str, hide: bool = False) -> tqdm:
  """A progress bar with rate and ETA, on process 0, unless there is nothing left to do.

  Args:
    total: rounds (or images) of the stage.
    done: those finished before this run.
    unit: what is counted.
    desc: the bar's label.
    hide: True when nothing is left to do.

  Returns:
    The bar (a context manager).
  """
  return tqdm(total=total, initial=done, unit=unit, desc=desc, smoothing=0.1,
              disable=hide or jax.process_index() != 0)
