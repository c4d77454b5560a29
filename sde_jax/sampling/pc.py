"""Predictor-corrector sampling (Song et al., ICLR 2021, Alg. 1): one ``lax.scan`` over N steps.

Randomness: example i of a call with ``first_index`` draws everything from
``k_i = fold_in(key, first_index + i)`` (:func:`sde_jax.rng.per_example_keys`): the prior from
``fold_in(k_i, PRIOR)``, the corrector and predictor of step n from
``fold_in(fold_in(k_i, stage), n)``. A sample therefore does not depend on the batch size or on
which call of a long job produced it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import nonfinite, rng
from sde_jax.sampling.correctors import CORRECTORS
from sde_jax.sampling.predictors import PREDICTORS
from sde_jax.sde import SDE, SubVPSDE, VPSDE

Array = jax.Array
# score_fn(params, x, t) -> score; the samplers bind params themselves.
ParamScoreFn = Callable[[Any, Array, Array], Array]

# Stage ids folded into the per-example keys, so that no two stages share a random stream.
# Below this many dimensions per example the per-example Langevin rule's bias (2/d) exceeds 2%.
MIN_LANGEVIN_DIM = 100
# The steps that take sqrt(1 - beta_i) of the DDPM chain (NaN once beta_i >= 1), and for which
# SDEs: the predictors ... and the correctors (their step size has alpha = 1 - beta_i under a sqrt).
CHAIN_PREDICTORS = {'reverse_diffusion': (VPSDE,), 'ancestral_sampling': (VPSDE,)}
CHAIN_CORRECTORS = {name: (VPSDE, SubVPSDE) for name in ('langevin', 'langevin_batch', 'ald')}


def check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Returns ``shape`` as a tuple of ints after checking it is ``(B, ...)`` with ``B > 0``."""
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or shape[0] <= 0 or min(shape) <= 0:
    raise ValueError(f'shape={shape} must be (batch, ...) with a positive batch size and '
                     'positive sizes, at least 2 axes.')
  return shape


def lookup(table: Mapping[str, Callable], name: str, what: str) -> Callable:
  """``table[name]``, or a ValueError that names the bad value and the valid choices.

  Args:
    table: name -> factory (e.g. :data:`PREDICTORS`).
    name: the key to look up.
    what: the option's name for the message, e.g. ``'predictor'`` or ``'sampling.method'``.

  Returns:
    ``table[name]``.

  Raises:
    ValueError: if ``name`` is not in ``table``.
  """
  if name not in table:
    raise ValueError(f'{what}={name!r} is not known; expected one of {sorted(table)}.')
  return table[name]


def option_problems(sde: SDE, predictor: str, corrector: str, snr: float, n_steps: int,
                    probability_flow: bool, where: str = '') -> list[str]:
  """What is wrong with these options of :func:`get_pc_sampler`, one line each, found by the
  factories of the predictor and the corrector (which build nothing that runs).

  Args:
    sde, predictor, corrector, snr, n_steps, probability_flow: as in :func:`get_pc_sampler`.
    where: the options' section in a config (``'sampling'``), named in the messages.
  """
  prefix = f'{where}.' if where else ''
  problems = []
  for table, name, what, args in ((PREDICTORS, predictor, 'predictor', (sde, probability_flow)),
                                  (CORRECTORS, corrector, 'corrector', (sde, snr, n_steps))):
    try:
      make = lookup(table, name, prefix + what)
    except ValueError as e:
      problems.append(str(e))
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the sampler's factory warns again when it is built
        make(*args)
    except (ValueError, TypeError) as e:
      problems.append(f'{where or what}: {e}')
  if predictor == 'none' and corrector == 'none':
    problems.append(f"{prefix}predictor='none' with {prefix}corrector='none' never evaluates "
                    'the score; expected at least one of them.')
  return problems


def chain_users(sde: SDE, predictor: str, corrector: str, where: str = '') -> list[str]:
  """The steps among ``predictor`` and ``corrector`` that take ``sqrt(1 - beta_i)`` of the DDPM
  chain of ``sde`` (:data:`CHAIN_PREDICTORS`, :data:`CHAIN_CORRECTORS`), described as
  ``"sampling.predictor='ancestral_sampling'"`` (``where='sampling'``)."""
  prefix = f'{where}.' if where else ''
  return [f'{prefix}{what}={name!r}' for what, name, table in (
      ('predictor', predictor, CHAIN_PREDICTORS), ('corrector', corrector, CHAIN_CORRECTORS))
          if isinstance(sde, table.get(name, ()))]


def prior_sample(sde: SDE, keys: Array, shape: tuple[int, ...]) -> Array:
  """Draws ``x_T ~ p_T`` of ``shape``, example i from ``fold_in(keys[i], PRIOR)``.

  Args:
    sde: the forward SDE; its ``prior_sampling`` draws each example.
    keys: per-example keys ``k_i`` (:func:`sde_jax.rng.per_example_keys`), shape (B,).
    shape: ``(B, ...)``, the batch shape; each example has shape ``shape[1:]``.

  Returns:
    Prior samples in model space, shape ``shape`` (float32).
  """
  keys = rng.fold_in_all(keys, rng.PRIOR)
  return jax.vmap(lambda k: sde.prior_sampling(k, shape[1:]))(keys)


