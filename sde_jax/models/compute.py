"""How a network computes: its compute dtype (mixed precision) and rematerialisation.

Mixed precision follows one rule in every network here: parameters are created and stored in
float32, the network casts its input once to its ``dtype``, and each layer computes in the dtype
of its input (convolutions and dense layers cast their float32 weights per use), so with
``dtype=bfloat16`` the convolutions, dense layers and attention products run in bfloat16 while
normalisation statistics, the attention softmax, the time embeddings and the network's output
stay float32. Gradients reach the float32 parameters through the casts. With the default
float32 every cast is the identity and the outputs are those of the plain networks, bit for bit.

Rematerialisation wraps each residual and attention block in ``flax.linen.remat``: the backward
pass recomputes the block's activations instead of keeping them, which trades a second forward
pass of the block for the memory of its intermediates. The wrapped class keeps the block's
name, so parameter paths (and the import of the original checkpoints) do not change.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# ``config.model.remat`` values: True (or 'block') saves nothing inside a block; the others
# are the ``jax.checkpoint_policies`` of that name, which keep some intermediates (e.g. the
# outputs of matrix products) and recompute the rest.
REMAT_POLICIES = {
    'block': None,
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything_saveable': jax.checkpoint_policies.everything_saveable,
}


def compute_dtype(name: Any) -> Any:
  """The jnp dtype of ``config.model.dtype`` (``'float32'`` or ``'bfloat16'``)."""
  key = str(jnp.dtype(name)) if not isinstance(name, str) else name.lower()
  if key not in COMPUTE_DTYPES:
    raise ValueError(f'model.dtype={name!r} is not supported; expected one of '
                     f'{sorted(COMPUTE_DTYPES)}.')
  return COMPUTE_DTYPES[key]


def remat_policy(value: Any) -> Optional[str]:
  """The normalised ``config.model.remat``: None (off) or a key of :data:`REMAT_POLICIES`.

  False, None, ``'none'`` and ``'false'`` mean off; True and ``'true'`` mean ``'block'``.
  """
  if value is None or value is False or str(value).lower() in ('none', 'false', ''):
    return None
  if value is True or str(value).lower() == 'true':
    return 'block'
  if isinstance(value, str) and value.lower() in REMAT_POLICIES:
    return value.lower()
  raise ValueError(f'model.remat={value!r} is not supported; expected False, True or a policy '
                   f'name in {sorted(REMAT_POLICIES)}.')


def options_from_config(section) -> dict:
  """``{'dtype': ..., 'remat': ...}`` of a model config section (defaults: float32, off)."""
  return {'dtype': compute_dtype(section.get('dtype', 'float32')),
          'remat': remat_policy(section.get('remat', False))}


@functools.lru_cache(maxsize=None)
def remat_block(cls: type, policy: Optional[str], static_argnums: tuple[int, ...] = ()):
  """``cls`` itself when ``policy`` is None, else ``nn.remat(cls)`` under that policy.

  Args:
    cls: a block Module class.
    policy: None or a key of :data:`REMAT_POLICIES`.
    static_argnums: positions of ``cls.__call__``'s Python arguments (``self`` is 0), such as
      a ``train`` flag, which the remat trace must not turn into arrays.

  Returns:
    A Module class. The rematerialised class carries ``cls``'s name, because Flax names a
    submodule after its class (``ResnetBlockBigGANpp_3``) and the parameter paths must not
    change.
  """
  if policy is None:
    return cls
  wrapped = nn.remat(cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)
  wrapped.__name__ = cls.__name__
  wrapped.__qualname__ = cls.__qualname__
  return wrapped


def cast_in(x: jax.Array, dtype: Any) -> jax.Array:
  """The network's input in its compute dtype."""
  return x.astype(dtype)


def cast_out(x: jax.Array) -> jax.Array:
  """The network's output in float32, whatever it computed in."""
  return x.astype(jnp.float32)
