"""Benchmark of the probability-flow likelihood: NFE and wall time per call, after compilation.

The score is the closed form of per-pixel Gaussian data ``N(mu, diag(v))``,
``score(x, t) = -(x - m(t) mu) / (m(t)^2 v + s(t)^2)``: cheap, so the figures measure the solver
and the Hutchinson JVP rather than a network, and the ODE is the one a model that had learnt such
data would give. Prints a markdown table for docs/benchmarks.md.

  python bench/bench_likelihood.py --batch 16 --size 32 --channels 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from sde_jax import likelihood
from sde_jax import sde as sde_lib


def gaussian_score_fn(sde):
  """``(params, x, t) -> score`` of the marginals of ``N(params['mean'], diag(params['var']))``."""

  def score_fn(params, x, t):
    mean, std = sde.marginal_prob(jnp.broadcast_to(params['mean'], x.shape), t)
    scaled_sd, _ = sde.marginal_prob(jnp.broadcast_to(jnp.sqrt(params['var']), x.shape), t)
    var = scaled_sd**2 + sde_lib.batch_mul(std**2, jnp.ones_like(x))
    return -(x - mean) / var

  return score_fn


def make_problem(key, shape):
  """Fixed data-set parameters (model space [-1, 1]) and a batch drawn from them."""
  k_mean, k_var, k_data = jax.random.split(key, 3)
  params = {'mean': jax.random.uniform(k_mean, shape[1:], minval=-0.5, maxval=0.5),
            'var': jax.random.uniform(k_var, shape[1:], minval=0.01, maxval=0.1)}
  data = params['mean'] + jnp.sqrt(params['var']) * jax.random.normal(k_data, shape)
  return params, data


def time_calls(fn, args, repeats):
  """Median seconds per call after one compiling call, and the NFE of the last call."""
  jax.block_until_ready(fn(*args))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(jax.random.key(i + 1), *args[1:]))
    times.append(time.perf_counter() - start)
  return statistics.median(times), int(out[2])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--sdes', nargs='+', default=['vpsde', 'vesde'], choices=sorted(sde_lib.SDES))
  parser.add_argument('--hutchinson_type', default='rademacher',
                      choices=sorted(likelihood.HUTCHINSON_NOISE))
  parser.add_argument('--tol', type=float, default=1e-5, help='rtol = atol')
  parser.add_argument('--solver', default='rk45', help='an sde_jax.odeint.SOLVERS name')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  shape = (args.batch, args.size, args.size, args.channels)
  params, data = make_problem(jax.random.key(0), shape)
  print(f'jax {jax.__version__}, devices: {jax.devices()}\n')
  print('| SDE | data shape | Hutchinson | solver | rtol = atol | NFE | ms / call | ms / NFE |')
  print('|---|---|---|---|---|---|---|---|')
  for name in args.sdes:
    sde = sde_lib.SDES[name]()
    fn = likelihood.get_likelihood_fn(sde, lambda x: (x + 1.0) / 2.0, args.hutchinson_type,
                                      rtol=args.tol, atol=args.tol, solver=args.solver)
    seconds, nfe = time_calls(fn, (jax.random.key(0), gaussian_score_fn(sde), params, data),
                              args.repeats)
    print(f'| {name} | {shape} | {args.hutchinson_type} | {args.solver} | {args.tol:g} | {nfe} | '
          f'{1e3 * seconds:.1f} | {1e3 * seconds / nfe:.3f} |')


if __name__ == '__main__':
  main()
