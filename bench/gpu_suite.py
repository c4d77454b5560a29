"""The accelerator suite: one process, a time budget, one markdown table (bench/gpu_suite.sh).

Measures, in priority order, skipping what the budget left cannot hold (training may use 55%
of it):

1. train step images/s, compile time, GFLOP/image and MFU (``bench_train.bench_config``) for
   ``vp/cifar10_ddpmpp_continuous.py`` and ``ve/cifar10_ncsnpp_continuous.py`` at batch 128, in
   bfloat16 and float32, without and with remat;
2. the PC sampler (reverse diffusion + Langevin, 1000 steps, batch 256) and DPM-Solver++
   (20 NFE) of the DDPM++ network, images/s (bf16 and float32);
3. the likelihood (probability-flow ODE, RK45, rtol = atol = 1e-5), seconds per image;
4. Inception-v3 features (the FID network, width 1, 299 px), images/s at the HIGHEST precision
   the evaluation uses and at DEFAULT (TF32 on GPUs), with the largest relative change of the
   pool_3 features between the two.

Networks are randomly initialised: throughput does not depend on the weights (the likelihood's
step count does a little; the row says how many evaluations it took). ``--smoke`` runs every
part on the embedded digits network at tiny sizes, to check the suite on a CPU.

  python bench/gpu_suite.py --budget_s 330 --out bench_results/gpu_suite.md [--smoke]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_train  # this folder is on sys.path when run as a script
from bench_models import apply_sets, load_config
from sde_jax import likelihood, models, parallel, sampling
from sde_jax import sde as sde_lib
from sde_jax.data import get_data_inverse_scaler
from sde_jax.metrics import fid, inception

FULL = dict(train_configs=('vp/cifar10_ddpmpp_continuous.py', 've/cifar10_ncsnpp_continuous.py'),
            train_batch=128, sample_config='vp/cifar10_ddpmpp_continuous.py', pc_batch=256,
            pc_steps=1000, lik_batch=64, inception_batch=500, inception_images=2000,
            inception_size=299)
SMOKE = dict(train_configs=('digits/ddpmpp_continuous.py',), train_batch=8,
             sample_config='digits/ddpmpp_continuous.py', pc_batch=8, pc_steps=30, lik_batch=4,
             inception_batch=8, inception_images=16, inception_size=75)
# (dtype, remat), most wanted first.
TRAIN_VARIANTS = (('bfloat16', 'none'), ('float32', 'none'), ('bfloat16', 'block'),
                  ('float32', 'block'))


class Budget:
  """Seconds left of the suite's budget; a part runs only if its estimate fits."""

  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def left(self) -> float:
    return self.end - time.monotonic()

  def allows(self, estimate: float) -> bool:
    return self.left() > estimate


