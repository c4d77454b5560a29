"""Sample quality against score evaluations (NFE) for every sampler, with an exact score.

The data are a 2-D Gaussian mixture of isotropic components, so the score of every perturbed
marginal is closed form (``p_t = sum_k w_k N(m(t) mu_k, (m(t)^2 std_k^2 + s(t)^2) I)``), and every
sampler starts from the exact ``p_T`` rather than the SDE's Gaussian prior: the error measured is
the sampler's alone. (A second, smaller table starts a few samplers from the Gaussian prior, to
show the error that T = 1 adds.) Sample quality is the sliced 2-Wasserstein distance to the exact
data distribution, ``SW_2 = sqrt(E_u W_2^2(u^T x, u^T X))`` over random unit directions u: every
projection of the mixture is a 1-D mixture with a closed-form CDF, so each ``W_2`` compares the
sorted projected samples with the exact quantiles (the limit of
:func:`sde_jax.metrics.sliced_wasserstein` against infinitely many exact samples). n exact
samples are themselves at a distance ~ n^(-1/2) from the distribution; that noise floor is
measured and printed with the tables.

  python bench/bench_fast_samplers.py                          # VP and VE, 131072 samples
  python bench/bench_fast_samplers.py --sde vp --num 8192      # a quick run

The ``digits`` part (not in the default ``--parts``) runs the samplers instead on a trained
digits model, e.g. the README's demo (``sde-jax train --config configs/digits/ddpmpp_continuous.py
--workdir runs/digits``): the EMA weights of ``--digits_workdir``'s latest checkpoint, each
sampler built from the config with ``sampling.*`` overrides as ``sde-jax sample
--config.sampling.method=...`` builds it, all from the same prior draws (``key(config.seed)``).
Quality: the digits judge (share of samples labelled with probability >= 0.9, classes covered)
and the Frechet distance of the judge's 64 input features to scikit-learn's 1797 real digits:

  python bench/bench_fast_samplers.py --parts digits --digits_workdir runs/digits \
      --digits_num 256 --digits_grids /tmp/grids

Prints markdown tables and writes ``--png`` (matplotlib, used by this script only) and
``--json``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from scipy import special

from sde_jax import sampling
from sde_jax import sde as sde_lib

NFE_GRID = (5, 10, 20, 35, 50, 100, 1000)
SDES = {'vp': (sde_lib.VPSDE, 1e-3), 've': (sde_lib.VESDE, 1e-5)}
# The mixture: uneven weights and widths, modes 3 apart from a wide central one.
WEIGHTS = np.array([0.3, 0.2, 0.2, 0.15, 0.15])
MEANS = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, -3.0], [0.0, 0.0]])
STDS = np.array([0.3, 0.5, 0.4, 0.25, 0.6])
# Points per example: the adaptive SDE solver controls each example's steps by an error norm over
# its elements, which needs many of them (an image has thousands; in d = 2 its accept / reject
# decisions bias the noise, see docs/fast_samplers.md). The other samplers treat points alike.
COPIES = 64
# Fixed-step samplers: (label, method, options); nfe comes from NFE_GRID.
FIXED = [
    ('DDIM (DPM-Solver++ order 1)', 'dpm_solver++', dict(order=1)),
    ('DPM-Solver++(2M)', 'dpm_solver++', dict(order=2)),
    ('DPM-Solver++(3M)', 'dpm_solver++', dict(order=3)),
    ('DPM-Solver++(3M), time_quadratic', 'dpm_solver++', dict(order=3, schedule='time_quadratic')),
    ('EDM Heun', 'heun', dict()),
]
# The VP SDE's DDPM chain needs beta_max / N < 1, i.e. N >= 25 for the PC sampler.
PC_MIN_NFE = 50
# (rtol, atol): the paper's atol = 0.0078 down to rtol = 0.02; below, rtol |x| < atol for most
# points, so both shrink together.
ADAPTIVE_TOLS = ((0.5, 0.0078), (0.2, 0.0078), (0.1, 0.0078), (0.05, 0.0078), (0.02, 0.0078),
                 (0.01, 0.004), (0.005, 0.002), (0.002, 0.001))
ODE_TOLS = (1e-2, 1e-3, 1e-5)


def exact_prior(cls):
  """``cls`` (VPSDE or VESDE) whose prior is the exact perturbed mixture ``p_T``, not the
  SDE's Gaussian approximation of it, so that every sampler starts from the right law."""

  @struct.dataclass
  class ExactPrior(cls):

    def prior_sampling(self, key, shape):
      m, s = self.marginal_prob(jnp.ones(()), jnp.asarray(self.T))
      k_comp, k_noise = jax.random.split(key)
      comp = jax.random.choice(k_comp, len(WEIGHTS), shape[:-1], p=jnp.asarray(WEIGHTS))
      std = jnp.sqrt(m**2 * jnp.asarray(STDS)[comp]**2 + s**2)
      return (m * jnp.asarray(MEANS, jnp.float32)[comp]
              + std[..., None] * jax.random.normal(k_noise, shape))

  return ExactPrior


