"""The compiled programs of one evaluation job, built on first use and shared by every
checkpoint."""

from __future__ import annotations

import functools

import jax

from sde_jax import likelihood, parallel, sampling
from sde_jax.evaluate.settings import EvalSettings
from sde_jax.sampling import sharded
from sde_jax.score_model import ScoreModel


class EvalPrograms:
  """The jitted programs an evaluation job runs on every checkpoint, with what they were built
  for: the per-example eval loss (:attr:`loss`), uniform dequantization and the bits/dim
  likelihood (:attr:`dequantize`, :attr:`likelihood`), and one sampling round (:attr:`draw`).

  Each is compiled on first use, for global batches of ``batch`` split over ``mesh``; the
  parameters are an argument, never a constant, so one program serves every checkpoint.
  """

  def __init__(self, config, score_model: ScoreModel, settings: EvalSettings, batch: int,
               mesh, projection=None):
    self.config, self.score_model, self.settings, self.batch, self.mesh = (
        config, score_model, settings, batch, mesh)
    self.projection = projection  # Predict-Project's network (sde_jax.projection), or None
    self.method = config.sampling.method.lower()
    self.sampler_name = sampling.describe_from_config(config)

  @functools.cached_property
  def loss(self):
    """``(params, key, images) -> per-example losses``, sharded like the batch."""
    loss_fn = self.score_model.loss_fn(self.config, train=False)
    return jax.jit(lambda params, key, images: loss_fn(params, key, images)[1]['per_example'],
                   out_shardings=parallel.batch_sharding(self.mesh))

  @functools.cached_property
  def dequantize(self):
    """``(key, images01, first_index) -> model-space data``, uniformly dequantized."""
    return jax.jit(lambda key, x, first: self.score_model.scaler(
        likelihood.uniform_dequantize(key, x, first)))

  @functools.cached_property
  def likelihood(self):
    """``likelihood.get_likelihood_fn`` with the ``eval.bpd_*`` solver and tolerances."""
    s = self.settings
    return likelihood.get_likelihood_fn(self.score_model.sde, self.score_model.inverse_scaler,
                                        rtol=s.bpd_rtol, atol=s.bpd_atol, solver=s.bpd_solver)

  @functools.cached_property
  def draw(self):
    """``(key, params, first_index) -> (images in [0, 1], nfe)``: one round, split over devices,
    with the config's sampler; image i from ``fold_in(key, first_index + i)``
    (:func:`sde_jax.sampling.sharded.sharded_sampler`)."""
    return sharded.sharded_sampler(self.config, self.score_model, self.batch, self.mesh,
                                   self.projection)
