"""What an evaluation job reads from its config, and the record of it that an eval folder keeps
(``config.json``): finished rounds of other settings are never mixed with new ones."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from sde_jax import odeint, sampling
from sde_jax import sde as sde_lib
from sde_jax import workdir as workdir_lib
from sde_jax.metrics import inception

# The original's passes over the bits/dim split when eval.bpd_num_repeats is None.
BPD_REPEATS = {'test': 5, 'train': 1}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What an evaluation job reads from ``config.eval`` (and ``training.snapshot_freq``)."""

  begin_ckpt: int
  end_ckpt: int
  snapshot_freq: int
  enable_loss: bool
  enable_bpd: bool
  enable_sampling: bool
  num_samples: int
  batch_size: int
  bpd_split: str  # 'train' or 'test'
  bpd_repeats: int
  bpd_solver: str
  bpd_rtol: float
  bpd_atol: float
  inception_weights: str | None
  inception_width: float
  inception_image_size: int
  stats_path: str | None

  @classmethod
  def from_config(cls, config, check: bool = True) -> 'EvalSettings':
    """Reads and (with ``check``) checks the fields.

    Raises:
      ValueError: naming each bad field, its value and what it must be.
    """
    ec = config.eval
    split = str(ec.get('bpd_dataset', 'test')).lower()
    if split not in BPD_REPEATS:
      raise ValueError(f"eval.bpd_dataset={ec.bpd_dataset!r}; expected 'train' or 'test'.")
    repeats = ec.get('bpd_num_repeats')
    repeats = BPD_REPEATS[split] if repeats is None else int(repeats)
    settings = cls(
        begin_ckpt=int(ec.begin_ckpt), end_ckpt=int(ec.end_ckpt),
        snapshot_freq=int(config.training.snapshot_freq),
        enable_loss=bool(ec.enable_loss), enable_bpd=bool(ec.enable_bpd),
        enable_sampling=bool(ec.enable_sampling), num_samples=int(ec.num_samples),
        batch_size=int(ec.batch_size), bpd_split=split, bpd_repeats=repeats,
        bpd_solver=str(ec.get('bpd_solver', 'rk45')).lower(),
        bpd_rtol=float(ec.get('bpd_rtol', 1e-5)), bpd_atol=float(ec.get('bpd_atol', 1e-5)),
        inception_weights=ec.get('inception_weights'),
        inception_width=float(ec.get('inception_width', 1.0)),
        inception_image_size=int(ec.get('inception_image_size', inception.IMAGE_SIZE)),
        stats_path=ec.get('stats_path'))
    if check:
      settings.check()
    return settings

  def check(self) -> None:
    """Raises a ValueError naming every bad field, its value and what it must be."""
    bad = self.problems()
    if bad:
      raise ValueError(' '.join(bad))

  def problems(self) -> list[str]:
    """Each bad field, its value and what it must be, one line each."""
    checks = [
        (0 <= self.begin_ckpt <= self.end_ckpt, 'eval.begin_ckpt and eval.end_ckpt',
         f'{self.begin_ckpt}, {self.end_ckpt}', 'integers with 0 <= begin_ckpt <= end_ckpt'),
        (self.snapshot_freq > 0, 'training.snapshot_freq', self.snapshot_freq, 'positive'),
        (self.num_samples >= 2, 'eval.num_samples', self.num_samples,
         'at least 2 (FID needs a covariance)'),
        (self.batch_size > 0, 'eval.batch_size', self.batch_size, 'positive'),
        (self.bpd_repeats > 0, 'eval.bpd_num_repeats', self.bpd_repeats, 'positive (or None)'),
        (self.bpd_rtol > 0 and self.bpd_atol > 0, 'eval.bpd_rtol and eval.bpd_atol',
         f'{self.bpd_rtol}, {self.bpd_atol}', 'positive'),
        (self.bpd_solver in odeint.SOLVERS, 'eval.bpd_solver', repr(self.bpd_solver),
         f'one of {sorted(odeint.SOLVERS)}'),
    ]
    return [f'{name}={value}; expected {expected}.' for ok, name, value, expected in checks
            if not ok]


def round_size(settings: EvalSettings, mesh) -> int:
  """Images per sampling round and per data batch: ``eval.batch_size`` rounded up to a
  multiple of the devices (a multiple of the processes too)."""
  return -(-settings.batch_size // mesh.size) * mesh.size


def fingerprint(config, settings: EvalSettings, round_images: int) -> dict[str, dict]:
  """The settings that an eval folder's files depend on, by stage, as JSON values.

  ``common`` always; ``loss``, ``bpd`` and ``sampling`` for the stages that are enabled. Left
  out: the checkpoint range, ``num_samples`` (more samples add rounds and keep the old ones) and
  the statistics file (metrics are recomputed from the stored features at every run).

  Args:
    config: the job's config.
    settings: its :class:`EvalSettings`.
    round_images: images per round (:func:`round_size`).

  Returns:
    ``{stage: {field: value}}``.
  """
  ec, data = config.eval, config.data
  groups = {'common': {
      'seed': config.seed, 'round_size': round_images,
      'training.sde': config.training.sde, 'training.continuous': config.training.continuous,
      **{f'model.{k}': v for k, v in config.model.to_dict().items()},
      **{f'data.{k}': data.get(k) for k in ('dataset', 'category', 'image_size',
                                             'num_channels', 'centered')}}}
  if settings.enable_loss:
    groups['loss'] = {'training.reduce_mean': config.training.reduce_mean,
                      'training.likelihood_weighting': config.training.likelihood_weighting,
                      'data.uniform_dequantization': data.get('uniform_dequantization')}
  if settings.enable_bpd:
    groups['bpd'] = {'eval.bpd_dataset': settings.bpd_split,
                     'eval.bpd_num_repeats': settings.bpd_repeats,
                     'eval.bpd_solver': settings.bpd_solver, 'eval.bpd_rtol': settings.bpd_rtol,
                     'eval.bpd_atol': settings.bpd_atol}
  if settings.enable_sampling:
    weights = ec.get('inception_weights')
    groups['sampling'] = {
        **{f'sampling.{k}': v
           for k, v in sampling.config_fields(config, sde_lib.from_config(config)).items()},
        'eval.inception_width': settings.inception_width,
        'eval.inception_image_size': settings.inception_image_size,
        'eval.inception_weights': os.path.basename(weights) if weights else None}
  return json.loads(json.dumps(groups, default=str))


def check_fingerprint(eval_dir: str, current: dict[str, dict]) -> None:
  """Checks ``current`` against ``eval_dir/config.json`` and adds its new stages there.

  A stage's settings are recorded the first time it runs in the folder; later runs of that
  stage must have the same ones.

  Raises:
    ValueError: naming every field whose recorded value differs, so that finished rounds of
      other settings are never mixed with new ones.
  """
  path = os.path.join(eval_dir, 'config.json')
  stored = workdir_lib.read_json(path)
  diff = []
  for group, values in current.items():
    old = stored.get(group, values)
    diff += [f'{k}: {old.get(k)!r} there, {values.get(k)!r} now'
             for k in sorted(set(old) | set(values)) if old.get(k) != values.get(k)]
  if diff:
    raise ValueError(
        f'{eval_dir} holds results of an evaluation with other settings ({"; ".join(diff)}). '
        'Its finished rounds would be mixed with new ones: evaluate into another folder '
        f'(--eval_folder NAME), or delete {eval_dir} to start over.')
  merged = {**stored, **current}
  if merged != stored and jax.process_index() == 0:
    workdir_lib.path(eval_dir).mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(path, merged)