def mixture_score(sde):
  """``score_fn(params, x, t)`` of the perturbed mixture; params is unused."""
  logw, means, var0 = (jnp.asarray(a, jnp.float32) for a in (np.log(WEIGHTS), MEANS, STDS**2))

  def score(params, x, t):
    """x of shape (B, ..., 2): the points of an example share its time t."""
    del params
    shape = x.shape
    t = jnp.repeat(t, x.size // (2 * shape[0]))
    x = x.reshape(-1, 2)
    m, s = sde.marginal_prob(jnp.ones_like(t), t)
    var = m[:, None]**2 * var0[None] + s[:, None]**2  # (B, K)
    diff = x[:, None, :] - m[:, None, None] * means[None]  # (B, K, 2)
    logp = logw[None] - 0.5 * jnp.sum(diff**2, -1) / var - jnp.log(var)  # up to a constant
    resp = jax.nn.softmax(logp, axis=1)
    return -jnp.einsum('bk,bkd->bd', resp / var, diff).reshape(shape)

  return score


def exact_samples(n: int, seed: int) -> np.ndarray:
  rs = np.random.default_rng(seed)
  comp = rs.choice(len(WEIGHTS), size=n, p=WEIGHTS)
  return MEANS[comp] + STDS[comp, None] * rs.standard_normal((n, 2))


def exact_quantiles(directions: np.ndarray, n: int, grid: int = 20001) -> np.ndarray:
  """Quantiles at levels ``(i + 1/2) / n`` of the mixture projected on each unit direction,
  shape (n, P): the CDF ``sum_k w_k Phi((y - u^T mu_k) / std_k)`` tabulated and inverted."""
  levels = (np.arange(n) + 0.5) / n
  out = np.empty((n, directions.shape[1]))
  for p, u in enumerate(directions.T):
    centres = MEANS @ u
    y = np.linspace(centres.min() - 9 * STDS.max(), centres.max() + 9 * STDS.max(), grid)
    cdf = sum(w * special.ndtr((y - c) / s) for w, c, s in zip(WEIGHTS, centres, STDS))
    out[:, p] = np.interp(levels, cdf, y)
  return out


class SlicedW2:
  """``SW_2`` of a sample of size n to the exact mixture over fixed random directions."""

  def __init__(self, n: int, num_projections: int = 128, seed: int = 0):
    u = np.random.default_rng(seed).standard_normal((2, num_projections))
    self.directions = u / np.linalg.norm(u, axis=0, keepdims=True)
    self.quantiles = exact_quantiles(self.directions, n)

  def __call__(self, x: np.ndarray) -> float:
    projected = np.sort(np.asarray(x, np.float64) @ self.directions, axis=0)
    return float(np.sqrt(np.mean((projected - self.quantiles)**2)))


def run(sampler, score, distance, key):
  start = time.perf_counter()
  x, nfe = sampler(key, score, None)
  x = jax.block_until_ready(x)
  seconds = time.perf_counter() - start
  return {'nfe': int(nfe), 'seconds': seconds, 'sw': distance(np.asarray(x).reshape(-1, 2))}


def bench_sde(name: str, n: int, distance: SlicedW2, pc_steps: int) -> dict:
  """Every sampler on one SDE, started from the exact ``p_T``; returns
  ``{label: [result, ...]}``."""
  base, eps = SDES[name]
  cls = exact_prior(base)
  sde = cls()
  score = mixture_score(sde)
  shape, key = (n // COPIES, COPIES, 2), jax.random.key(0)
  common = dict(eps=eps, denoise=True)
  rows = {}
  for label, method, options in FIXED:
    rows[label] = [run(sampling.get_sampler(method, sde, shape, nfe=nfe, **options, **common),
                       score, distance, key) for nfe in NFE_GRID]
  rows['adaptive SDE (Gotta Go Fast)'] = [
      run(sampling.get_adaptive_sde_sampler(sde, shape, rtol=r, atol=a, **common), score,
          distance, key) for r, a in ADAPTIVE_TOLS]
  rows['PC reverse diffusion + Langevin (N = NFE / 2)'] = [
      run(sampling.get_pc_sampler(cls(N=nfe // 2), shape, corrector='langevin_batch', **common),
          score, distance, key) for nfe in NFE_GRID if nfe >= PC_MIN_NFE]
  rows[f'PC, N = {pc_steps} (the paper\'s sampler)'] = [
      run(sampling.get_pc_sampler(cls(N=pc_steps), shape, corrector='langevin_batch', **common),
          score, distance, key)]
  rows['probability-flow ODE, RK45'] = [
      run(sampling.get_ode_sampler(sde, shape, rtol=tol, atol=tol, **common), score, distance,
          key) for tol in ODE_TOLS]
  return rows


def markdown(name: str, rows: dict, floor: float) -> str:
  lines = [f'### {name.upper()} SDE from the exact p_T: sliced W2 to the data distribution '
           f'(noise floor {floor:.4f})', '',
           '| sampler | ' + ' | '.join(f'NFE {n}' for n in NFE_GRID) + ' |',
           '|---|' + '---|' * len(NFE_GRID)]
  for label, _, _ in FIXED:
    lines.append(f'| {label} | ' + ' | '.join(f'{r["sw"]:.4f}' for r in rows[label]) + ' |')
  lines += ['', '| sampler | setting | NFE | sliced W2 | seconds |', '|---|---|---|---|---|']
  pc_label = 'PC reverse diffusion + Langevin (N = NFE / 2)'
  settings = {pc_label: [f"N = {n // 2}" for n in NFE_GRID if n >= PC_MIN_NFE],
              'adaptive SDE (Gotta Go Fast)': [f'rtol = {r:g}, atol = {a:g}'
                                               for r, a in ADAPTIVE_TOLS],
              'probability-flow ODE, RK45': [f'rtol = atol = {t:g}' for t in ODE_TOLS]}
  for label, results in rows.items():
    if any(label == f[0] for f in FIXED):
      continue
    for setting, r in zip(settings.get(label, ['']), results):
      lines.append(f'| {label} | {setting} | {r["nfe"]} | {r["sw"]:.4f} | {r["seconds"]:.2f} |')
  return '\n'.join(lines)


MISMATCH = [('DPM-Solver++(3M), NFE 20', 'dpm_solver++', dict(order=3, nfe=20)),
            ('DPM-Solver++(3M), NFE 100', 'dpm_solver++', dict(order=3, nfe=100)),
            ('adaptive SDE, rtol = 0.05', 'adaptive_sde', dict(rtol=0.05)),
            ('PC, N = 1000', 'pc', dict(corrector='langevin_batch'))]


def prior_mismatch(name: str, n: int, distance: SlicedW2, seeds=(0, 1, 2)) -> dict:
  """A few samplers started from the SDE's own Gaussian prior (N(0, I) for VP, N(0, 50^2 I)
  for VE) instead of ``p_T``: the error every sampler inherits from T = 1, over several
  seeds."""
  cls, eps = SDES[name]
  score = mixture_score(cls())
  shape = (n // COPIES, COPIES, 2)
  rows = {}
  for label, method, options in MISMATCH:
    sampler = sampling.get_sampler(method, cls(), shape, eps=eps, denoise=True, **options)
    rows[label] = [run(sampler, score, distance, jax.random.key(seed)) for seed in seeds]
  return rows


def target_seeds(name: str, n: int, distance: SlicedW2, pc_steps: int, seeds=(0, 1, 2)) -> dict:
  """The issue's target over several seeds, from the exact ``p_T``: the fast samplers at 20
  NFE against PC at ``2 pc_steps`` NFE (the metric's noise is comparable to the differences)."""
  base, eps = SDES[name]
  cls = exact_prior(base)
  score = mixture_score(cls())
  shape, common = (n // COPIES, COPIES, 2), dict(eps=eps, denoise=True)
  samplers = {label: sampling.get_sampler(method, cls(), shape, nfe=20, **options, **common)
              for label, method, options in FIXED[1:]}
  samplers[f'PC, N = {pc_steps}'] = sampling.get_pc_sampler(
      cls(N=pc_steps), shape, corrector='langevin_batch', **common)
  return {label: [run(sampler, score, distance, jax.random.key(seed)) for seed in seeds]
          for label, sampler in samplers.items()}


def seeds_markdown(name: str, rows: dict, title: str) -> str:
  lines = [f'### {name.upper()} SDE: {title}', '',
           '| sampler | NFE | sliced W2, seeds 0, 1, 2 | mean |', '|---|---|---|---|']
  for label, rs in rows.items():
    sw = [r['sw'] for r in rs]
    lines.append(f'| {label} | {rs[0]["nfe"]} | ' + ', '.join(f'{v:.4f}' for v in sw)
                 + f' | {np.mean(sw):.4f} |')
  return '\n'.join(lines)


def target_line(rows: dict, pc_steps: int, floors) -> str:
  """The issue's target: the best fast sampler at 20 NFE against PC at 2 N NFE."""
  best_label, best = min(((f[0], rows[f[0]][NFE_GRID.index(20)]['sw']) for f in FIXED),
                         key=lambda item: item[1])
  pc = rows[f'PC, N = {pc_steps} (the paper\'s sampler)'][0]
  verdict = 'below' if best <= pc['sw'] else 'above'
  return (f'At 20 NFE the best fast sampler, {best_label}, has sliced W2 {best:.4f}, {verdict} '
          f'PC at {pc["nfe"]} NFE ({pc["sw"]:.4f}); exact samples alone score '
          f'{min(floors):.4f} to {max(floors):.4f}.')


# The digits part: (label, config.sampling overrides); {} is the config's own sampler (the demo's:
# reverse diffusion + Langevin, N = model.num_scales = 500).
DIGITS_SAMPLERS = [
    ('PC reverse diffusion + Langevin, N = 500 (the config\'s)', {}),
    ('probability-flow ODE, RK45, rtol = atol = 1e-5', dict(method='ode')),
    ('DPM-Solver++(2M), NFE 10', dict(method='dpm_solver++', nfe=10)),
    ('DPM-Solver++(2M), NFE 20', dict(method='dpm_solver++', nfe=20)),
    ('DPM-Solver++(3M), NFE 20', dict(method='dpm_solver++', nfe=20, order=3)),
    ('DPM-Solver++(2M), NFE 50', dict(method='dpm_solver++', nfe=50)),
    ('EDM Heun, NFE 35', dict(method='heun', nfe=35)),
    ('adaptive SDE, rtol = 0.05', dict(method='adaptive_sde')),
]


def bench_digits(args) -> dict:
  """Every sampler of DIGITS_SAMPLERS on the trained digits model of ``args.digits_workdir``."""
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from bench_predict_project import frechet, load_config, pooled  # pylint: disable=g-import-not-at-top
  from sde_jax import checkpoints, images as images_lib, viz  # pylint: disable=g-import-not-at-top
  from sde_jax.metrics import digits as digits_metrics  # pylint: disable=g-import-not-at-top
  from sde_jax.score_model import ScoreModel  # pylint: disable=g-import-not-at-top
  config = load_config(args.digits_config)
  score_model = ScoreModel.from_config(config)
  params, step = checkpoints.restore_ema(args.digits_workdir, score_model.abstract_params())
  print(f'digits: EMA weights of {args.digits_workdir}, step {step}; {args.digits_num} samples '
        f'per sampler, key(seed = {config.seed})', flush=True)
  real = load_digits().data.astype(np.float64)
  shape = (args.digits_num, *score_model.image_shape)
  rows = []
  for label, overrides in DIGITS_SAMPLERS:
    cfg = config.copy_and_resolve_references()
    cfg.sampling.update(overrides)
    sampler = sampling.get_sampler_from_config(cfg, score_model.sde, shape)
    start = time.perf_counter()
    x, nfe = sampler(jax.random.key(config.seed), score_model.score_fn, params)
    x = jax.block_until_ready(x)
    seconds = time.perf_counter() - start
    images = np.asarray(score_model.inverse_scaler(x), np.float64)
    finite = np.isfinite(images)
    images = np.clip(np.where(finite, images, 0.0), 0, 1)  # non-finite: black
    judged = digits_metrics.judge_digits(images)
    rows.append({'sampler': label, 'describe': sampling.describe_from_config(cfg),
                 'nfe': int(nfe), 'seconds': seconds, 'non_finite': int((~finite).sum()),
                 'confident': judged.confident_fraction, 'classes': judged.classes_covered,
                 'class_counts': judged.class_counts, 'fd': frechet(pooled(images), real),
                 'real_confident': judged.real_confident_fraction})
    print(rows[-1], flush=True)
    if args.digits_grids:
      os.makedirs(args.digits_grids, exist_ok=True)
      slug = re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')
      viz.image_grid_png(os.path.join(args.digits_grids, f'{slug}.png'),
                         viz.zoom(images_lib.to_uint8(images[:64]), 4))
  half = np.random.default_rng(0).permutation(len(real))[:args.digits_num]
  return {'rows': rows, 'step': step, 'workdir': args.digits_workdir, 'num': args.digits_num,
          'fd_real': frechet(real[half], real)}


def digits_markdown(result: dict) -> str:
  lines = [f'### Digits model of {result["workdir"]} (EMA, step {result["step"]}), '
           f'{result["num"]} samples per sampler', '',
           '| sampler | NFE | confident (p >= 0.9) | classes | class counts 0-9 | FD | seconds |',
           '|---|---:|---:|---:|---|---:|---:|']
  for r in result['rows']:
    bad = f' ({r["non_finite"]} non-finite values)' if r['non_finite'] else ''
    lines.append(f'| {r["sampler"]}{bad} | {r["nfe"]} | {r["confident"]:.3f} | {r["classes"]} | '
                 + ' '.join(str(c) for c in r['class_counts'])
                 + f' | {r["fd"]:.1f} | {r["seconds"]:.0f} |')
  real = result['rows'][0]['real_confident']
  lines += ['', f'Held-out real digits: {real:.3f} confident (same judge); FD of '
            f'{result["num"]} real digits to all 1797: {result["fd_real"]:.1f}. Seconds: the '
            'first call, compilation included.']
  return '\n'.join(lines)


def plot(results: dict, floors, path: str) -> None:
  import matplotlib  # only the benchmark draws; the library does not depend on matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
  for ax, (name, rows) in zip(axes[0], results.items()):
    for label, rs in rows.items():
      style = 'o' if len(rs) == 1 else '.-'
      ax.plot([r['nfe'] for r in rs], [r['sw'] for r in rs], style, label=label)
    ax.axhspan(min(floors), max(floors), color='gray', alpha=0.2,
               label='exact samples (noise floor, 5 draws)')
    ax.set(xscale='log', yscale='log', xlabel='score evaluations (NFE)',
           ylabel='sliced W2 to the data distribution',
           title=f'{name.upper()} SDE, 2-D Gaussian mixture')
    ax.grid(True, which='both', alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sde', choices=sorted(SDES), nargs='+', default=['vp', 've'])
  parser.add_argument('--num', type=int, default=131072, help='samples per sampler')
  parser.add_argument('--pc-steps', type=int, default=1000, help='N of the reference PC run')
  parser.add_argument('--png', default='docs/fast_samplers_nfe.png')
  parser.add_argument('--json', default=None)
  parser.add_argument('--parts', nargs='+', choices=['grid', 'target', 'prior', 'digits'],
                      default=['grid', 'target', 'prior'],
                      help='grid: every sampler against NFE; target: 20 NFE against PC over '
                           'seeds; prior: a few samplers from the Gaussian prior; digits: the '
                           'samplers on a trained digits model (--digits_workdir)')
  parser.add_argument('--digits_workdir', default='runs/digits',
                      help='digits part: a workdir whose latest checkpoint is a digits model '
                           'trained with --digits_config (the README demo\'s by default)')
  parser.add_argument('--digits_config', default='configs/digits/ddpmpp_continuous.py')
  parser.add_argument('--digits_num', type=int, default=256, help='digits part: samples per '
                      'sampler')
  parser.add_argument('--digits_grids', default=None, help='digits part: write a PNG grid of '
                      'each sampler\'s first 64 samples into this folder')
  args = parser.parse_args()
  print(f'devices: {jax.devices()}; jax {jax.__version__}')
  results, target, mismatch, digits, floors = {}, {}, {}, None, []
  if set(args.parts) - {'digits'}:
    print(f'{args.num} samples per sampler')
    distance = SlicedW2(args.num)
    floors = [distance(exact_samples(args.num, seed)) for seed in range(1, 6)]
    floor = float(np.mean(floors))
    print(f'noise floor: sliced W2 of {args.num} exact samples, 5 draws: '
          + ', '.join(f'{f:.4f}' for f in floors))
  for name in args.sde if 'grid' in args.parts else []:
    results[name] = bench_sde(name, args.num, distance, args.pc_steps)
    print('\n' + markdown(name, results[name], floor) + '\n\n' + target_line(results[name],
                                                                            args.pc_steps, floors))
  for name in args.sde if 'target' in args.parts else []:
    target[name] = target_seeds(name, args.num, distance, args.pc_steps)
    print('\n' + seeds_markdown(name, target[name], 'fast samplers at 20 NFE against PC, '
                                 'from the exact p_T'))
  for name in args.sde if 'prior' in args.parts else []:
    mismatch[name] = prior_mismatch(name, args.num, distance)
    print('\n' + seeds_markdown(name, mismatch[name], 'started from its Gaussian prior'))
  if 'digits' in args.parts:
    digits = bench_digits(args)
    print('\n' + digits_markdown(digits))
  if args.png and results:
    plot(results, floors, args.png)
    print(f'\nwrote {args.png}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'results': results, 'target': target, 'gaussian_prior': mismatch,
                 'floors': floors, 'nfe_grid': NFE_GRID, 'digits': digits}, f, indent=1)

if __name__ == '__main__':
  main()
