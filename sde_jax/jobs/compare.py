"""The paper's CIFAR-10 figures, and ``sde-jax compare``: finished eval reports beside them.

The figures are those of the original repositories' checkpoint table, which are the paper's
Table 2 (bits/dim and FID of the probability-flow ODE sampler) and Table 3 (FID and Inception
Score of the predictor-corrector samplers), all on CIFAR-10 with 50,000 samples. See
``docs/reproduce.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from sde_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One released CIFAR-10 checkpoint and what the paper reports for it (None: not reported).

  ``fid`` and ``inception_score`` are for the config's own (predictor-corrector) sampler,
  ``fid_ode`` for the probability-flow ODE (RK45), ``nll`` is bits/dim on the uniformly
  dequantized test set.
  """

  name: str  # as in the paper
  folder: str  # the released checkpoint folder
  fid: float | None = None
  inception_score: float | None = None
  fid_ode: float | None = None
  nll: float | None = None


# Keyed by our config file (under configs/, without .py).
PAPER: dict[str, PaperRow] = {
    've/cifar10_ncsnpp': PaperRow('NCSN++', 've/cifar10_ncsnpp', 2.45, 9.73),
    've/cifar10_ncsnpp_continuous': PaperRow(
        'NCSN++ cont. (VE)', 've/cifar10_ncsnpp_continuous', 2.38, 9.83),
    've/cifar10_ncsnpp_deep_continuous': PaperRow(
        'NCSN++ cont. (deep, VE)', 've/cifar10_ncsnpp_deep_continuous', 2.20, 9.89),
    'vp/ddpm/cifar10': PaperRow('DDPM', 'vp/cifar10_ddpm', 3.24, None, 3.37, 3.28),
    'vp/ddpm/cifar10_continuous': PaperRow(
        'DDPM cont. (VP)', 'vp/cifar10_ddpm_continuous', None, None, 3.69, 3.21),
    'vp/cifar10_ddpmpp': PaperRow('DDPM++', 'vp/cifar10_ddpmpp', 2.78, 9.64),
    'vp/cifar10_ddpmpp_continuous': PaperRow(
        'DDPM++ cont. (VP)', 'vp/cifar10_ddpmpp_continuous', 2.55, 9.58, 3.93, 3.16),
    'vp/cifar10_ddpmpp_deep_continuous': PaperRow(
        'DDPM++ cont. (deep, VP)', 'vp/cifar10_ddpmpp_deep_continuous', 2.41, 9.68, 3.08, 3.13),
    'subvp/cifar10_ddpm_continuous': PaperRow(
        'DDPM cont. (sub-VP)', 'subvp/cifar10_ddpm_continuous', None, None, 3.56, 3.05),
    'subvp/cifar10_ddpmpp_continuous': PaperRow(
        'DDPM++ cont. (sub-VP)', 'subvp/cifar10_ddpmpp_continuous', 2.61, 9.56, 3.16, 3.02),
    'subvp/cifar10_ddpmpp_deep_continuous': PaperRow(
        'DDPM++ cont. (deep, sub-VP)', 'subvp/cifar10_ddpmpp_deep_continuous', 2.41, 9.57, 2.92,
        2.99),
}
PAPER_NUM_SAMPLES = 50_000


def config_key(config_name: str | None) -> str | None:
  """The :data:`PAPER` key of a config file path (``.../configs/vp/x.py`` -> ``vp/x``)."""
  if not config_name:
    return None
  path = os.path.normpath(config_name).replace(os.sep, '/')
  path = path[:-3] if path.endswith('.py') else path
  return next((key for key in sorted(PAPER, key=len, reverse=True)
               if path == key or path.endswith('/' + key)), None)


def find_reports(root: str) -> list[str]:
  """Every ``report.json`` written by ``sde-jax eval`` under ``root``, sorted."""
  found = []
  for path in workdir_lib.find_files(root, 'report.json'):
    try:
      if json.loads(path.read_text()).get('kind') == 'sde-jax eval report':
        found.append(os.fspath(path))
    except (OSError, ValueError, AttributeError):
      continue  # not a report of ours
  return found


def _pair(paper: float | None, ours: float | None, spec: str) -> list[str]:
  fmt = lambda v: '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(
      v, spec)
  return [fmt(paper), fmt(ours)]


def comparison_rows(report: dict, root: str | None = None) -> list[list[str]]:
  """Table cells for each checkpoint row of one eval report (workdirs relative to ``root``)."""
  key = config_key(report.get('config_name'))
  paper = PAPER.get(key) if key else None
  rows = []
  for row in report['checkpoints']:
    method = row.get('sampling_method')  # of the run that sampled
    fid_paper = None
    if paper is not None:
      fid_paper = {'pc': paper.fid, 'ode': paper.fid_ode}.get(method)
    is_paper = paper.inception_score if paper is not None and method == 'pc' else None
    nll_paper = paper.nll if paper is not None and row.get('bpd_split') == 'test' else None
    samples = row.get('num_samples')
    rows.append([key or str(report.get('config_name')), paper.name if paper else '-',
                 str(row['ckpt']), row.get('sampler', '-'),
                 str(samples) if samples else '-',
                 *_pair(fid_paper, row.get('fid'), '.2f'),
                 *_pair(is_paper, row.get('inception_score'), '.2f'),
                 *_pair(nll_paper, row.get('bpd'), '.2f'),
                 os.path.relpath(report['workdir'], root) if root else report['workdir']])
  return rows


def comparison_markdown(reports: list[dict], root: str | None = None) -> str:
  """The paper's figures beside the measured ones, one line per evaluated checkpoint."""
  header = ['config', 'paper row', 'ckpt', 'sampler', 'samples', 'FID paper', 'FID ours',
            'IS paper', 'IS ours', 'bits/dim paper', 'bits/dim ours', 'workdir']
  lines = ['# Paper vs measured', '',
           'FID and IS of the paper are for 50,000 samples of the config\'s sampler (`pc`; FID '
           '(ODE) for `ode`); bits/dim on the uniformly dequantized test set. FIDs of fewer '
           'samples are biased upwards.', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for report in reports:
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in comparison_rows(report, root)]
  return '\n'.join(lines) + '\n'


def write_comparison(root: str) -> str:
  """``sde-jax compare``: writes ``root/comparison.md`` from the eval reports under ``root``.

  Returns:
    The table (markdown).

  Raises:
    FileNotFoundError: if no eval report is found under ``root``.
  """
  paths = find_reports(root)
  if not paths:
    raise FileNotFoundError(f'no report.json of `sde-jax eval` under {root}; run `sde-jax eval '
                            '--config CONFIG --workdir DIR` first (it writes DIR/eval/).')
  reports = []
  for path in paths:
    reports.append(workdir_lib.read_json(path))
  table = comparison_markdown(reports, os.fspath(workdir_lib.path(root)))
  workdir_lib.write_text(workdir_lib.path(root) / 'comparison.md', table)
  return table
