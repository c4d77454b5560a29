"""A training schedule's own checks (``config.training``, ``config.classifier.training``,
``config.projection.training``): the loop only sees every ``n_jitted_steps``-th step, so each
period must be a multiple of it."""

from __future__ import annotations

# The periods of a training schedule, each a positive multiple of n_jitted_steps.
PERIODS = ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption')


def schedule_problems(training, prefix: str) -> list[str]:
  """The problems of a training schedule, one line each (empty if none).

  Checks ``n_jitted_steps >= 1``, every period of :data:`PERIODS` a positive multiple of it,
  ``n_iters >= n_jitted_steps`` and ``keep_last >= 1``.

  Args:
    training: the schedule section.
    prefix: its place in the config (``'training'``, ``'classifier.training'``), for the message.
  """
  n = training.n_jitted_steps
  if not (isinstance(n, int) and n >= 1):
    return [f'{prefix}.n_jitted_steps={n!r}; expected an integer >= 1.']
  rules = [(name, training[name], training[name] > 0 and training[name] % n == 0,
            f'a positive multiple of {prefix}.n_jitted_steps={n}') for name in PERIODS]
  rules.append(('n_iters', training.n_iters, training.n_iters >= n,
                f'at least {prefix}.n_jitted_steps={n}'))
  if 'keep_last' in training:
    rules.append(('keep_last', training.keep_last, training.keep_last >= 1, '>= 1'))
  return [f'{prefix}.{name}={value!r}; expected {expected}.'
          for name, value, ok, expected in rules if not ok]
