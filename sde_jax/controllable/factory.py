"""The controllable samplers by task name, with their options from a config."""

from __future__ import annotations

from sde_jax import sampling
from sde_jax.controllable.class_guidance import get_pc_conditional_sampler
from sde_jax.controllable.linear import get_pc_colorizer, get_pc_inpainter
from sde_jax.sampling import pc
from sde_jax.sde import SDE

TASKS = {'inpaint': get_pc_inpainter, 'colorize': get_pc_colorizer,
         'class': get_pc_conditional_sampler}
_PC_OPTIONS = ('predictor', 'corrector', 'snr', 'n_steps', 'probability_flow', 'denoise', 'eps')
_TASK_OPTIONS = {'inpaint': _PC_OPTIONS + ('method', 'solver_iters'),
                 'colorize': _PC_OPTIONS + ('method', 'solver_iters'),
                 'class': _PC_OPTIONS + ('guidance_scale',)}


def get_controllable_sampler(task: str, sde: SDE, shape: tuple[int, ...], **options):
  """Builds ``TASKS[task](sde, shape, **options)``.

  Args:
    task: ``'inpaint'``, ``'colorize'`` or ``'class'``.
    sde: the forward SDE.
    shape: the batch's shape.
    **options: the task's options.

  Returns:
    The task's sampler.

  Raises:
    ValueError: for an unknown task (or unknown names in the options).
    TypeError: for an option the task does not take (all of them named).
  """
  factory = pc.lookup(TASKS, task, 'task')
  valid = _TASK_OPTIONS[task]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(f'task={task!r} takes no option(s) {unknown}; valid options: {list(valid)}.')
  return factory(sde, shape, **options)


def options_from_config(config, task: str, sde: SDE) -> dict:
  """The options of ``task``: the PC sampler's from ``config.sampling`` (read as
  ``sde_jax.sampling.options_from_config`` reads them) and ``config.controllable``'s
  (``method``, ``solver_iters``, ``guidance_scale``; the defaults where a config lacks them).

  Args:
    config: a config with ``sampling`` (and maybe ``controllable``).
    task: a key of :data:`TASKS`.
    sde: the config's SDE.

  Returns:
    The options of :func:`get_controllable_sampler`.

  Raises:
    ValueError: if ``config.sampling.method`` is not ``'pc'``: these samplers are PC samplers.
  """
  method, options = sampling.options_from_config(config, sde)
  if method != 'pc':
    raise ValueError(f'config.sampling.method={method!r}: inpainting, colorization and class-'
                     "conditional sampling run the PC sampler; set --config.sampling.method=pc "
                     '(its predictor, corrector, snr and n_steps_each are used).')
  c = config.get('controllable', {})
  if task == 'class':
    options['guidance_scale'] = float(c.get('guidance_scale', 1.0))
  else:
    options.update(method=str(c.get('method', 'replacement')).lower(),
                   solver_iters=int(c.get('solver_iters', 5)))
  return options


def get_controllable_sampler_from_config(config, task: str, sde: SDE, shape: tuple[int, ...],
                                         **overrides):
  """:func:`get_controllable_sampler` with :func:`options_from_config`, then ``overrides``.

  Args:
    config: the job's config.
    task: a key of :data:`TASKS`.
    sde: the config's SDE.
    shape: the batch's shape.
    **overrides: options that replace the config's.

  Returns:
    The task's sampler.
  """
  options = {**options_from_config(config, task, sde), **overrides}
  return get_controllable_sampler(task, sde, shape, **options)
