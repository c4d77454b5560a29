"""Score networks and the score functions built from them.

A model is a ``flax.linen`` Module called as ``model.apply({'params': p}, x, labels, train=...)``
(with ``rngs={'dropout': key}`` when training). What ``labels`` means depends on the SDE and on
continuous vs discrete training; :func:`get_score_fn` applies the original code's conventions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_jax import sde as sde_lib
from sde_jax.models import compute
from sde_jax.models.ddpm import DDPM, ddpm_from_config
from sde_jax.models.mlp import MLP
from sde_jax.models.ncsnpp import NCSNpp
from sde_jax.models.ncsnv2 import NCSNv2, ncsnv2_from_config
from sde_jax.sde import batch_mul

Array = jax.Array


def _mlp(config):
  m = config.model
  return MLP(features=tuple(m.features), embedding_type=m.embedding_type,
             embedding_dim=m.embedding_dim, fourier_scale=m.fourier_scale,
             scale_by_sigma=m.scale_by_sigma, dtype=compute.options_from_config(m)['dtype'])


_NCSNPP_FIELDS = ('nf', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'dropout',
                  'resamp_with_conv', 'conditional', 'fir', 'fir_kernel', 'skip_rescale',
                  'resblock_type', 'progressive', 'progressive_input', 'progressive_combine',
                  'attention_type', 'init_scale', 'embedding_type', 'fourier_scale',
                  'scale_by_sigma', 'nonlinearity', 'conv_size', 'sigma_min', 'sigma_max',
                  'num_scales')


def _ncsnpp(config):
  m = config.model
  missing = [f for f in _NCSNPP_FIELDS if f not in m]
  if missing:
    raise ValueError(f'config.model lacks {missing}, which model.name=\'ncsnpp\' needs.')
  kwargs = {f: m[f] for f in _NCSNPP_FIELDS}
  for f in ('resblock_type', 'progressive', 'progressive_input', 'progressive_combine',
            'embedding_type', 'attention_type'):
    kwargs[f] = kwargs[f].lower()
  for f in ('ch_mult', 'attn_resolutions', 'fir_kernel'):
    kwargs[f] = tuple(kwargs[f])
  if kwargs['embedding_type'] == 'fourier' and not config.training.continuous:
    raise ValueError("model.embedding_type='fourier' needs training.continuous=True: its labels "
                     'are noise levels, not discrete indices.')
  return NCSNpp(centered=config.data.centered, **kwargs, **compute.options_from_config(m))


def _flavoured(factory):
  """``factory(config, flavour)`` with ``config.model.flavour`` ('jax' by default): which
  original's numerics a network follows where the two differ (NCSNv2 / NCSN)."""
  return lambda config: factory(config, flavour=config.model.get('flavour', 'jax'))


MODELS: dict[str, Callable] = {
    'mlp': _mlp,
    'ncsnpp': _ncsnpp,
    'ddpm': _flavoured(ddpm_from_config),
    'ncsnv2_64': _flavoured(ncsnv2_from_config),
    'ncsnv2_128': _flavoured(ncsnv2_from_config),
    'ncsnv2_256': _flavoured(ncsnv2_from_config),
    'ncsn': _flavoured(ncsnv2_from_config),
}


def get_model(config):
  """The Module named by ``config.model.name``."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'config.model.name={name!r} is not a known model; expected one of '
                     f'{sorted(MODELS)}.')
  return MODELS[name](config)


def init_params(model, key: Array, shape: tuple[int, ...]):
  """Initial parameters of ``model`` for inputs of ``shape`` (labels of ones).

  Args:
    model: a score network following the contract in this package's docstring.
    key: a PRNG key, used for both the ``params`` and the ``dropout`` streams of ``init``.
    shape: the input shape ``(B, ...)`` (e.g. ``(1, H, W, C)``); the model is traced on float32
      zeros of this shape with float32 labels of shape (B,), in evaluation mode.

  Returns:
    The ``params`` collection of the initialised variables.
  """
  variables = model.init({'params': key, 'dropout': key}, jnp.zeros(shape, jnp.float32),
                         jnp.ones((shape[0],), jnp.float32), train=False)
  return variables['params']


def _labels_and_std(sde: sde_lib.SDE, continuous: bool, t: Array):
  """Network labels for time ``t`` and the std the output is divided by (None: raw score).

  VP / sub-VP, continuous: label ``999 t``, score ``-out / std(t)`` (the network predicts noise).
  VP, discrete: label ``(N - 1) t``, std ``sqrt(1 - alphabar_i)`` of level ``floor((N - 1) t)``.
  VE, continuous: label ``sigma(t)``; VE, discrete: index ``round((T - t)(N - 1))`` into the
  descending noise levels. VE networks output the score itself.
  """
  if isinstance(sde, sde_lib.VESDE):
    if continuous:
      return sde.marginal_prob(jnp.zeros_like(t), t)[1], None
    return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32), None
  if continuous or isinstance(sde, sde_lib.SubVPSDE):
    return t * 999, sde.marginal_prob(jnp.zeros_like(t), t)[1]
  return t * (sde.N - 1), sde.sqrt_1m_alphas_cumprod[sde.timestep(t)]


def get_score_fn(sde: sde_lib.SDE, model, continuous: bool = True, train: bool = False):
  """``score_fn(params, x, t, key=None) -> grad_x log p_t(x)`` for ``model`` under ``sde``.

  Args:
    sde: the forward SDE the model was trained for.
    model: a Module following the contract in this package's docstring.
    continuous: whether the model was trained with continuous time (label conventions differ).
    train: run the model in training mode; ``key`` then feeds dropout.

  Returns:
    ``score_fn(params, x, t, key=None)`` with ``x`` in model space, shape (B, ...), and ``t`` of
    shape (B,); the score has the shape of ``x``.
  """
  def score_fn(params, x, t, key=None):
    labels, std = _labels_and_std(sde, continuous, t)
    rngs = {'dropout': key} if (train and key is not None) else {}
    out = model.apply({'params': params}, x, labels, train=train, rngs=rngs)
    return out if std is None else batch_mul(-1.0 / std, out)

  return score_fn


__all__ = ['DDPM', 'MLP', 'MODELS', 'NCSNpp', 'NCSNv2', 'get_model', 'get_score_fn', 'init_params']
