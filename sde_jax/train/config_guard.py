"""The guard on a resumed run: the config a workdir was trained with against the one given now.

Every field may change the run it continues (the network, the objective, the SDE, the data, the
optimizer, the seed) unless it is listed in :data:`SCHEDULE_ONLY`: when and how long to train,
log, evaluate, checkpoint and draw snapshots, and the sections that only sampling and evaluation
read. A field added to the configs later is therefore guarded until it is listed here.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from absl import logging

_SCHEDULE = ('n_iters', 'n_jitted_steps', 'log_freq', 'eval_freq', 'snapshot_freq',
             'snapshot_freq_for_preemption', 'keep_last', 'snapshot_sampling',
             'snapshot_num_samples')
# A field, or a whole section (every field below it).
SCHEDULE_ONLY = (
    *(f'training.{name}' for name in _SCHEDULE),
    *(f'classifier.training.{name}' for name in _SCHEDULE),
    'sampling', 'eval', 'controllable',  # read by sample / eval / inpaint ..., never by training
    'parallel',  # where parameters live; a checkpoint restores into any mesh
    # The projection network's (sde-jax train-projection): its job guards it under another
    # name (sde_jax.projection.job), since score training never reads it.
    'projection',
    'model.remat',  # what the backward pass recomputes; the same function of the same params
)
ALL = 'all'
_ABSENT = '<absent>'


class ConfigChangeError(ValueError):
  """A resume whose config differs from the saved one in fields that change the run."""


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """``{'a.b': value}`` of a JSON config (nested dicts)."""
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  out = {}
  for name, value in tree.items():
    out.update(flatten(value, f'{prefix}{name}.') if isinstance(value, Mapping) and value
               else {f'{prefix}{name}': value})
  return out


def covers(patterns: Iterable[str], field: str) -> bool:
  """Whether ``field`` is one of ``patterns`` or lies in a section that one of them names."""
  return any(field == p or field.startswith(p + '.') for p in patterns)


def changes(saved: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
  """``(field, saved value, new value)`` of every field that differs (``'<absent>'`` for a
  field only one side has), in field order."""
  old, now = flatten(saved), flatten(new)
  return [(f, old.get(f, _ABSENT), now.get(f, _ABSENT)) for f in sorted(set(old) | set(now))
          if old.get(f, _ABSENT) != now.get(f, _ABSENT)]


def check_resume(saved: Mapping | None, new: Mapping, allow: Iterable[str], where: str) -> None:
  """Refuses to resume ``where`` if the config changed beyond the schedule and ``allow``.

  Args:
    saved: the config in the checkpoint's metadata (``meta['config']``); None if it holds none.
    new: the config given now, as JSON (``json.loads(config.to_json_best_effort())``).
    allow: fields or sections the user allows to change (``--allow_config_change``), or
      ``'all'``; each accepted change is logged as a warning.
    where: the checkpoint resumed, for the messages.

  Raises:
    ConfigChangeError: naming each guarded field that changed, its saved and new value.
  """
  allow = tuple(allow)
  everything = ALL in allow
  if saved is None:
    if everything:
      logging.warning('%s holds no config to compare with; resuming anyway (allowed: all).', where)
      return
    raise ConfigChangeError(f'{where} holds no saved config, so the resume cannot be checked; '
                            f'pass --allow_config_change={ALL} to resume it anyway.')
  found = changes(saved, new)
  unused = [a for a in allow if a != ALL and not any(covers((a,), f) for f, _, _ in found)]
  if unused:
    logging.warning('--allow_config_change names %s, which did not change.', unused)
  refused = [c for c in found if not covers(SCHEDULE_ONLY, c[0])
             and not everything and not covers(allow, c[0])]
  if refused:
    lines = '\n'.join(f'  {f}: {old!r} (saved) -> {now!r} (now)' for f, old, now in refused)
    raise ConfigChangeError(
        f'Refusing to resume {where}: the config differs from the one it was trained with in '
        f'{len(refused)} field(s) that change the run:\n{lines}\nTrain into another --workdir, '
        f'set these fields back, or continue on purpose with --allow_config_change='
        f'{",".join(f for f, _, _ in refused)} (or ={ALL}). Fields that may change freely: '
        f'training.X and classifier.training.X for X in {", ".join(_SCHEDULE)}; the sampling, '
        'eval, controllable and parallel sections.')
  for field, old, now in found:
    if covers(SCHEDULE_ONLY, field):
      logging.info('Resuming %s with %s: %r -> %r (schedule only).', where, field, old, now)
    else:
      logging.warning('Resuming %s with a changed %s: %r (saved) -> %r (now), allowed by '
                      '--allow_config_change.', where, field, old, now)
