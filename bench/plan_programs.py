"""Every program the jobs run, compiled for a TPU topology on this host (``sde-jax plan``).

The train step, the eval-loss step, the sampler of each method (PC, ODE, DPM-Solver++, Heun,
adaptive SDE, Predict-Project), the bits/dim likelihood and the FID Inception's features, each
compiled for ``--topology`` with a config shrunk by configs/_runlocal.py (seconds each), and
one line per program: fit, FLOPs per image, the host transfers (callbacks) the program holds and
whether one sits inside a loop. Exits 1 if a program fails to compile, does not fit, or holds a
host transfer inside a loop, so that .ci/run can run it after the test suite (about a minute on
2 cores).

  python bench/plan_programs.py [--topology v5e:2x2] [--config digits/ddpmpp_continuous.py]
      [--fsdp 1] [--full]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from configs import _runlocal  # noqa: E402  (after sys.path)
from sde_jax import compile_report  # noqa: E402
from sde_jax.jobs import plan  # noqa: E402
from tests import helpers  # noqa: E402

METHODS = ('pc', 'ode', 'dpm_solver++', 'heun', 'adaptive_sde', 'predict_project')


def programs(config_name: str, full: bool, fsdp: int):
  """``(label, config, program)`` for every program and sampler."""
  def config(**sampling):
    c = helpers.load_config(config_name)
    if not full:
      c = _runlocal.runlocal(c)
    c.parallel.fsdp = fsdp
    c.sampling.update(sampling)
    return c

  for name in ('train', 'eval_loss', 'bpd', 'fid_features'):
    yield name, config(), name
  for method in METHODS:
    yield f'sample ({method})', config(method=method), 'sample'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--topology', default='v5e:2x2')
  parser.add_argument('--config', default='digits/ddpmpp_continuous.py')
  parser.add_argument('--fsdp', type=int, default=1)
  parser.add_argument('--full', action='store_true', help='the config at full size')
  args = parser.parse_args()
  print('| program | compiles | memory per chip | GFLOP per image (unit) | host transfers '
        '(in a loop) | compile s |\n|---|---|---:|---|---|---:|')
  failed, total, start = 0, 0, time.perf_counter()
  for label, config, program in programs(args.config, args.full, args.fsdp):
    total += 1
    try:
      r, = plan.plan(config, args.topology, (program,))
    except Exception as e:  # pylint: disable=broad-except  (reported, then the next program)
      failed += 1
      print(f'| {label} | **no**: {type(e).__name__}: {str(e)[:300]} | | | | |')
      traceback.print_exc(file=sys.stderr)
      continue
    loops = sum('while' in n for n in r.host_transfers)
    failed += not r.fits or loops > 0  # a callback in a loop stalls every step on a TPU
    print(f'| {label} | yes | {compile_report.format_bytes(r.per_chip_bytes)} '
          f'({"fits" if r.fits else "short by " + compile_report.format_bytes(r.short_bytes)}) '
          f'| {r.flops_per_image / 1e9:.3g} ({r.unit}) | {len(r.host_transfers)} ({loops}) '
          f'| {r.compile_s:.1f} |', flush=True)
  print(f'\n{args.config} ({"full size" if args.full else "runlocal"}), {args.topology}, '
        f'fsdp={args.fsdp}: {time.perf_counter() - start:.0f} s in all.')
  print(f'plan_programs: {total - failed} passed, {failed} failed')
  return int(failed > 0)


if __name__ == '__main__':
  sys.exit(main())
