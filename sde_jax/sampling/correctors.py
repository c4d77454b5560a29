"""Correctors of the predictor-corrector sampler: Langevin MCMC steps at a fixed time t.

A corrector factory takes ``(sde, snr, n_steps)`` and returns a :class:`Corrector`: a pure
``update(score_fn, keys, x, t) -> (x, x_mean)`` that runs ``n_steps`` steps of

  ``x_mean = x + eps score(x, t)``,  ``x = x_mean + sqrt(2 eps) z``,

and the number of score evaluations one update spends. Conventions as in
:mod:`sde_jax.sampling.predictors`. The factors ``alpha = sde.alpha(t)`` (``1 - beta_i`` for VP
and sub-VP, 1 for VE) follow the original code.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_jax import rng
from sde_jax.sampling.predictors import SamplerStep, Update
from sde_jax.sde import SDE, batch_mul

Array = jax.Array
# (x, t, grad, noise) -> per-example step size eps, shape (B,)
StepSize = Callable[[Array, Array, Array, Array], Array]
# A corrector: ``update(score_fn, keys, x, t) -> (x, x_mean)`` and its score evaluations.
Corrector = SamplerStep


def _norm(x: Array) -> Array:
  """Euclidean norm of each example, shape (B,)."""
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


def _langevin_chain(step_size: StepSize, n_steps: int) -> Update:
  """``n_steps`` Langevin steps; step j of example i draws noise from ``fold_in(keys[i], j)``."""

  def update(score_fn, keys, x, t):
    def step(carry, j):
      x, _ = carry
      grad = score_fn(x, t)
      noise = rng.normal(rng.fold_in_all(keys, j), x.shape, x.dtype)
      eps = step_size(x, t, grad, noise)
      x_mean = x + batch_mul(eps, grad)
      return (x_mean + batch_mul(jnp.sqrt(2.0 * eps), noise), x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), jnp.arange(n_steps))
    return x, x_mean

  return update


def _check(name: str, snr: float, n_steps: int) -> None:
  problems = []
  if n_steps < 1:
    problems.append(f"corrector={name!r} needs n_steps >= 1, got {n_steps}; use "
                    "corrector='none' for no correction.")
  if snr <= 0:
    problems.append(f'corrector={name!r} needs snr > 0, got {snr}.')
  if problems:
    raise ValueError(' '.join(problems))


def _langevin_corrector(name: str, snr: float, n_steps: int, step_size: StepSize) -> Corrector:
  """The corrector called ``name``: ``n_steps`` Langevin steps of size ``step_size``, after
  checking ``snr`` and ``n_steps``."""
  _check(name, snr, n_steps)
  return Corrector(_langevin_chain(step_size, n_steps), evals=n_steps)


def langevin(sde: SDE, snr: float, n_steps: int) -> Corrector:
  """Langevin corrector with the step set by a signal-to-noise ratio (Song et al., Alg. 4/5).

  ``eps = 2 alpha (snr ||z|| / ||score(x, t)||)^2`` with the norms taken per example, so that a
  sample does not depend on the rest of its batch. (The original averages both norms over the
  batch and over devices before dividing.)

  A step size that depends on the example's own state makes the chain stationary for
  ``p(x) ||score(x)||^2`` instead of ``p(x)``: a relative variance bias of about ``2 / d`` in
  d dimensions, negligible for images but ruinous for d = 2 (``||z|| / ||score||`` is then
  heavy-tailed). Use ``langevin_batch``, ``ald`` or no corrector for low-dimensional data.

  Args:
    sde: the forward SDE; gives ``alpha(t)``.
    snr: the signal-to-noise ratio of the step-size rule above, > 0.
    n_steps: Langevin steps per update, >= 1; step j of example i draws its noise from
      ``fold_in(keys[i], j)``.

  Returns:
    A :class:`Corrector` with ``evals = n_steps``; its ``update(score_fn, keys, x, t)`` returns
    ``(x, x_mean)`` of the last step, both of the shape of ``x``.

  Raises:
    ValueError: if ``n_steps < 1`` or ``snr <= 0``.
  """

  def step_size(x, t, grad, noise):
    return 2.0 * sde.alpha(t) * (snr * _norm(noise) / _norm(grad))**2

  return _langevin_corrector('langevin', snr, n_steps, step_size)


def langevin_batch(sde: SDE, snr: float, n_steps: int) -> Corrector:
  """The original's Langevin corrector: both norms averaged over the whole batch.

  ``eps = 2 alpha (snr mean_b ||z_b|| / mean_b ||score_b||)^2``, one step size for the batch. Under
  ``jit`` over a sharded batch the mean is global, as the original's ``pmean`` over devices. It
  reproduces the paper's sampler exactly and is unbiased in low dimension, but a sample then
  depends on the other samples of its batch (and so on the batch size).

  Args, Returns, Raises: as :func:`langevin` (the same contract, another step-size rule).
  """

  def step_size(x, t, grad, noise):
    ratio = jnp.mean(_norm(noise)) / jnp.mean(_norm(grad))
    return 2.0 * sde.alpha(t) * (snr * ratio)**2

  return _langevin_corrector('langevin_batch', snr, n_steps, step_size)


def ald(sde: SDE, snr: float, n_steps: int) -> Corrector:
  """Annealed Langevin dynamics of SMLD: ``eps = 2 alpha (snr sigma(t))^2``.

  ``sigma(t)`` is the std of the perturbation kernel ``p_{0t}``; the step does not look at x.

  Args, Returns, Raises: as :func:`langevin`; ``sde`` also gives ``sigma(t)`` (the std of
  ``marginal_prob``).
  """

  def step_size(x, t, grad, noise):
    std = sde.marginal_prob(x, t)[1]
    return 2.0 * sde.alpha(t) * (snr * std)**2

  return _langevin_corrector('ald', snr, n_steps, step_size)


def none(sde: SDE, snr: float, n_steps: int) -> Corrector:
  """The identity: ``(x, x)``, no score evaluation (predictor-only sampling).

  Args:
    sde: ignored (the signature of every corrector factory).
    snr: ignored.
    n_steps: ignored.

  Returns:
    A :class:`Corrector` whose update returns ``(x, x)``, with ``evals = 0``.
  """
  del sde, snr, n_steps
  return Corrector(lambda score_fn, keys, x, t: (x, x), evals=0)


CORRECTORS = {'langevin': langevin, 'langevin_batch': langevin_batch, 'ald': ald, 'none': none}
