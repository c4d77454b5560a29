"""Samplers of the reverse process: predictor-corrector (``'pc'``), probability-flow ODE
(``'ode'``), the fast samplers ``'dpm_solver++'``, ``'heun'`` (EDM) and ``'adaptive_sde'``
("Gotta Go Fast"), and ``'predict_project'`` (Euler-Maruyama with a learned projection).

Every sampler is ``sampler(key, score_fn, params, ...) -> (x, nfe)`` with ``x`` in model space
and ``nfe`` the number of score evaluations spent; a non-finite state raises a
FloatingPointError naming the examples and the time (:mod:`sde_jax.nonfinite`), and
``sampler.reporting(...)`` returns ``(x, nfe, report)`` instead. See ``docs/sampling.md`` and
``docs/fast_samplers.md``; ``'predict_project'`` also takes the projection network's params
(``docs/predict_project.md``).
"""

from __future__ import annotations

import inspect

from sde_jax.sampling.adaptive_sde import get_adaptive_sde_sampler
from sde_jax.sampling.correctors import CORRECTORS
from sde_jax.sampling.dpm_solver import get_dpm_solver_sampler
from sde_jax.sampling.heun import get_heun_sampler
from sde_jax.sampling.ode import get_ode_sampler
from sde_jax.sampling.pc import get_pc_sampler, lookup
from sde_jax.sampling.predict_project import get_predict_project_sampler
from sde_jax.sampling.predictors import PREDICTORS
from sde_jax.sde import SDE, VESDE

__all__ = ['CORRECTORS', 'PREDICTORS', 'SAMPLERS', 'get_adaptive_sde_sampler',
           'get_dpm_solver_sampler', 'get_heun_sampler', 'get_ode_sampler', 'get_pc_sampler',
           'get_predict_project_sampler',
           'get_sampler', 'get_sampler_from_config', 'config_fields', 'describe_from_config',
           'options_from_config', 'CONFIG_FIELDS']

SAMPLERS = {'pc': get_pc_sampler, 'ode': get_ode_sampler, 'dpm_solver++': get_dpm_solver_sampler,
            'heun': get_heun_sampler, 'adaptive_sde': get_adaptive_sde_sampler,
            'predict_project': get_predict_project_sampler}