def pc_steps(sde: SDE, shape: tuple[int, ...], predictor: str, corrector: str, snr: float,
             n_steps: int, probability_flow: bool):
  """The checked ``shape`` and the predictor and corrector of a PC sampler (this one and the
  conditional ones of :mod:`sde_jax.controllable`); warns about the per-example Langevin rule on
  low-dimensional data, at the sampler factory's caller.

  Args:
    sde, shape, predictor, corrector, snr, n_steps, probability_flow: as in
      :func:`get_pc_sampler`.

  Returns:
    ``(shape, predictor, corrector)``: ``shape`` as a tuple of ints and the
    :class:`~sde_jax.sampling.predictors.SamplerStep` of each (update and score evaluations).

  Raises:
    ValueError: for unknown names, a predictor undefined for ``sde``, no predictor and no
      corrector, or a bad shape.
  """
  shape = check_shape(shape)
  pred = lookup(PREDICTORS, predictor, 'predictor')(sde, probability_flow)
  corr = lookup(CORRECTORS, corrector, 'corrector')(sde, snr, n_steps)
  dim = int(np.prod(shape[1:]))
  if corrector == 'langevin' and dim < MIN_LANGEVIN_DIM:
    warnings.warn(
        f"corrector='langevin' takes its step size from each example's own norms, which biases "
        f'the samples by about 2/d = {2 / dim:.2g} in relative variance for d = {dim} dimensions '
        f"(and far more for d <= 8); use corrector='langevin_batch' (the original's batch-"
        f"averaged rule), 'ald' or 'none' for low-dimensional data.", stacklevel=3)
  if pred.evals + corr.evals == 0:
    raise ValueError("predictor='none' with corrector='none' never evaluates the score and "
                     'returns the prior; choose at least one.')
  return shape, pred, corr


def get_pc_sampler(sde: SDE, shape: tuple[int, ...], predictor: str = 'reverse_diffusion',
                   corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                   probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3):
  """Builds a predictor-corrector sampler.

  From ``x ~ p_T`` and for each ``t`` of ``linspace(T, eps, N)``: ``x <- corrector(x, t)``, then
  ``x <- predictor(x, t)``.

  Args:
    sde: the forward SDE; ``sde.N`` is the number of steps.
    shape: ``(B, ...)``, the shape of one batch of samples.
    predictor: a name in :data:`PREDICTORS`.
    corrector: a name in :data:`CORRECTORS`.
    snr: signal-to-noise ratio of the Langevin correctors.
    n_steps: corrector steps per time step.
    probability_flow: predict with the probability-flow ODE instead of the reverse SDE.
    denoise: return ``x_mean`` of the last step (the last update without its noise).
    eps: the last time of the grid (the reverse process stops at eps, not 0).

  Returns:
    ``sampler(key, score_fn, params, first_index=0) -> (x, nfe)``: ``score_fn(params, x, t)``
    is jitted as a static argument, so new params or keys reuse the compiled program. ``x`` is in
    model space (no inverse scaler); ``nfe = N (predictor evals + n_steps corrector evals)``
    is the number of score evaluations spent, a Python int. An example whose state goes
    non-finite makes the call raise a FloatingPointError naming it and the time of the step
    that met it (:mod:`sde_jax.nonfinite`); ``sampler.reporting`` returns ``(x, nfe, report)``
    instead.

  Raises:
    ValueError: for unknown names, a predictor undefined for ``sde``, no predictor and no
      corrector, or a bad shape.
  """
  shape, pred, corr = pc_steps(sde, shape, predictor, corrector, snr, n_steps, probability_flow)
  nfe = sde.N * (pred.evals + corr.evals)

  def sample(key, score_fn, params, first_index):
    score = functools.partial(score_fn, params)
    keys = rng.per_example_keys(key, shape[0], first_index)
    corr_keys = rng.fold_in_all(keys, rng.CORRECTOR)
    pred_keys = rng.fold_in_all(keys, rng.PREDICTOR)
    times = jnp.linspace(sde.T, eps, sde.N)

    def step(carry, n):
      x, _ = carry
      t = jnp.full(shape[:1], times[n])
      x, _ = corr.update(score, rng.fold_in_all(corr_keys, n), x, t)
      return pred.update(score, rng.fold_in_all(pred_keys, n), x, t), None

    x = prior_sample(sde, keys, shape)
    (x, x_mean), _, seen = nonfinite.scan(step, (x, x), jnp.arange(sde.N), lambda n: times[n])
    out = x_mean if denoise else x
    return out, nonfinite.watch_report(seen, out, eps)

  compiled = jax.jit(sample, static_argnums=1)

  def run(key: Array, score_fn: ParamScoreFn, params: Any, first_index: int | Array = 0):
    return compiled(key, score_fn, params, first_index)

  return nonfinite.fixed_steps(run, nfe, 'pc', shape[0])
