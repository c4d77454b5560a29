"""Score-function label conventions (those of the original code) and the MLP."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax import models
from sde_jax import sde as sde_lib
from tests import gaussian


class Echo(nn.Module):
  """Returns its labels broadcast to the input shape, so the score exposes the convention."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.broadcast_to(labels.astype(jnp.float32).reshape(-1, 1), x.shape)


T = np.array([1e-3, 0.25, 0.5, 1.0])
X = jnp.zeros((4, 3))


def _score(sde, continuous):
  return np.asarray(models.get_score_fn(sde, Echo(), continuous)({}, X, jnp.asarray(T)))[:, 0]


def test_vp_continuous_labels():
  _, std = gaussian.mean_std('vpsde', T)
  np.testing.assert_allclose(_score(sde_lib.VPSDE(), True), -999 * T / std, rtol=1e-4)


def test_subvp_labels_are_continuous_even_when_discrete():
  _, std = gaussian.mean_std('subvpsde', T)
  for continuous in (True, False):
    np.testing.assert_allclose(_score(sde_lib.SubVPSDE(), continuous), -999 * T / std, rtol=1e-4)


def test_vp_discrete_labels():
  abar = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
  std = np.sqrt(1 - abar[np.floor(T * 999).astype(int)])
  np.testing.assert_allclose(_score(sde_lib.VPSDE(), False), -999 * T / std, rtol=1e-4)


def test_ve_labels():
  _, sigma = gaussian.mean_std('vesde', T)
  np.testing.assert_allclose(_score(sde_lib.VESDE(), True), sigma, rtol=1e-5)
  np.testing.assert_array_equal(_score(sde_lib.VESDE(), False), np.round((1 - T) * 999))


@pytest.mark.parametrize('embedding,scale_by_sigma', [('positional', False), ('fourier', True)])
def test_mlp_shapes(embedding, scale_by_sigma):
  model = models.MLP(features=(16, 16), embedding_type=embedding, embedding_dim=8,
                     scale_by_sigma=scale_by_sigma)
  params = models.init_params(model, jax.random.key(0), (1, 3))
  out = jax.jit(model.apply)({'params': params}, jnp.ones((5, 3)), jnp.full((5,), 0.5))
  chex.assert_shape(out, (5, 3))
  chex.assert_tree_all_finite(out)


def test_unknown_model_and_embedding_are_rejected():
  import ml_collections
  with pytest.raises(ValueError, match="'unet9'"):
    models.get_model(ml_collections.ConfigDict({'model': {'name': 'unet9'}}))
  model = models.MLP(embedding_type='learned')
  with pytest.raises(ValueError, match="'learned'"):
    models.init_params(model, jax.random.key(0), (1, 2))