def timed(fn):
  """(result, seconds) of ``fn()``, blocking until its arrays are ready."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def network(relative: str, dtype: str, num_scales: int | None = None):
  """(config, sde, score_fn, random params, image shape) of a config's network in ``dtype``
  (and the SDE with ``num_scales`` steps, when given)."""
  config = load_config(relative)
  apply_sets(config, [f'model.dtype={dtype}'])
  if num_scales:
    config.model.num_scales = num_scales
  sde = sde_lib.from_config(config)
  model = models.get_model(config)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  params = jax.jit(lambda k: models.init_params(model, k, (1, *shape)))(jax.random.key(0))
  score_fn = models.get_score_fn(sde, model, continuous=config.training.continuous)
  return config, sde, score_fn, params, shape


def bench_sampler(name: str, sampler, score_fn, params, batch: int) -> dict:
  run = jax.jit(lambda key, p: sampler(key, score_fn, p))
  _, first = timed(lambda: run(jax.random.key(0), params))  # compile + run
  (x, nfe), run_s = timed(lambda: run(jax.random.key(1), params))
  if not bool(jnp.all(jnp.isfinite(x))):
    raise FloatingPointError(f'{name}: non-finite samples.')
  return {'part': name, 'images_per_s': batch / run_s, 'run_s': run_s,
          'compile_s': max(first - run_s, 0.0), 'nfe': int(nfe)}


def sampling_rows(sizes: dict, budget: Budget, dtype: str) -> list[dict]:
  config, sde, score_fn, params, shape = network(sizes['sample_config'], dtype,
                                                 sizes['pc_steps'])
  rows = []
  pc = sampling.get_pc_sampler(sde, (sizes['pc_batch'], *shape), predictor='reverse_diffusion',
                               corrector='langevin', snr=0.16)
  dpm = sampling.get_sampler('dpm_solver++', sde, (sizes['pc_batch'], *shape), nfe=20)
  for name, sampler in ((f'PC {sizes["pc_steps"]} steps, {dtype}', pc),
                        (f'DPM-Solver++ 20 NFE, {dtype}', dpm)):
    if not budget.allows(60):
      rows.append({'part': name, 'skipped': 'out of time'})
      continue
    rows.append(bench_sampler(name, sampler, score_fn, params, sizes['pc_batch']))
  return rows


def likelihood_row(sizes: dict, budget: Budget) -> dict:
  name = 'likelihood (RK45, 1e-5), float32'
  if not budget.allows(60):
    return {'part': name, 'skipped': 'out of time'}
  config, sde, score_fn, params, shape = network(sizes['sample_config'], 'float32')
  lik = likelihood.get_likelihood_fn(sde, get_data_inverse_scaler(config))
  data = jax.random.uniform(jax.random.key(2), (sizes['lik_batch'], *shape))
  run = jax.jit(lambda key, p, x: lik(key, score_fn, p, x))
  _, first = timed(lambda: run(jax.random.key(3), params, data))
  (bpd, _, nfe), run_s = timed(lambda: run(jax.random.key(4), params, data))
  return {'part': name, 's_per_image': run_s / sizes['lik_batch'], 'run_s': run_s,
          'compile_s': max(first - run_s, 0.0), 'nfe': int(np.max(np.asarray(nfe))),
          'bpd': float(jnp.mean(bpd))}


def inception_rows(sizes: dict, budget: Budget) -> list[dict]:
  mesh = parallel.make_mesh()
  images = np.random.default_rng(0).integers(0, 256, (sizes['inception_images'], 32, 32, 3),
                                             dtype=np.uint8)
  rows, pools = [], {}
  for precision in ('highest', 'default'):
    name = f'Inception-v3 features, precision {precision}'
    if not budget.allows(60):
      rows.append({'part': name, 'skipped': 'out of time'})
      continue
    model = inception.InceptionV3(image_size=sizes['inception_size'],
                                  precision=getattr(jax.lax.Precision, precision.upper()))
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3), jnp.uint8)))(
        jax.random.key(0))['params']
    apply_fn = lambda p, x, m=model: m.apply({'params': p}, x)  # noqa: E731
    few = images[:sizes['inception_batch']]
    _, first = timed(lambda: fid.extract_features(apply_fn, params, few,
                                                  sizes['inception_batch'], mesh))
    out, run_s = timed(lambda: fid.extract_features(apply_fn, params, images,
                                                    sizes['inception_batch'], mesh))
    pools[precision] = out['pool_3']
    rows.append({'part': name, 'images_per_s': len(images) / run_s, 'run_s': run_s,
                 'compile_s': max(first - run_s * len(few) / len(images), 0.0)})
  if len(pools) == 2:
    change = np.max(np.abs(pools['default'] - pools['highest'])) / np.max(np.abs(pools['highest']))
    rows[-1]['pool3_max_rel_change'] = float(change)
  return rows


def train_rows(sizes: dict, budget: Budget) -> list[dict]:
  rows, estimate = [], 90.0
  for dtype, remat in TRAIN_VARIANTS:
    for relative in sizes['train_configs']:
      sets = [f'model.dtype={dtype}', f'model.remat={remat}']
      if not budget.allows(estimate):
        rows.append({'part': 'train', 'config': relative, 'sets': sets, 'skipped': 'out of time'})
        continue
      r = bench_train.bench_config(relative, sizes['train_batch'], 1, 5, sets)
      estimate = max(estimate, 1.3 * r['compile_s'] + 10)
      rows.append({'part': 'train', **r})
  return rows


def markdown(rows: list[dict], header: str) -> str:
  lines = [header, '', '| part | config | settings | images/s | s/image | GFLOP/image | MFU (%) | '
           'compile (s) | NFE | note |', '|---|---|---|---:|---:|---:|---:|---:|---:|---|']
  fmt = bench_train.fmt
  for r in rows:
    settings = ', '.join(s.split('.', 1)[-1] for s in r.get('sets', []))
    gflop = r.get('flops_per_image') and r['flops_per_image'] / 1e9
    note = r.get('skipped', '')
    if 'pool3_max_rel_change' in r:
      note = f"pool_3 max rel. change vs highest: {r['pool3_max_rel_change']:.2g}"
    if 'bpd' in r:
      note = f"{r['bpd']:.2f} bits/dim (random weights)"
    lines.append(f"| {r['part']} | {r.get('config', '')} | {settings} | "
                 f"{fmt(r.get('images_per_s'), '.1f')} | {fmt(r.get('s_per_image'), '.3g')} | "
                 f"{fmt(gflop, '.1f')} | {fmt(r.get('mfu') and 100 * r['mfu'], '.1f')} | "
                 f"{fmt(r.get('compile_s'), '.0f')} | {fmt(r.get('nfe'), 'd')} | {note} |")
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--budget_s', type=float, default=330.0)
  parser.add_argument('--out', default='bench_results/gpu_suite.md')
  parser.add_argument('--smoke', action='store_true', help='tiny sizes, to check on a CPU')
  parser.add_argument('--parts', default='train,sampling,likelihood,inception',
                      help='comma-separated subset of train,sampling,likelihood,inception')
  args = parser.parse_args()
  sizes = SMOKE if args.smoke else FULL
  budget = Budget(args.budget_s)
  devices = jax.devices()
  header = (f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), '
            f'{platform.processor() or platform.machine()}, jax {jax.__version__}, '
            f'budget {args.budget_s:.0f} s{", smoke sizes" if args.smoke else ""}')
  print(header, flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  rows = []
  # Training may take 55% of the budget, so that the other parts always get their turn.
  parts = (('train', lambda: train_rows(sizes, Budget(0.55 * budget.left()))),
           ('sampling', lambda: sampling_rows(sizes, budget, 'bfloat16')),
           ('likelihood', lambda: [likelihood_row(sizes, budget)]),
           ('inception', lambda: inception_rows(sizes, budget)),
           ('sampling', lambda: sampling_rows(sizes, budget, 'float32')))
  wanted = args.parts.split(',')
  unknown = sorted(set(wanted) - {name for name, _ in parts})
  if unknown:
    parser.error(f'--parts: unknown {unknown}; expected train, sampling, likelihood, inception')
  for _, part in (p for p in parts if p[0] in wanted):
    try:
      new = part()
    except Exception as error:  # pylint: disable=broad-except  (one failed part, not the suite)
      new = [{'part': 'error', 'skipped': f'{type(error).__name__}: {error}'[:300]}]
    for r in new:
      print(json.dumps(r), flush=True)
    rows += new
    # Written after every part: a suite stopped by its outer timeout keeps what it measured.
    out.write_text(markdown(rows, header))
  print(f'\n{markdown(rows, header)}\nwritten to {out} ({budget.left():.0f} s of the budget '
        'left)', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
