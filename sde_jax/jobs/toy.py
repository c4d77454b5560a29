"""The toy job: train an MLP score model on a 2-D distribution, sample it, measure it.

``run_toy(config, workdir)`` trains with the configured SDE and loss, draws samples with the
configured sampler and with the probability-flow ODE, computes the likelihood of held-out data,
and writes ``samples.png`` (data vs samples), ``report.md`` and ``report.json`` to ``workdir``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sde_jax import data as data_lib
from sde_jax import likelihood, losses, metrics, models, sampling, train, viz
from sde_jax import workdir as workdir_lib
from sde_jax import sde as sde_lib

OUTPUTS = ('samples.png', 'report.md', 'report.json')


def train_toy(config, key, progress: bool = True) -> tuple[train.TrainState, list[dict]]:
  """Trains the configured model on ``config.data.dataset``; returns the state and a loss log.

  The optimizer, state and step are those of :mod:`sde_jax.train` (one step per call); the
  batch of step ``s`` is drawn from ``fold_in(k_data, s)``, ``k_data`` the data half of ``key``.

  Args:
    config: the toy config; reads ``data.dataset`` and ``data.dim``, ``optim``,
      ``model.ema_rate``, ``training.n_iters``, ``training.batch_size``, ``training.log_freq``
      and what the SDE, model and loss read.
    key: a PRNG key, split into the parameter initialisation key and the data key.
    progress: show a tqdm bar; if False, log each logged step's loss instead.

  Returns:
    ``(state, history)``: the final :class:`~sde_jax.train.TrainState` and one dict
    ``{'step', 'loss', 'grad_norm', 'lr'}`` every ``training.log_freq`` steps and at the last.

  Raises:
    FloatingPointError: if a logged loss is not finite.
  """
  sde = sde_lib.from_config(config)
  model = models.get_model(config)
  loss_fn = losses.get_loss_fn(config, sde, model, train=True)
  optimizer = train.make_optimizer(config.optim)
  k_init, k_data = jax.random.split(key)
  state = train.init_train_state(model, optimizer, (1, config.data.dim), k_init)
  train_step = jax.jit(train.make_train_step(loss_fn, optimizer, config.model.ema_rate,
                                             train.learning_rate_schedule(config.optim), unroll=True),
                       donate_argnums=0)
  n_iters, batch_size = config.training.n_iters, config.training.batch_size
  history = []
  bar = tqdm(range(n_iters), desc='train', disable=not progress, mininterval=1.0)
  for step in bar:
    batch = data_lib.sample_toy(config.data.dataset, jax.random.fold_in(k_data, step), batch_size)
    state, info = train_step(state, batch[None])
    if (step + 1) % config.training.log_freq == 0 or step + 1 == n_iters:
      info = {k: float(v[0]) for k, v in info.items()}
      if not np.isfinite(info['loss']):
        raise FloatingPointError(f'Non-finite loss {info["loss"]} at step {step + 1}.')
      history.append({'step': step + 1, **info})
      bar.set_postfix(loss=f'{info["loss"]:.4f}')
      if not progress:
        logging.info('step %d loss %.4f', step + 1, info['loss'])
  return state, history


def mode_statistics(points: np.ndarray, means: np.ndarray, std: float) -> dict[str, float]:
  """Fraction of points within 3 std of their nearest mode, and the per-mode weights.

  Args:
    points: samples, shape (n, d).
    means: the mixture's modes, shape (K, d).
    std: the modes' standard deviation; a point is on its nearest mode if its Euclidean
      distance to it is below ``3 std``.

  Returns:
    ``{'fraction_on_modes': float, 'mode_weights': list of K floats}``: the weights are the
    fractions of the on-mode points nearest to each mode (all zero if no point is on a mode).
  """
  dist = np.linalg.norm(points[:, None, :] - means[None], axis=-1)
  nearest = np.argmin(dist, axis=1)
  near = dist[np.arange(len(points)), nearest] < 3 * std
  weights = np.bincount(nearest[near], minlength=len(means)) / max(near.sum(), 1)
  return {'fraction_on_modes': float(near.mean()), 'mode_weights': weights.tolist()}


def _mixture_nll(points: np.ndarray) -> float:
  """Exact mean negative log-density (nats per dimension) of the eight-Gaussian data."""
  weights, means, std = data_lib.eight_gaussians()
  sq = np.sum((points[:, None, :] - means[None]) ** 2, axis=-1)
  logc = np.log(weights) - sq / (2 * std**2) - np.log(2 * np.pi * std**2)
  top = logc.max(axis=1, keepdims=True)
  logp = (top + np.log(np.exp(logc - top).sum(axis=1, keepdims=True)))[:, 0]
  return float(-logp.mean() / points.shape[1])


def evaluate_toy(config, params, key) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Samples (configured sampler and probability-flow ODE) and held-out likelihood.

  Both samplers draw ``eval.num_samples`` points, compared with as many held-out data points by
  the sliced Wasserstein distance (and mode statistics for ``eight_gaussians``); the likelihood
  of the first ``eval.num_likelihood`` held-out points is reported in nats per dimension.

  Args:
    config: the toy config (``data``, ``training``, ``model``, ``sampling`` and ``eval``).
    params: the score model's parameters (the EMA ones in :func:`run_toy`).
    key: a PRNG key, split into the sampler, ODE sampler, held-out data and likelihood keys.

  Returns:
    ``(results, points)``: ``results`` maps ``'configured'`` and ``'ode'`` to their ``nfe``,
    ``seconds`` and ``sliced_wasserstein`` (and mode statistics), ``'likelihood'`` to the NLL
    and its NFE, and ``'reference_sliced_wasserstein'`` to the distance between two data samples;
    ``points`` maps ``'data'`` and one title per sampler to points of shape (n, 2).
  """
  sde = sde_lib.from_config(config)
  model = models.get_model(config)
  score_fn = models.get_score_fn(sde, model, continuous=config.training.continuous)
  n, dim = config.eval.num_samples, config.data.dim
  k_pc, k_ode, k_data, k_lik = jax.random.split(key, 4)
  heldout = np.asarray(data_lib.sample_toy(config.data.dataset, k_data, n))
  results, points = {}, {'data': heldout}
  samplers = {'configured': sampling.get_sampler_from_config(config, sde, (n, dim)),
              'ode': sampling.get_ode_sampler(sde, (n, dim))}
  for name, sampler in samplers.items():
    start = time.perf_counter()
    x, nfe = sampler(k_pc if name == 'configured' else k_ode, score_fn, params)
    x = np.asarray(jax.block_until_ready(x))
    results[name] = {'nfe': int(nfe), 'seconds': time.perf_counter() - start,
                     'sliced_wasserstein': metrics.sliced_wasserstein(x, heldout)}
    if config.data.dataset == 'eight_gaussians':
      results[name].update(mode_statistics(x, *data_lib.eight_gaussians()[1:]))
    label = (sampling.describe_from_config(config) if name == 'configured'
             else 'probability-flow ODE')
    points[f'{label}, {results[name]["nfe"]} NFE'] = x
  m = config.eval.num_likelihood
  inverse_scaler = data_lib.get_data_inverse_scaler(config)
  lik_fn = likelihood.get_likelihood_fn(sde, inverse_scaler)
  bpd, _, nfe = lik_fn(k_lik, score_fn, params, jnp.asarray(heldout[:m]))
  offset = 7.0 - float(inverse_scaler(jnp.asarray(-1.0)))
  nats = (np.asarray(bpd) - offset) * np.log(2.0)  # undo the 8-bit-data convention
  results['likelihood'] = {'nll_nats_per_dim': float(nats.mean()), 'nfe': int(nfe)}
  if config.data.dataset == 'eight_gaussians':
    results['likelihood']['true_nll_nats_per_dim'] = _mixture_nll(heldout[:m])
  results['reference_sliced_wasserstein'] = metrics.sliced_wasserstein(
      np.asarray(data_lib.sample_toy(config.data.dataset, jax.random.fold_in(k_data, 1), n)),
      heldout)
  return results, points


