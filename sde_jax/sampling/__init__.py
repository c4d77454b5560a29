"""Samplers of the reverse process: predictor-corrector (``'pc'``) and probability-flow ODE
(``'ode'``).

Every sampler is ``sampler(key, score_fn, params, ...) -> (x, nfe)`` with ``x`` in model space
and ``nfe`` the number of score evaluations spent. See ``docs/sampling.md``.
"""

from __future__ import annotations

import inspect

from sde_jax.sampling.correctors import CORRECTORS
from sde_jax.sampling.ode import get_ode_sampler
from sde_jax.sampling.pc import get_pc_sampler, lookup
from sde_jax.sampling.predictors import PREDICTORS
from sde_jax.sde import SDE, VESDE

__all__ = ['CORRECTORS', 'PREDICTORS', 'SAMPLERS', 'get_ode_sampler', 'get_pc_sampler',
           'get_sampler', 'get_sampler_from_config']

SAMPLERS = {'pc': get_pc_sampler, 'ode': get_ode_sampler}


def get_sampler(method: str, sde: SDE, shape: tuple[int, ...], **options):
  """Builds the sampler ``SAMPLERS[method](sde, shape, **options)``.

  Raises:
    ValueError: for an unknown method.
    TypeError: for an option the method does not take (all of them named).
  """
  factory = lookup(SAMPLERS, method, 'method')
  valid = [p for p in inspect.signature(factory).parameters if p not in ('sde', 'shape')]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(f'method={method!r} takes no option(s) {unknown}; valid options: {valid}.')
  return factory(sde, shape, **options)


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...]):
  """Builds the sampler named by ``config.sampling`` (the original configs' fields).

  Reads ``method`` ('pc' | 'ode'), ``noise_removal`` (-> denoise), and for 'pc' ``predictor``,
  ``corrector``, ``snr``, ``n_steps_each``, ``probability_flow``; for 'ode' the optional
  ``rtol``, ``atol``. ``eps`` is ``config.sampling.eps`` if present, else the original's
  sampling_eps: 1e-5 for VE and 1e-3 for VP and sub-VP.
  """
  cfg = config.sampling
  method = cfg.method.lower()
  eps = cfg.get('eps', 1e-5 if isinstance(sde, VESDE) else 1e-3)
  options = {'eps': eps, 'denoise': bool(cfg.noise_removal)}
  if method == 'pc':
    options.update(predictor=cfg.predictor.lower(), corrector=cfg.corrector.lower(),
                   snr=float(cfg.snr), n_steps=int(cfg.n_steps_each),
                   probability_flow=bool(cfg.probability_flow))
  elif method == 'ode':
    options.update(rtol=float(cfg.get('rtol', 1e-5)), atol=float(cfg.get('atol', 1e-5)))
  return get_sampler(method, sde, shape, **options)