def get_sampler(method: str, sde: SDE, shape: tuple[int, ...], **options):
  """Builds the sampler ``SAMPLERS[method](sde, shape, **options)``.

  Args:
    method: a name in :data:`SAMPLERS` (``'pc'``, ``'ode'``, ``'dpm_solver++'``, ``'heun'``,
      ``'adaptive_sde'``, ``'predict_project'``).
    sde: the forward SDE.
    shape: ``(B, ...)``, the shape of one batch of samples (model space).
    **options: keyword options of the method's factory (e.g. ``snr`` for ``'pc'``, ``nfe`` for
      ``'heun'``); those not given take the factory's defaults.

  Returns:
    The method's ``sampler(key, score_fn, params, ...) -> (x, nfe)`` (see this package's
    docstring).

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


def _lower(value) -> str:
  return str(value).lower()


def _optional_int(value) -> int | None:
  return None if value is None else int(value)


REQUIRED = object()  # a config field without a default
# What each method reads from ``config.sampling``: (config field, option of the sampler's
# factory, type, default when the config lacks the field or holds None). Every method also reads
# ``noise_removal`` (-> ``denoise``) and ``eps``. The adaptive SDE solver's tolerances have their
# own names because the ODE's ``rtol = atol = 1e-5`` would make it take thousands of steps.
CONFIG_FIELDS = {
    'pc': (('predictor', 'predictor', _lower, REQUIRED),
           ('corrector', 'corrector', _lower, REQUIRED),
           ('snr', 'snr', float, REQUIRED), ('n_steps_each', 'n_steps', int, REQUIRED),
           ('probability_flow', 'probability_flow', bool, REQUIRED)),
    'ode': (('rtol', 'rtol', float, 1e-5), ('atol', 'atol', float, 1e-5)),
    # DPM-Solver++ is at its best from 10 to 20 evaluations; EDM's Heun sampler is defined
    # with 35.
    'dpm_solver++': (('nfe', 'nfe', int, 20), ('order', 'order', int, 2),
                     ('schedule', 'schedule', _lower, 'logsnr'),
                     ('lower_order_final', 'lower_order_final', bool, True)),
    'heun': (('nfe', 'nfe', int, 35), ('rho', 'rho', float, 7.0), ('churn', 'churn', float, 0.0),
             ('s_tmin', 's_tmin', float, 0.0), ('s_tmax', 's_tmax', float, float('inf')),
             ('s_noise', 's_noise', float, 1.0)),
    'adaptive_sde': (('reltol', 'rtol', float, 0.05), ('abstol', 'atol', float, 0.0078),
                     ('h_init', 'h_init', float, 0.01), ('safety', 'safety', float, 0.9),
                     ('exponent', 'exponent', float, 0.9)),
    # Steps of the grid (None: model.num_scales, as PC) and the projection's weight; the
    # projection network is the job's (sde-jax train-projection), not a config field.
    'predict_project': (('pp_n_steps', 'n_steps', _optional_int, None),
                        ('pp_step_size', 'step_size', float, 1.0)),
}


def config_fields(config, sde: SDE) -> dict:
  """The fields of ``config.sampling`` that the configured sampler reads, with the values it
  uses (defaults filled in): ``method``, ``eps``, ``noise_removal`` and the method's own.

  ``eps`` absent means the original's sampling_eps: 1e-5 for VE, 1e-3 for VP and sub-VP.

  Raises:
    ValueError: for an unknown method, or a required field the config lacks.
  """
  cfg = config.sampling
  method = _lower(cfg.method)
  eps = cfg.get('eps')
  return {'method': method, 'eps': float((1e-5 if isinstance(sde, VESDE) else 1e-3)
                                         if eps is None else eps),
          'noise_removal': bool(cfg.noise_removal), **_method_values(cfg, method)}


def _method_values(cfg, method: str) -> dict:
  """The fields of :data:`CONFIG_FIELDS` ``[method]`` in ``cfg`` (``config.sampling``), typed,
  with the defaults where they are missing or None."""
  values = {}
  for field, _, kind, default in lookup(CONFIG_FIELDS, method, 'sampling.method'):
    value = cfg.get(field)
    if value is None:
      if default is REQUIRED:
        raise ValueError(f'config.sampling.{field} is needed by sampling.method={method!r} '
                         'and is missing (or None).')
      value = default
    values[field] = kind(value)
  return values


def options_from_config(config, sde: SDE) -> tuple[str, dict]:
  """``(method, options)``: the sampler ``config.sampling`` names and the keyword options of its
  factory (:data:`CONFIG_FIELDS` mapped to the factory's names, plus ``eps`` and ``denoise``)."""
  values = config_fields(config, sde)
  method = values['method']
  options = {'eps': values['eps'], 'denoise': values['noise_removal']}
  options.update({option: values[field] for field, option, _, _ in CONFIG_FIELDS[method]})
  return method, options


def get_sampler_from_config(config, sde: SDE, shape: tuple[int, ...], **extra):
  """Builds the sampler named by ``config.sampling.method`` with the options of
  :data:`CONFIG_FIELDS` (the original configs' fields and more).

  The configs of configs/ hold every field (``configs._recipes.sampling``); a config without
  the fast samplers' fields (an older one) gets the defaults of :data:`CONFIG_FIELDS`.

  Args:
    config: a config with a ``sampling`` section (see :func:`config_fields`).
    sde: the forward SDE; also picks the default ``eps`` (1e-5 for VE, 1e-3 otherwise).
    shape: ``(B, ...)``, the shape of one batch of samples (model space).
    **extra: options that are not config fields: ``projection_fn`` for ``'predict_project'``.

  Returns:
    The sampler, as :func:`get_sampler` returns it.

  Raises:
    ValueError: for an unknown method, or a required field the config lacks.
  """
  method, options = options_from_config(config, sde)
  return get_sampler(method, sde, shape, **options, **extra)


def describe_from_config(config) -> str:
  """The sampler ``config.sampling`` builds, in one line for logs and reports, e.g.
  ``pc (reverse_diffusion + langevin, snr 0.16)`` or ``heun (nfe 35)``."""
  cfg = config.sampling
  method = _lower(cfg.method)
  if method == 'pc':
    detail = f'{cfg.predictor} + {cfg.corrector}'
    if _lower(cfg.corrector) != 'none':
      detail += f', snr {cfg.snr}'
    return f'pc ({detail}{", probability flow" if cfg.probability_flow else ""})'
  if method not in CONFIG_FIELDS:
    return method
  shown = {'ode': ('rtol', 'atol'), 'dpm_solver++': ('nfe', 'order', 'schedule'),
           'heun': ('nfe', 'churn'), 'adaptive_sde': ('reltol', 'abstol'),
           'predict_project': ('pp_n_steps', 'pp_step_size')}[method]
  values = {k: v for k, v in _method_values(cfg, method).items()
            if k in shown and v is not None}
  if not values.get('churn', 1):
    del values['churn']
  detail = ', '.join(f'{k} {v}' for k, v in values.items())
  return f'{method} ({detail})' if detail else method
