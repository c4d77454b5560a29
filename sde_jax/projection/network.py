"""The projection network ``T(x, t)``: a network of the project's families, built from the
score model's config section with ``config.projection`` on top, and its output scale.

``T = c(t) net(x, label(t))`` with the continuous-time labels of the score networks (``999 t``
for VP and sub-VP, ``sigma(t)`` for VE) and ``c(t) = s(t) / (1 + lambda(t))``, ``s(t)`` the
perturbation kernel's std and ``lambda(t) = sqrt(g(t)^2 / 2) / 2`` the loss's weight on ``||T||^2``:
the minimiser of the loss is ``(E[m(t - dt) x_0 | x_pred] - x_pred) / (1 + lambda)``, whose
size is about ``s(t) / (1 + lambda)`` at every t (VE: up to 50 / 74), so the network's own
output stays of order 1 for every SDE.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import logging

from sde_jax import checkpoints, models, parallel
from sde_jax import sde as sde_lib
from sde_jax.sde import batch_mul

Array = jax.Array
SUBDIR = 'projection'  # its folder under a workdir, beside the score model's checkpoints
# Families whose time conditioning is not a continuous label.
UNSUPPORTED = {'ncsn': 'its noise embedding is a table of the N discrete levels'}


def projection_config(config):
  """A copy of ``config`` whose ``model`` section is the projection network's.

  ``config.model`` (the score network) with: ``name`` = ``projection.name`` (None: the score
  network's), ``nf`` (U-Nets, RefineNets) or ``features`` (MLP) times ``projection.width``,
  ``scale_by_sigma=False`` (the scale is :func:`output_scale`), then the fields of
  ``projection.model`` (explicit overrides, e.g. a whole other family's fields).
  """
  p = config.projection
  out = config.copy_and_resolve_references()
  with out.unlocked():
    m = out.model
    if p.get('name'):
      m.name = p.name
    width = float(p.width)
    if 'nf' in m:
      m.nf = max(1, int(round(m.nf * width)))
    if 'features' in m:
      m.features = tuple(max(1, int(round(f * width))) for f in m.features)
    m.scale_by_sigma = False
    m.update(p.get('model', {}))
  return out


def get_projection_model(config):
  """The projection network's module (:func:`projection_config`).

  Raises:
    ValueError: for an unknown or unsupported ``projection.name``, or missing fields.
  """
  name = config.projection.get('name') or config.model.name
  if name in UNSUPPORTED:
    raise ValueError(f'projection.name={name!r} cannot be a projection network: '
                     f'{UNSUPPORTED[name]}; expected one of '
                     f'{sorted(set(models.MODELS) - set(UNSUPPORTED))}.')
  try:
    return models.get_model(projection_config(config))
  except ValueError as e:
    raise ValueError(f'projection: {e} (projection.model sets the fields of another '
                     'family)') from e


def output_scale(sde: sde_lib.SDE, t: Array) -> tuple[Array, Array]:
  """``(label(t), c(t))``: the network's time label and its output's scale (module docstring)."""
  zeros = jnp.zeros_like(t)
  _, std = sde.marginal_prob(zeros, t)
  _, g = sde.sde(zeros, t)
  label = std if isinstance(sde, sde_lib.VESDE) else 999 * t
  return label, std / (1 + jnp.sqrt(g**2 / 2) / 2)


def get_projection_fn(sde: sde_lib.SDE, model) -> Callable[[Any, Array, Array], Array]:
  """``projection_fn(params, x, t) = c(t) model(x, label(t))`` (evaluation mode)."""

  def projection_fn(params, x, t):
    label, scale = output_scale(sde, t)
    return batch_mul(scale, model.apply({'params': params}, x, label, train=False))

  return projection_fn


@dataclasses.dataclass(frozen=True)
class Projection:
  """A trained projection network: ``fn(params, x, t)``, its EMA ``params`` and their ``step``,
  and the step of the score checkpoint it was trained against (None if its checkpoint does not
  say)."""

  fn: Callable
  params: Any
  step: int
  score_step: int | None = None


def restore_projection(config, workdir: str, score_model, mesh=None) -> Projection:
  """The projection network of ``workdir/projection`` (``sde-jax train-projection``).

  Args:
    config: the job's config (``projection``, the score network's fields).
    workdir: the job's directory.
    score_model: the config's :class:`~sde_jax.score_model.ScoreModel` (SDE, image shape).
    mesh: shard the params over it as training does; None: one device.

  Raises:
    FileNotFoundError: naming the folder, if it holds no checkpoint.
  """
  model = get_projection_model(config)
  abstract = _abstract_params(model, score_model)
  directory = os.path.join(workdir, SUBDIR)
  try:
    params, step = checkpoints.restore_ema(directory, abstract, mesh)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"sampling.method='predict_project' needs the projection network's checkpoints in "
        f'{os.path.join(directory, "checkpoints")} ({e}); train it first: sde-jax '
        f'train-projection --config ... --workdir {workdir}') from e
  manager = checkpoints.checkpoint_manager(directory)
  try:
    score_step = checkpoints.restore_meta(manager, step).get('score_step')
  finally:
    manager.close()
  return Projection(get_projection_fn(score_model.sde, model), params, step,
                    None if score_step is None else int(score_step))


def _abstract_params(model, score_model):
  return jax.eval_shape(lambda key: models.init_params(
      model, key, (1, *score_model.image_shape)), jax.random.key(0))


def abstract_projection(config, score_model, mesh) -> Projection:
  """The projection network of ``config`` with ``ShapeDtypeStruct`` params placed on ``mesh``
  as :func:`restore_projection` places them: what ``sde-jax plan`` compiles the
  Predict-Project sampler with (no checkpoint read, nothing computed)."""
  model = get_projection_model(config)
  abstract = _abstract_params(model, score_model)
  params = parallel.with_shardings(abstract, parallel.sharded_like(abstract, mesh))
  return Projection(get_projection_fn(score_model.sde, model), params, step=0)


def check_pairing(projection: Projection, score_step: int, workdir: str,
                  allow_mismatch: bool = False) -> None:
  """Refuses to pair ``projection`` with the score checkpoint of ``score_step`` unless it was
  trained against that very checkpoint (the loss closes over one score network's parameters).

  Args:
    projection: from :func:`restore_projection`.
    score_step: the step of the score checkpoint the sampler will use.
    workdir: the job's directory, for the message.
    allow_mismatch: pair them anyway (``--allow_projection_mismatch``), with a warning.

  Raises:
    ValueError: naming both steps, if they differ (or the projection records none).
  """
  if projection.score_step == score_step:
    return
  trained = ('records no score step' if projection.score_step is None else
             f'was trained against the score checkpoint of step {projection.score_step}')
  message = (f'The projection network of {os.path.join(workdir, SUBDIR)} (step '
             f'{projection.step}) {trained}, but the score checkpoint used is step {score_step}')
  if allow_mismatch:
    logging.warning('%s; pairing them anyway (--allow_projection_mismatch).', message)
    return
  raise ValueError(f'{message}. Train a projection against that checkpoint (move '
                   f'{os.path.join(workdir, SUBDIR)} aside, then sde-jax train-projection), or '
                   'pair them on purpose with --allow_projection_mismatch.')


def projection_if_used(config, workdir: str, score_model, mesh=None) -> Projection | None:
  """:func:`restore_projection` if ``config.sampling.method`` is ``'predict_project'``, else
  None: what the sample and eval jobs pass to
  :func:`sde_jax.sampling.sharded.sharded_sampler`."""
  if str(config.sampling.method).lower() != 'predict_project':
    return None
  return restore_projection(config, workdir, score_model, mesh)
