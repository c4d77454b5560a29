"""A config's sampler compiled over a device mesh: what the sampling, training-snapshot and
evaluation jobs draw images with."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_jax import nonfinite, parallel
from sde_jax.sampling import get_sampler_from_config


def sharded_program(config, score_model, batch: int, mesh, projection_fn=None):
  """The jitted program of :func:`sharded_sampler`, before its report is checked on the host:
  what it runs, and what ``sde-jax plan`` compiles ahead of time (:func:`abstract_arguments`).

  Args:
    config: a config with ``sampling`` (and the SDE's fields).
    score_model: a :class:`sde_jax.score_model.ScoreModel`.
    batch: the global batch size (a multiple of ``mesh.size``).
    mesh: the device mesh.
    projection_fn: for ``sampling.method='predict_project'``, the projection network's
      ``fn(params, x, t)``; ``params`` is then ``(score params, projection params)``.

  Returns:
    ``draw(key, params, first_index) -> (images in [0, 1], nfe, report)``, jitted, the images
    split over ``mesh``; ``report`` is a :class:`~sde_jax.nonfinite.Report`.
  """
  name = config.sampling.method.lower()
  shape = (batch, *score_model.image_shape)
  if name == 'predict_project':
    if projection_fn is None:
      raise ValueError("sampling.method='predict_project' needs the projection network "
                       '(sde_jax.projection.restore_projection; sde-jax train-projection).')
    sampler = get_sampler_from_config(config, score_model.sde, shape, projection_fn=projection_fn)
  else:
    sampler = get_sampler_from_config(config, score_model.sde, shape)
  # Predict-Project's two networks' params ride in `params`: (score's, projection's).
  unpack = (lambda params: params) if name == 'predict_project' else (lambda params: (params,))

  def draw(key, params, first_index):
    # The sampler's non-finite report leaves the program and is raised on the host, on every
    # process alike (a raise inside a sharded program would leave the other devices waiting).
    x, nfe, report = sampler.reporting(key, score_model.score_fn, *unpack(params),
                                       first_index=first_index)
    return score_model.inverse_scaler(x), jnp.asarray(nfe), report

  replicated = parallel.replicated(mesh)
  return jax.jit(draw, out_shardings=(parallel.batch_sharding(mesh), replicated, replicated))


def sharded_sampler(config, score_model, batch: int, mesh, projection=None):
  """The sampler the config names, jitted for a global batch split over ``mesh``.

  Args:
    config: a config with ``sampling`` (and the SDE's fields).
    score_model: a :class:`sde_jax.score_model.ScoreModel`.
    batch: the global batch size (a multiple of ``mesh.size``).
    mesh: the device mesh.
    projection: for ``sampling.method='predict_project'``, the trained projection network
      (:func:`sde_jax.projection.restore_projection`); its params are an argument of the
      program, as the score's are.

  Returns:
    ``draw(key, params, first_index) -> (images in [0, 1], nfe)``: example i uses
    ``fold_in(key, first_index + i)``; ``nfe`` (replicated) is the sampler's score evaluations
    (keeping it keeps the adaptive solver's did-not-finish check, which rides on it, in the
    program). A non-finite state raises a FloatingPointError naming the examples (indices
    within the call) and the time, on every process alike.
  """
  name = config.sampling.method.lower()
  compiled = sharded_program(config, score_model, batch, mesh,
                             None if projection is None else projection.fn)
  extra = (projection.params,) if name == 'predict_project' else ()

  def checked(key, params, first_index):
    images, nfe, report = compiled(key, (params, *extra) if extra else params, first_index)
    nonfinite.raise_if_any(report, name, batch)
    return images, nfe

  return checked


def abstract_arguments(params, mesh) -> tuple:
  """``(key, params, first_index)`` of :func:`sharded_program` as ``ShapeDtypeStruct`` leaves
  placed as the jobs place them, for compiling ahead of time.

  Args:
    params: the abstract parameters, with their shardings (those of
      :func:`sde_jax.checkpoints.restore_ema`: ``parallel.sharded_like``), or the pair of the
      score's and the projection's.
    mesh: the device mesh.
  """
  replicated = parallel.replicated(mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  return (jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated), params,
          jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated, weak_type=True))


def sample_batch_size(config, num_samples: int, mesh) -> int:
  """``eval.batch_size`` (at most ``num_samples``) rounded up to a multiple of the devices.

  Args:
    config: a config with ``eval.batch_size``.
    num_samples: the number of samples the job draws in all.
    mesh: the device mesh; its ``size`` is the device count.

  Returns:
    The global batch size of one sampler call, a positive multiple of ``mesh.size``.
  """
  batch = min(int(config.eval.batch_size), num_samples)
  return -(-batch // mesh.size) * mesh.size
