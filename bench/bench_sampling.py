"""Benchmark of the samplers: PC compile time against N, PC steps/s, ODE NFE and wall time.

The score is a fixed closed form, so the figures measure the samplers, not a network: the exact
score of Gaussian data ``N(0, data_std^2 I)``, ``-x / (m(t)^2 data_std^2 + s(t)^2)``, optionally
plus a tiny fixed two-layer conv net (``--score conv``) whose weights come in as params.

  python bench/bench_sampling.py                      # (16, 32, 32, 3), N = 10 vs 1000
  python bench/bench_sampling.py --batch 4 --size 8   # a quick smoke run

Prints a markdown table per part.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import sampling
from sde_jax import sde as sde_lib

SDES = {'vp': sde_lib.VPSDE, 've': sde_lib.VESDE}


def gaussian_score(sde, data_std):
  """Exact score of N(0, data_std^2 I) data perturbed by ``sde``."""

  def score(x, t):
    mean_scale, std = sde.marginal_prob(jnp.ones((x.shape[0], 1), x.dtype), t)
    var = mean_scale[:, 0]**2 * data_std**2 + std**2
    return -x / var.reshape((-1,) + (1,) * (x.ndim - 1))

  return score


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def make_score_fn(sde, kind, data_std, channels):
  """``(score_fn(params, x, t), params)``; the conv variant adds ``0.01 conv(tanh(conv(x)))``."""
  exact = gaussian_score(sde, data_std)
  if kind == 'gaussian':
    return lambda params, x, t: exact(x, t), {}
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w1': jax.random.normal(k1, (3, 3, channels, 16)) / np.sqrt(27 * channels),
            'w2': jax.random.normal(k2, (3, 3, 16, channels)) / np.sqrt(9 * 16)}

  def score_fn(params, x, t):
    return exact(x, t) + 0.01 * _conv(jnp.tanh(_conv(x, params['w1'])), params['w2'])

  return score_fn, params


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def bench_pc(args, shape):
  """First call (compile + run) and steady call of the PC sampler for each N."""
  rows = []
  for n in args.pc_steps:
    sde = SDES[args.sde](N=n)
    score_fn, params = make_score_fn(sde, args.score, args.data_std, shape[-1])
    sampler = sampling.get_pc_sampler(sde, shape)
    first, _ = timed(sampler, jax.random.key(0), score_fn, params)
    runs = [timed(sampler, jax.random.key(i + 1), score_fn, params)[0]
            for i in range(args.repeats)]
    run = min(runs)
    rows.append((n, first - run, run, n / run))
  compile_ratio = rows[-1][1] / rows[0][1]
  print(f'\n### PC sampler ({args.sde.upper()}, reverse_diffusion + langevin, '
        f'shape {shape}, score {args.score})\n')
  print('| N | compile (s) | run (ms) | steps/s |')
  print('|---|---|---|---|')
  for n, compile_s, run_s, rate in rows:
    print(f'| {n} | {compile_s:.2f} | {1e3 * run_s:.1f} | {rate:.0f} |')
  print(f'\ncompile time ratio N={rows[-1][0]} / N={rows[0][0]}: {compile_ratio:.2f}')


def bench_ode(args, shape):
  """NFE and steady wall time of the ODE sampler (rtol = atol = 1e-5) for VP and VE."""
  print(f'\n### ODE sampler ({args.solver}, rtol = atol = {args.tol:g}, shape {shape}, '
        f'score {args.score})\n')
  print('| SDE | NFE | compile (s) | wall per call (ms) | ms per evaluation |')
  print('|---|---|---|---|---|')
  for name, cls in SDES.items():
    sde = cls()
    score_fn, params = make_score_fn(sde, args.score, args.data_std, shape[-1])
    sampler = sampling.get_ode_sampler(sde, shape, rtol=args.tol, atol=args.tol,
                                       solver=args.solver)
    first, _ = timed(sampler, jax.random.key(0), score_fn, params)
    runs = [timed(sampler, jax.random.key(i + 1), score_fn, params)
            for i in range(args.repeats)]
    run = min(r[0] for r in runs)
    nfe = int(runs[0][1][1])
    print(f'| {name.upper()} | {nfe} | {first - run:.2f} | {1e3 * run:.1f} '
          f'| {1e3 * run / nfe:.3f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--size', type=int, default=32, help='image height and width')
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--sde', choices=sorted(SDES), default='vp', help='SDE of the PC part')
  parser.add_argument('--pc-steps', type=int, nargs='+', default=[10, 1000])
  parser.add_argument('--score', choices=['gaussian', 'conv'], default='gaussian')
  parser.add_argument('--data-std', type=float, default=0.5)
  parser.add_argument('--tol', type=float, default=1e-5)
  parser.add_argument('--solver', default='rk45', help='an sde_jax.odeint.SOLVERS name')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  shape = (args.batch, args.size, args.size, args.channels)
  print(f'devices: {jax.devices()}; jax {jax.__version__}')
  bench_pc(args, shape)
  bench_ode(args, shape)


if __name__ == '__main__':
  main()
