"""Samplers of the reverse process: predictor-corrector (``'pc'``), probability-flow ODE
(``'ode'``), and the fast samplers ``'dpm_solver++'``, ``'heun'`` (EDM) and ``'adaptive_sde'``
("Gotta Go Fast").

Every sampler is ``sampler(key, score_fn, params, ...) -> (x, nfe)`` with ``x`` in model space
and ``nfe`` the number of score evaluations spent. See ``docs/sampling.md`` and
``docs/fast_samplers.md``.
"""

from __future__ import annotations

import inspect

from sde_jax.sampling.adaptive_sde import get_adaptive_sde_sampler
from sde_jax.sampling.correctors import CORRECTORS
from sde_jax.sampling.dpm_solver import get_dpm_solver_sampler
from sde_jax.sampling.heun import get_heun_sampler
from sde_jax.sampling.ode import get_ode_sampler
from sde_jax.sampling.pc import get_pc_sampler, lookup
from sde_jax.sampling.predictors import PREDICTORS
from sde_jax.sde import SDE, VESDE

__all__ = ['CORRECTORS', 'PREDICTORS', 'SAMPLERS', 'get_adaptive_sde_sampler',
           'get_dpm_solver_sampler', 'get_heun_sampler', 'get_ode_sampler', 'get_pc_sampler',
           'get_sampler', 'get_sampler_from_config']

SAMPLERS = {'pc': get_pc_sampler, 'ode': get_ode_sampler, 'dpm_solver++': get_dpm_solver_sampler,
            'heun': get_heun_sampler, 'adaptive_sde': get_adaptive_sde_sampler}
# Default budgets of the fixed-step samplers when the config has no ``sampling.nfe``: DPM-Solver++
# is at its best from 10 to 20 evaluations, EDM's Heun sampler is defined with 35.
DEFAULT_NFE = {'dpm_solver++': 20, 'heun': 35}


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
  """Builds the sampler named by ``config.sampling`` (the original configs' fields and more).

  Reads ``method``, ``noise_removal`` (-> denoise) and ``eps`` (if present, else the original's
  sampling_eps: 1e-5 for VE and 1e-3 for VP and sub-VP), then per method:

  * ``'pc'``: ``predictor``, ``corrector``, ``snr``, ``n_steps_each``, ``probability_flow``;
  * ``'ode'``: ``rtol``, ``atol`` (default 1e-5);
  * ``'dpm_solver++'``: ``nfe`` (20), ``order`` (2), ``schedule`` ('logsnr'),
    ``lower_order_final`` (True);
  * ``'heun'``: ``nfe`` (35), ``rho`` (7), ``churn`` (0), ``s_tmin`` (0), ``s_tmax`` (inf),
    ``s_noise`` (1);
  * ``'adaptive_sde'``: ``reltol`` (0.05), ``abstol`` (0.0078), ``h_init`` (0.01), ``safety``
    (0.9), ``exponent`` (0.9). Its tolerances have their own names because the ODE's
    ``rtol = atol = 1e-5`` would make the SDE solver take thousands of steps.

  Fields in parentheses are optional; the defaults are those shown.
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
  elif method == 'dpm_solver++':
    options.update(nfe=int(cfg.get('nfe', DEFAULT_NFE[method])), order=int(cfg.get('order', 2)),
                   schedule=str(cfg.get('schedule', 'logsnr')).lower(),
                   lower_order_final=bool(cfg.get('lower_order_final', True)))
  elif method == 'heun':
    options.update(nfe=int(cfg.get('nfe', DEFAULT_NFE[method])), rho=float(cfg.get('rho', 7.0)),
                   churn=float(cfg.get('churn', 0.0)), s_tmin=float(cfg.get('s_tmin', 0.0)),
                   s_tmax=float(cfg.get('s_tmax', float('inf'))),
                   s_noise=float(cfg.get('s_noise', 1.0)))
  elif method == 'adaptive_sde':
    options.update(rtol=float(cfg.get('reltol', 0.05)), atol=float(cfg.get('abstol', 0.0078)),
                   h_init=float(cfg.get('h_init', 0.01)), safety=float(cfg.get('safety', 0.9)),
                   exponent=float(cfg.get('exponent', 0.9)))
  return get_sampler(method, sde, shape, **options)
