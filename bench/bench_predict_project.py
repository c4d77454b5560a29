"""Predict-Project against Euler-Maruyama, PC (reverse diffusion + Langevin) and DPM-Solver++,
at equal steps N and at equal network evaluations (NFE), on two problems:

* ``toy``: the eight-Gaussian mixture (sde_jax.data.toys) under the VP SDE with its exact score;
  the projection is a small MLP trained with that exact score. Quality: the sliced 2-Wasserstein
  distance to fresh data (sde_jax.metrics.sliced_wasserstein) and the mean exact log-density
  log p_0 of the samples (above the data's own value means samples pulled onto the modes).
* ``digits``: the README's digits DDPM++ (configs/digits/ddpmpp_continuous.py) trained for
  ``--digits_steps`` steps, then its projection network (half width) with sde-jax
  train-projection's job. Quality: the digits judge (share confidently labelled, classes
  covered) and the Frechet distance of the judge's 64 input features (8x8 average-pooled
  images, 0..16) to scikit-learn's 1797 real digits.

One projection network per problem serves every N (trained on N drawn from all the step counts
below); the toy also trains one for N = 10 only, to see what per-N training buys.

  python bench/bench_predict_project.py --out /tmp/pp          # both, about 20 minutes on 2 cores

``--score_workdir W`` uses the score model of W's latest checkpoint (e.g. the README demo's
``runs/digits``, trained with the digits config) instead of training one: the checkpoints are
copied into ``--out``/digits, where the projection is trained, so W is not written to.
``--max_n`` leaves out the samplers with more steps (the projection is still trained on all of
them); ``--previous`` fills the parts not run now from an earlier results.json (in
``--out``/results.json and the plot).

Prints markdown tables, writes ``--out``/results.json and docs/predict_project.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sde_jax import data as data_lib
from sde_jax.data import toys
from sde_jax import metrics, projection, sampling, train
from sde_jax import sde as sde_lib
from sde_jax.metrics import digits as digits_metrics
from sde_jax.models import MLP

ROOT = pathlib.Path(__file__).parent.parent
STEPS = (10, 20, 40, 100, 1000)
HALF = tuple(n // 2 for n in STEPS)  # PP and PC at equal NFE with EM / DPM-Solver++
TRAIN_STEPS = tuple(sorted(set(STEPS + HALF)))
EPS = 1e-3


def samplers(sde, shape, projection_fn, steps):
  """name -> (steps, sampler(key, score_fn, params, pparams) -> (x, nfe)) for each step count."""
  out = []
  for n in steps:
    sde_n = sde.replace(N=n)
    em = sampling.get_pc_sampler(sde_n, shape, 'euler_maruyama', 'none', denoise=True, eps=EPS)
    pp = sampling.get_predict_project_sampler(sde, shape, projection_fn, n, 1.0, eps=EPS)
    corrector = 'langevin_batch' if shape[1:] == (2,) else 'langevin'  # per-example: 2-D bias
    pc = sampling.get_pc_sampler(sde_n, shape, 'reverse_diffusion', corrector, snr=0.16,
                                 denoise=True, eps=EPS)
    dpm = sampling.get_dpm_solver_sampler(sde, shape, nfe=n, denoise=True, eps=EPS)
    out += [('EM', n, lambda k, f, p, q, s=em: s(k, f, p)),
            ('Predict-Project', n, pp),
            ('DPM-Solver++', n, lambda k, f, p, q, s=dpm: s(k, f, p))]
    if sde.beta_max / n < 1:  # reverse diffusion takes sqrt(1 - beta_max / N) of the DDPM chain
      out.append(('PC', n, lambda k, f, p, q, s=pc: s(k, f, p)))
    if n in HALF and n not in STEPS:
      out = [row for row in out if not (row[1] == n and row[0] in ('EM', 'DPM-Solver++'))]
  return out


def optim(lr, warmup):
  return ml_collections.ConfigDict(dict(optimizer='Adam', lr=lr, beta1=0.9, eps=1e-8,
                                        weight_decay=0., warmup=warmup, grad_clip=1.))


# --- The toy ------------------------------------------------------------------------------------

def mixture_score(sde):
  """The exact score of the eight Gaussians under ``sde`` (params ignored)."""
  weights, means, std = toys.eight_gaussians()
  means = jnp.asarray(means, jnp.float32)

  def score(params, x, t):
    del params
    m = jnp.exp(sde.log_mean_coeff(t))[:, None, None]
    var = m**2 * std**2 + sde.marginal_prob(jnp.zeros_like(t), t)[1][:, None, None]**2
    diff = m * means[None] - x[:, None]  # (B, K, 2)
    logits = -jnp.sum(diff**2, -1) / (2 * var[..., 0]) + jnp.log(jnp.asarray(weights))
    return jnp.einsum('bk,bkd->bd', jax.nn.softmax(logits, -1), diff / var)

  return score


def log_density(x):
  weights, means, std = toys.eight_gaussians()
  d2 = ((x[:, None] - means[None])**2).sum(-1)
  logc = np.log(weights) - d2 / (2 * std**2) - np.log(2 * np.pi * std**2)
  top = logc.max(1)
  return top + np.log(np.exp(logc - top[:, None]).sum(1))


def train_toy_projection(sde, score, n_steps, iters, key):
  model = MLP(features=(128, 128, 128), embedding_dim=64)
  fn = projection.get_projection_fn(sde, model)
  loss = projection.projection_loss_fn(sde, score, None, fn, lambda x: x, n_steps, EPS)
  opt = optim(2e-3, 100)
  optimizer = train.make_optimizer(opt)
  state = train.init_train_state(model, optimizer, (1, 2), key)
  step = jax.jit(train.make_train_step(loss, optimizer, 0.99, train.learning_rate_schedule(opt)))
  per_call = 50
  for c in range(iters // per_call):
    x0 = data_lib.sample_toy('eight_gaussians', jax.random.fold_in(key, c), per_call * 512)
    state, _ = step(state, {'image': x0.reshape(per_call, 512, 2)})
  return fn, state.params_ema


def toy(args):
  sde = sde_lib.VPSDE()
  score = mixture_score(sde)
  t0 = time.time()
  fn, pparams = train_toy_projection(sde, score, TRAIN_STEPS, args.toy_iters, jax.random.key(0))
  fn10, pparams10 = train_toy_projection(sde, score, (10,), args.toy_iters, jax.random.key(1))
  print(f'toy: trained the projections in {time.time() - t0:.0f} s')
  data = np.asarray(data_lib.sample_toy('eight_gaussians', jax.random.key(9), 20000))
  data_logp = float(log_density(data).mean())
  shape = (args.toy_num, 2)
  rows = []

  def measure(name, n, sampler, pp):
    x, nfe = sampler(jax.random.key(1), score, None, pp)
    x = np.asarray(x, np.float64)
    rows.append({'problem': 'toy', 'sampler': name, 'N': n, 'nfe': int(nfe),
                 'sw': metrics.sliced_wasserstein(x, data), 'logp': float(log_density(x).mean())})
    print(rows[-1], flush=True)

  for name, n, sampler in samplers(sde, shape, fn, TRAIN_STEPS):
    if name == 'DPM-Solver++' and n > 100:
      continue  # its steps are unrolled: 1000 of them take minutes to compile, and add nothing
    if args.max_n and n > args.max_n:
      continue
    measure(name, n, sampler, pparams)
  for n in (5, 10):
    measure('Predict-Project (trained for N=10)', n,
            sampling.get_predict_project_sampler(sde, shape, fn10, n, 1.0, eps=EPS), pparams10)
  for size in (0.5, 2.0, 4.0):
    measure(f'Predict-Project (step_size {size:g})', 10,
            sampling.get_predict_project_sampler(sde, shape, fn, 10, size, eps=EPS), pparams)
  ref = metrics.sliced_wasserstein(
      np.asarray(data_lib.sample_toy('eight_gaussians', jax.random.key(3), args.toy_num)), data)
  return rows, {'data_logp': data_logp, 'sw_floor': ref}


# --- The digits ---------------------------------------------------------------------------------

def load_config(path):
  """``get_config()`` of the config file at ``path`` (relative paths: to the repository root)."""
  spec = importlib.util.spec_from_file_location('config', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def digits_config(args):
  config = load_config('configs/digits/ddpmpp_continuous.py')
  n = args.digits_steps
  config.training.update(n_iters=n, eval_freq=n, snapshot_freq=n, snapshot_freq_for_preemption=n,
                         snapshot_sampling=False)
  p = config.projection
  p.train_n_steps = TRAIN_STEPS
  p.ema_rate = 0.99
  m = args.projection_steps
  p.training.update(batch_size=64, n_iters=m, n_jitted_steps=1, log_freq=100, eval_freq=m,
                    snapshot_freq=m, snapshot_freq_for_preemption=m)
  p.optim.update(lr=1e-3, warmup=50)
  return config


def pooled(images):
  """The judge's input features: 8x8 average pools on the data set's 0..16 scale, (n, 64)."""
  n, s = images.shape[0], images.shape[1]
  f = s // 8
  return np.clip(images[..., 0].reshape(n, 8, f, 8, f).mean(axis=(2, 4)), 0, 1).reshape(n, 64) * 16


def frechet(a, b):
  return float(metrics.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                        np.cov(b, rowvar=False)))


def digits(args):
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sde_jax import checkpoints, viz  # pylint: disable=g-import-not-at-top
  from sde_jax import images as images_lib  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import train as train_job  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import train_projection as projection_job  # pylint: disable=g-import-not-at-top
  from sde_jax.score_model import ScoreModel  # pylint: disable=g-import-not-at-top
  config = digits_config(args)
  workdir = os.path.join(args.out, 'digits')
  t0 = time.time()
  if args.score_workdir:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.copytree(os.path.join(args.score_workdir, 'checkpoints'),
                    os.path.join(workdir, 'checkpoints'), dirs_exist_ok=True)
  else:
    train_job.train_and_evaluate(config, workdir)
  t1 = time.time()
  projection_job.train_projection(config, workdir)
  t2 = time.time()
  print(f'digits: score model {t1 - t0:.0f} s, projection {t2 - t1:.0f} s')
  score_model = ScoreModel.from_config(config)
  params, score_step = checkpoints.restore_ema(workdir, score_model.abstract_params())
  proj = projection.restore_projection(config, workdir, score_model)
  real = load_digits().data.astype(np.float64)
  shape = (args.digits_num, *score_model.image_shape)
  rows = []
  for name, n, sampler in samplers(score_model.sde, shape, proj.fn, TRAIN_STEPS):
    if (name == 'DPM-Solver++' and n > 100) or (args.max_n and n > args.max_n):
      continue  # as for the toy
    start = time.time()
    x, nfe = sampler(jax.random.key(1), score_model.score_fn, params, proj.params)
    x = jax.block_until_ready(x)
    seconds = time.time() - start
    images = np.asarray(score_model.inverse_scaler(x), np.float64)
    images = np.clip(np.where(np.isfinite(images), images, 0.0), 0, 1)  # non-finite: black
    judged = digits_metrics.judge_digits(images)
    rows.append({'problem': 'digits', 'sampler': name, 'N': n, 'nfe': int(nfe),
                 'confident': judged.confident_fraction, 'classes': judged.classes_covered,
                 'fd': frechet(pooled(images), real), 'seconds': seconds})
    print(rows[-1], flush=True)
    if args.grids:
      os.makedirs(args.grids, exist_ok=True)
      viz.image_grid_png(os.path.join(args.grids, f'{name}_{n}.png'.replace(' ', '_')),
                         viz.zoom(images_lib.to_uint8(images[:64]), 4))
  gen = np.random.default_rng(0)
  half = gen.permutation(len(real))
  return rows, {'score_steps': score_step, 'score_workdir': args.score_workdir,
                'projection_steps': args.projection_steps,
                'fd_real_halves': frechet(real[half[:args.digits_num]], real),
                'train_s': t1 - t0, 'projection_s': t2 - t1}


# --- Output -------------------------------------------------------------------------------------

def table(rows, columns):
  lines = ['| sampler | N | NFE | ' + ' | '.join(c for c, _ in columns) + ' |',
           '|---|---:|---:|' + '---:|' * len(columns)]
  for r in sorted(rows, key=lambda r: (r['sampler'], r['N'])):
    lines.append(f"| {r['sampler']} | {r['N']} | {r['nfe']} | "
                 + ' | '.join(fmt.format(r[c]) for c, fmt in columns) + ' |')
  return '\n'.join(lines)


def plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [(p, key, label) for p, key, label in (('toy', 'sw', 'toy: sliced W2 (lower is better)'),
                                                   ('digits', 'fd', 'digits: Frechet distance'),
                                                   ('digits', 'confident', 'digits: confident share'))
            if results.get(p)]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  for ax, (problem, key, label) in zip(np.atleast_1d(axes), panels):
    for name in ('EM', 'Predict-Project', 'PC', 'DPM-Solver++'):
      rs = sorted((r for r in results[problem]['rows'] if r['sampler'] == name),
                  key=lambda r: r['nfe'])
      ax.plot([r['nfe'] for r in rs], [r[key] for r in rs], marker='o', label=name)
    ax.set_xscale('log')
    if key != 'confident':
      ax.set_yscale('log')
    ax.set_xlabel('network evaluations (NFE)')
    ax.set_title(label)
  np.atleast_1d(axes)[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/bench_predict_project')
  parser.add_argument('--parts', default='toy,digits')
  parser.add_argument('--toy_num', type=int, default=4000)
  parser.add_argument('--toy_iters', type=int, default=3000)
  parser.add_argument('--digits_steps', type=int, default=1000)
  parser.add_argument('--projection_steps', type=int, default=500)
  parser.add_argument('--digits_num', type=int, default=256)
  parser.add_argument('--score_workdir', default=None,
                      help='digits: the score model of this workdir\'s latest checkpoint (e.g. '
                           'runs/digits, the README demo\'s) instead of training one for '
                           '--digits_steps')
  parser.add_argument('--max_n', type=int, default=None,
                      help='leave out samplers with more steps than this')
  parser.add_argument('--grids', default=None,
                      help='digits: write a PNG grid of each sampler\'s first 64 samples here')
  parser.add_argument('--previous', default=None,
                      help='an earlier results.json whose parts fill those not run now')
  parser.add_argument('--png', default=str(ROOT / 'docs' / 'predict_project.png'))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  results = {}
  if args.previous:
    with open(args.previous) as f:
      results = {k: v for k, v in json.load(f).items() if k not in args.parts}
  if 'toy' in args.parts:
    rows, info = toy(args)
    results['toy'] = {'rows': rows, **info}
    print(f"\n### toy (data log p {info['data_logp']:.3f}, SW floor {info['sw_floor']:.4f})\n")
    print(table(rows, [('sw', '{:.4f}'), ('logp', '{:.3f}')]))
  if 'digits' in args.parts:
    rows, info = digits(args)
    results['digits'] = {'rows': rows, **info}
    print(f"\n### digits ({info})\n")
    print(table(rows, [('confident', '{:.3f}'), ('classes', '{}'), ('fd', '{:.2f}')]))
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(results, args.png)


if __name__ == '__main__':
  main()
