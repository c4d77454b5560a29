"""Random streams: per-example keys, and the stream ids folded into keys (one table of them).

Sample ``i`` of a job draws all of its randomness from ``fold_in(key, first_index + i)``, so a
sample does not depend on the batch size, on how the batch is split over devices, or on which
round of a long sampling job produced it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Stream ids: a key is folded with one of these before use, so that two uses of one key never
# share draws. Their values are part of the results (a changed value changes every sample), so
# they live here, once.
# Per-example sampler streams: fold_in(k_i, id), k_i = fold_in(key, first_index + i).
PRIOR, CORRECTOR, PREDICTOR = 0, 1, 2  # the prior draw, corrector noise, predictor noise
REPLACE_PRIOR, REPLACE_CORRECTOR, REPLACE_PREDICTOR = 3, 4, 5  # controllable: noised data
# Job streams.
TRAIN_EVAL = 1  # trainers: the eval loss / accuracy, fold_in(fold_in(key, step), TRAIN_EVAL)
EVAL_LOSS, EVAL_BPD = 0, 1  # sde-jax eval: the eval loss and the bits/dim draws
DATA_TRAIN, DATA_EVAL = 0, 1  # input pipelines: tags hashed into the shuffle / augment seeds


def per_example_keys(key: Array, batch_size: int, first_index: int | Array = 0) -> Array:
  """Keys ``fold_in(key, first_index + i)`` for ``i < batch_size``, shape (batch_size,).

  ``first_index`` may be a Python int or a traced array of any integer type.
  """
  index = jnp.asarray(first_index).astype(jnp.uint32) + jnp.arange(batch_size, dtype=jnp.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def fold_in_all(keys: Array, data: int | Array) -> Array:
  """Folds the same ``data`` (e.g. a step index) into every per-example key."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def normal(keys: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Standard normal draws of ``shape`` = (B, ...), example i from ``keys[i]``."""
  return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)


def rademacher(keys: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """Uniform +-1 draws of ``shape`` = (B, ...), example i from ``keys[i]``."""
  return jax.vmap(lambda k: jax.random.rademacher(k, shape[1:], dtype))(keys)


def uniform(keys: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """U[0, 1) draws of ``shape`` = (B, ...), example i from ``keys[i]``."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape[1:], dtype))(keys)
