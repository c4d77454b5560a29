"""The projection network's training loss (Ghimire et al., 2023), with the score network frozen:

  ``E_{N, i, x_0, z} ||x_pred + T(x_pred, t) - m(t - dt) x_0||^2 + lambda(t) ||T(x_pred, t)||^2``

with ``lambda(t) = sqrt(g(t)^2 / 2) / 2``, ``t = t_i`` a time of the sampler's grid
``linspace(T, eps, N)``, ``dt = T / N``, ``x_t = m(t) x_0 + s(t) z`` drawn exactly from
``p(x_t | x_0)`` and ``x_pred`` the predict step from it with the frozen score
(:func:`sde_jax.sampling.predict_project.predict`). ``m(t - dt)`` is taken at ``max(t - dt, 0)``:
the last step (from eps) aims at the data. N is drawn per example from a set of step counts, so
that one network serves several samplers. Each example's loss is divided by ``c(t)^2``
(:func:`sde_jax.projection.output_scale`): the loss in the network's output units. At each t the
minimiser is unchanged by that weight, ``(E[m(t - dt) x_0 | x_pred] - x_pred) / (1 + lambda)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sde_jax import rng
from sde_jax import sde as sde_lib
from sde_jax.projection.network import output_scale
from sde_jax.sampling.predict_project import predict
from sde_jax.sde import batch_mul, sum_except_batch

Array = jax.Array


def step_times(key: Array, batch: int, n_steps: tuple[int, ...], t_end: float,
               eps: float) -> tuple[Array, Array]:
  """Per example: ``N`` uniform over ``n_steps``, ``i`` uniform in ``[0, N)``, and
  ``(t_i, dt) = (linspace(t_end, eps, N)[i], t_end / N)``, each of shape (batch,)."""
  k_n, k_i = jax.random.split(key)
  counts = jnp.asarray(n_steps, jnp.int32)[jax.random.randint(k_n, (batch,), 0, len(n_steps))]
  i = jnp.floor(jax.random.uniform(k_i, (batch,)) * counts).astype(jnp.int32)
  i = jnp.minimum(i, counts - 1)
  gap = (t_end - eps) / jnp.maximum(counts - 1, 1)
  return t_end - i * gap, t_end / counts


def projection_loss_fn(sde: sde_lib.SDE, score_fn, score_params, projection_fn, scaler,
                       n_steps: tuple[int, ...], eps: float):
  """The loss of this module's docstring.

  Args:
    sde: the forward SDE.
    score_fn: the frozen score network, ``(params, x, t) -> score``.
    score_params: its parameters (constants of the training program: one score checkpoint
      per job).
    projection_fn: ``(params, x, t) -> T(x, t)`` (:func:`sde_jax.projection.get_projection_fn`).
    scaler: [0, 1] data -> model space.
    n_steps: the step counts N trained for, drawn uniformly per example.
    eps: the sampler's last time.

  Returns:
    ``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch = {'image': [0, 1] data}``;
    ``aux`` holds the ``per_example`` losses, ``t`` and ``dt``.
  """
  score = functools.partial(score_fn, score_params)

  def loss_fn(params, key, batch):
    x0 = scaler(batch['image'])
    b = x0.shape[0]
    k_t, k_z = jax.random.split(key)
    t, dt = step_times(k_t, b, n_steps, sde.T, eps)
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + batch_mul(std, rng.normal(rng.per_example_keys(k_z, b), x0.shape))
    x_pred, g = predict(sde, score, x_t, t, dt)
    x_pred = jax.lax.stop_gradient(x_pred)
    target, _ = sde.marginal_prob(x0, jnp.maximum(t - dt, 0.0))
    proj = projection_fn(params, x_pred, t)
    _, scale = output_scale(sde, t)
    dim = x0[0].size
    per_example = (sum_except_batch((x_pred + proj - target)**2)
                   + jnp.sqrt(g**2 / 2) / 2 * sum_except_batch(proj**2)) / (dim * scale**2)
    return jnp.mean(per_example), {'per_example': per_example, 't': t, 'dt': dt}

  return loss_fn