def _report_markdown(config, history, results) -> str:
  lines = [f'# Toy run: {config.data.dataset}, {config.training.sde}, '
           f'{config.training.n_iters} steps', '',
           f'Final training loss: {history[-1]["loss"]:.4f}', '',
           '| sampler | NFE | seconds | sliced W2 to held-out data | on modes | mode weights |',
           '|---|---|---|---|---|---|']
  for name in ('configured', 'ode'):
    r = results[name]
    label = sampling.describe_from_config(config) if name == 'configured' else name
    weights = ' '.join(f'{w:.3f}' for w in r.get('mode_weights', []))
    lines.append(f'| {label} | {r["nfe"]} | {r["seconds"]:.2f} | {r["sliced_wasserstein"]:.4f} '
                 f'| {r.get("fraction_on_modes", float("nan")):.3f} | {weights} |')
  lines += ['', f'Sliced W2 between two independent data samples of the same size (the noise '
            f'floor): {results["reference_sliced_wasserstein"]:.4f}', '',
            '| likelihood | NLL (nats/dim) | true NLL (nats/dim) | NFE |', '|---|---|---|---|']
  lik = results['likelihood']
  lines.append(f'| probability-flow ODE, Hutchinson | {lik["nll_nats_per_dim"]:.4f} | '
               f'{lik.get("true_nll_nats_per_dim", float("nan")):.4f} | {lik["nfe"]} |')
  return '\n'.join(lines) + '\n'


def run_toy(config, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Trains, samples and evaluates the toy model; writes the PNG and the reports.

  Args:
    config: the toy config; ``seed`` gives the key of the whole run.
    workdir: the output folder; outputs of an earlier run there are moved aside.
    progress: show a tqdm bar while training (else log the losses).

  Returns:
    The ``results`` of :func:`evaluate_toy`, also written to ``report.json``.

  Raises:
    ValueError: if ``config.data.dataset`` is not a toy data set.
  """
  if config.data.dataset not in data_lib.TOY_DATASETS:
    raise ValueError(f'config.data.dataset={config.data.dataset!r} is not a toy data set; '
                     f'expected one of {sorted(data_lib.TOY_DATASETS)}.')
  workdir_lib.output_folder(workdir, '', OUTPUTS)
  key = jax.random.key(config.seed)
  k_train, k_eval = jax.random.split(key)
  state, history = train_toy(config, k_train, progress)
  results, points = evaluate_toy(config, state.params_ema, k_eval)
  viz.scatter_png(os.path.join(workdir, 'samples.png'), points)
  workdir_lib.write_text(os.path.join(workdir, 'report.md'),
                         _report_markdown(config, history, results))
  workdir_lib.write_json(os.path.join(workdir, 'report.json'),
                         {'config': config.to_dict(), 'history': history, 'results': results})
  return results
