""":class:`Source`: the records of one TensorFlow-read data set and how to decode them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Source:
  """Records of one data set and how to decode them.

  ``read(split, file_seed)`` gives this process's shard as a tf.data.Dataset of
  {'image': undecoded, 'label': int32}, its files shuffled with ``file_seed`` unless it is None;
  ``decode(raw) -> uint8 (H, W, C)``; ``sizes(split) -> (examples in this process's shard, in the
  largest shard)``.
  """
  read: Callable[[str, int | None], Any]
  decode: Callable[[Any], Any]
  sizes: Callable[[str], tuple[int, int]]
  train_split: str
  eval_split: str
