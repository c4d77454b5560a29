"""The projection network of Predict-Project sampling (:mod:`sde_jax.sampling.predict_project`):
its network and output scale (:mod:`.network`) and its training loss (:mod:`.loss`); the
``sde-jax train-projection`` job is :mod:`sde_jax.jobs.train_projection`. See
docs/predict_project.md."""

from sde_jax.projection.loss import projection_loss_fn, step_times
from sde_jax.projection.network import (SUBDIR, Projection, abstract_projection, check_pairing,
                                        get_projection_fn, get_projection_model, output_scale,
                                        projection_config, projection_if_used,
                                        restore_projection)

__all__ = ['SUBDIR', 'Projection', 'abstract_projection', 'check_pairing', 'get_projection_fn',
           'get_projection_model',
           'output_scale', 'projection_config', 'projection_if_used', 'projection_loss_fn',
           'restore_projection', 'step_times']
