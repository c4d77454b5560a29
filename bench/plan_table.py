"""The paper's configs planned for TPU slices at full size (``sde-jax plan``): the table of
docs/benchmarks.md, one row at a time.

Each row is one config with its overrides, compiled for one topology (the train step by
default; ``--programs`` adds others). A row's results are appended to ``--csv`` as soon as it
finishes, so a long run can be stopped and resumed: rows already in the file are skipped. Big
rows take tens of minutes on 2 cores (CIFAR-10 DDPM++: 19 minutes); run them in the background,
one process at a time, e.g.

  nice -n 19 python bench/plan_table.py --rows digits
  nohup nice -n 19 python bench/plan_table.py --rows all > plan_table.log 2>&1 &
  python bench/plan_table.py --markdown          # the table of what the CSV holds

Rows: see ``ROWS`` (``--rows`` takes names, comma-separated, or ``all``).
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from sde_jax import chips  # noqa: E402
from sde_jax.jobs import plan  # noqa: E402
from tests import helpers  # noqa: E402

CSV = ROOT / 'bench' / 'results' / 'plan_table.csv'
SLICE = 'v5e:2x2'  # one v5litepod-4 host: the smallest v5e slice that runs the paper's batches
CIFAR = {'ddpmpp': 'vp/cifar10_ddpmpp_continuous.py', 'ncsnpp': 've/cifar10_ncsnpp_continuous.py',
         'ddpmpp_deep': 'vp/cifar10_ddpmpp_deep_continuous.py',
         'ncsnpp_deep': 've/cifar10_ncsnpp_deep_continuous.py'}
LARGE = {'celebahq256': 've/celebahq_256_ncsnpp_continuous.py',
         'ffhq1024': 've/ffhq_ncsnpp_continuous.py'}


def _rows() -> dict:
  """``{name: (config file, overrides {dotted field: value}, topology)}``."""
  rows = {'digits': ('digits/ddpmpp_continuous.py', {}, SLICE),
          # FSDP over the 4 chips: XLA's resharding / rematerialisation warnings show here. The
          # digits network's kernels are all under the default fsdp_min_size (65536 values).
          'digits_fsdp4': ('digits/ddpmpp_continuous.py',
                           {'parallel.fsdp': 4, 'parallel.fsdp_min_size': 256}, SLICE)}
  rows.update({f'cifar10_{k}': (v, {}, SLICE) for k, v in CIFAR.items()})
  for name, path in LARGE.items():
    for dtype in ('float32', 'bfloat16'):
      for remat in ('none', 'block'):
        for chip in ('v5e:2x2', 'v5p:2x2x1'):
          suffix = f'{dtype}_{remat}_{chip.split(":")[0]}'
          rows[f'{name}_{suffix}'] = (path, {'model.dtype': dtype, 'model.remat': remat}, chip)
  return rows


ROWS = _rows()
FIELDS = ('row', 'config', 'overrides', 'topology', 'program', 'batch', 'per_chip_batch',
          'per_chip_gib', 'hbm_gib', 'fits', 'short_gib', 'gflop_per_image', 'bytes_per_chip_gib',
          'step_time_bound_ms', 'xla_optimal_seconds', 'compile_s', 'host_transfers',
          'finished')


def _config(path: str, overrides: dict):
  config = helpers.load_config(path)
  for field, value in overrides.items():
    section, name = field.rsplit('.', 1)
    target = config
    for part in section.split('.'):
      target = target[part]
    target[name] = value
  return config


def _csv_row(row: str, path: str, overrides: dict, r) -> dict:
  gib = lambda n: None if n is None else round(n / chips.GIB, 3)  # noqa: E731
  return {'row': row, 'config': path, 'overrides': ' '.join(f'{k}={v}' for k, v in
                                                            overrides.items()),
          'topology': r.topology, 'program': r.program, 'batch': r.batch,
          'per_chip_batch': r.batch / r.chips, 'per_chip_gib': gib(r.per_chip_bytes),
          'hbm_gib': gib(r.hbm_bytes), 'fits': r.fits, 'short_gib': gib(r.short_bytes),
          'gflop_per_image': None if r.flops is None else round(r.flops_per_image / 1e9, 3),
          'bytes_per_chip_gib': gib(r.bytes_accessed),
          'step_time_bound_ms': None if r.step_time_bound_s is None
          else round(r.step_time_bound_s * 1e3, 3),
          'xla_optimal_seconds': r.xla_optimal_seconds,
          'compile_s': round(r.compile_s, 1), 'host_transfers': len(r.host_transfers),
          'finished': time.strftime('%Y-%m-%d %H:%M')}


def _done(path: pathlib.Path) -> set:
  if not path.exists():
    return set()
  with path.open() as f:
    return {(r['row'], r['program']) for r in csv.DictReader(f)}


def run(rows: list[str], programs: tuple[str, ...], out: pathlib.Path) -> None:
  """Plans each row not yet in ``out`` and appends its results."""
  out.parent.mkdir(parents=True, exist_ok=True)
  for row in rows:
    path, overrides, topology = ROWS[row]
    todo = tuple(p for p in programs if (row, p) not in _done(out))
    if not todo:
      print(f'{row}: in {out} already', flush=True)
      continue
    print(f'{row}: planning {todo} of {path} {overrides} for {topology}...', flush=True)
    for report in plan.plan(_config(path, overrides), topology, todo):
      print(report.describe(), flush=True)
      new = not out.exists()
      with out.open('a', newline='') as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
          writer.writeheader()
        writer.writerow(_csv_row(row, path, overrides, report))


def markdown(path: pathlib.Path) -> str:
  """The CSV as the table of docs/benchmarks.md."""
  lines = ['| row | topology | program | batch (per chip) | memory per chip | fits | GFLOP per '
           'image | roofline bound ms | compile s |', '|---|---|---|---:|---:|---|---:|---:|---:|']
  with path.open() as f:
    for r in csv.DictReader(f):
      fits = 'yes' if r['fits'] == 'True' else f"short by {r['short_gib']} GiB"
      lines.append(f"| {r['row']} | {r['topology']} | {r['program']} | {r['batch']} "
                   f"({float(r['per_chip_batch']):g}) | {r['per_chip_gib']} GiB | {fits} | "
                   f"{r['gflop_per_image'] or '-'} | {r['step_time_bound_ms'] or '-'} | "
                   f"{r['compile_s']} |")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', default='digits', help=f'all, or some of {sorted(ROWS)}')
  parser.add_argument('--programs', default='train')
  parser.add_argument('--csv', type=pathlib.Path, default=CSV)
  parser.add_argument('--markdown', action='store_true', help='print the table of --csv')
  args = parser.parse_args()
  if args.markdown:
    print(markdown(args.csv))
    return
  rows = list(ROWS) if args.rows == 'all' else args.rows.split(',')
  unknown = sorted(set(rows) - set(ROWS))
  if unknown:
    raise SystemExit(f'--rows: unknown {unknown}; known: {sorted(ROWS)}')
  run(rows, tuple(args.programs.split(',')), args.csv)


if __name__ == '__main__':
  main()
