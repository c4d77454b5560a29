"""The reports of an eval folder: ``report.json`` (settings and one row per checkpoint) and
``report.md`` (a table and the sample grids)."""

from __future__ import annotations

import json
import math
import os

from sde_jax import sampling
from sde_jax import workdir as workdir_lib
from sde_jax.evaluate.inception_net import Inception
from sde_jax.evaluate.settings import EvalSettings


def _fmt(value, spec: str = '.4g') -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return format(value, spec)


def report_markdown(report: dict) -> str:
  """``report.md``: the settings, one table row per checkpoint, the sample grids."""
  lines = [f'# Evaluation of {report["workdir"]}', '', f'- config: `{report["config_name"]}`']
  if report.get('sampler'):
    lines += [f'- sampler: {report["sampler"]}; sample i from fold_in(key(seed), i), seed '
              f'{report["seed"]}',
              f'- Inception: `{report["inception_weights"]}`; data statistics: '
              f'`{report["stats_path"]}`']
  if report.get('bpd'):
    lines.append(f'- bits/dim: {report["bpd"]}')
  lines += ['', '| ckpt | step | eval loss | bits/dim | FID | IS | KID | samples | NFE |',
            '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for row in report['checkpoints']:
    bpd = (f'{row["bpd"]:.4f} ± {_fmt(row.get("bpd_sem"), ".4f")}' if 'bpd' in row else '-')
    kid = (f'{row["kid"]:.3e}' if 'kid' in row else '-')
    lines.append(f'| {row["ckpt"]} | {row["step"]} | {_fmt(row.get("loss"))} | {bpd} | '
                 f'{_fmt(row.get("fid"), ".3f")} | {_fmt(row.get("inception_score"), ".3f")} | '
                 f'{kid} | {row.get("num_samples", "-")} | {_fmt(row.get("nfe"), ".1f")} |')
  lines.append('')
  for row in report['checkpoints']:
    if 'grid' in row:
      lines += [f'Checkpoint {row["ckpt"]} (step {row["step"]}, {row["source"]}):', '',
                f'![samples of checkpoint {row["ckpt"]}]({row["grid"]})', '']
  return '\n'.join(lines)


def write_reports(eval_dir: str, header: dict) -> dict:
  """``report.json`` and ``report.md`` from every ``ckpt_*/report.json`` in ``eval_dir``."""
  rows = [workdir_lib.read_json(folder / 'report.json')
          for folder in workdir_lib.path(eval_dir).glob('ckpt_*')
          if (folder / 'report.json').exists()]
  report = {**header, 'checkpoints': sorted(rows, key=lambda row: row['ckpt'])}
  workdir_lib.write_json(os.path.join(eval_dir, 'report.json'), report)
  workdir_lib.write_text(os.path.join(eval_dir, 'report.md'), report_markdown(report))
  return report


def report_header(config, settings: EvalSettings, eval_dir: str, config_name: str | None,
                  net: Inception | None) -> dict:
  """The report's settings. Those of a stage that is off now stay as an earlier run recorded
  them (its rows are that run's).

  Args:
    config: the job's config.
    settings: its :class:`EvalSettings`.
    eval_dir: the eval folder (its ``report.json`` may hold an earlier run's header).
    config_name: the config file, if known.
    net: the Inception network (None without sampling).

  Returns:
    The header: every field of ``report.json`` but ``checkpoints``.
  """
  header = {'sampler': None, 'inception_weights': None, 'stats_path': None, 'bpd': None,
            **{k: v for k, v in workdir_lib.read_json(os.path.join(eval_dir, 'report.json'))
               .items() if k != 'checkpoints'}}
  header.update({'kind': 'sde-jax eval report',
                 'workdir': os.fspath(workdir_lib.path(eval_dir).parent),
                 'config_name': config_name or header.get('config_name'), 'seed': config.seed,
                 'config': json.loads(config.to_json_best_effort())})
  if settings.enable_sampling:
    header.update(sampler=sampling.describe_from_config(config), inception_weights=net.weights,
                  stats_path=os.fspath(workdir_lib.path(settings.stats_path)))
  if settings.enable_bpd:
    header['bpd'] = (f'{settings.bpd_split} split, {settings.bpd_repeats} pass(es), uniform '
                     f'dequantization, {settings.bpd_solver} rtol {settings.bpd_rtol} atol '
                     f'{settings.bpd_atol}')
  return header
