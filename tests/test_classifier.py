"""The noise-conditional Wide-ResNet classifier: shapes, the original's parameter layout and
count, its outputs against the original network's, and time conditioning; and the classifier's
training job on the digits (tiny network, a few steps; resuming is the score trainer's
``restore_or_init``, tested in test_train.py)."""

import json
import os
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from sde_jax import controllable
from sde_jax.controllable import classifier_loss
from sde_jax.jobs import train_classifier
from sde_jax import sde as sde_lib
from sde_jax.models import classifier as classifier_lib
from tests import helpers
from tests.helpers import load_config

DATA = pathlib.Path(__file__).parent / 'data'
# The network of tests/data/wrn_original_tiny.json (the original's embedding size is fixed: 128).
TINY = {'blocks_per_group': 1, 'channel_multiplier': 1, 'num_classes': 10}


def reference_params(template):
  """Deterministic parameters for ``template``'s tree: N(0, 0.05^2) drawn leaf after leaf in
  sorted path order from ``default_rng(0)``; the fixture's generator used this function too."""
  flat = traverse_util.flatten_dict(jax.tree_util.tree_map(lambda a: a, template))
  gen = np.random.default_rng(0)
  values = {path: jnp.asarray(0.05 * gen.standard_normal(flat[path].shape), jnp.float32)
            for path in sorted(flat)}
  return traverse_util.unflatten_dict(values)


def reference_inputs():
  gen = np.random.default_rng(1)
  x = jnp.asarray(gen.standard_normal((3, 16, 16, 3)), jnp.float32)
  return x, jnp.array([0.02, 1.0, 30.0])


def _param_count(model, shape):
  abstract = jax.eval_shape(lambda k: model.init({'params': k}, jnp.zeros(shape),
                                                 jnp.ones(shape[:1])), jax.random.key(0))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(abstract['params']))


def test_wrn_28_10_has_the_originals_parameter_count():
  """38,913,242 parameters, as the original's WideResnet(4, 10, 10) on 32x32x3 (counted under
  current Flax): 36,220,634 in the WRN-28-10 body (zero-padded shortcuts: no 1x1 convolutions,
  hence less than the usual 36.5M) and 2,692,608 in the time embedding (with its 128 fixed
  Fourier frequencies) and the per-block projections."""
  assert _param_count(classifier_lib.WideResNet(), (1, 32, 32, 3)) == 38_913_242
  # The CIFAR-10 classifier config builds that network.
  config = load_config('ve/cifar10_ncsnpp_continuous_classifier.py')
  assert _param_count(classifier_lib.get_classifier(config), (1, 32, 32, 3)) == 38_913_242


def test_matches_the_original_network():
  model = classifier_lib.WideResNet(**TINY)
  x, sigmas = reference_inputs()
  params = reference_params(jax.eval_shape(lambda k: model.init({'params': k}, x, sigmas),
                                           jax.random.key(0))['params'])
  expected = np.asarray(json.loads((DATA / 'wrn_original_tiny.json').read_text())['logits'])
  np.testing.assert_allclose(jax.jit(model.apply)({'params': params}, x, sigmas), expected,
                             rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_parameter_names_are_the_originals():
  model = classifier_lib.WideResNet(blocks_per_group=2, channel_multiplier=1)
  params = jax.eval_shape(lambda k: model.init({'params': k}, jnp.zeros((1, 8, 8, 3)),
                                               jnp.ones(1)), jax.random.key(0))['params']
  assert sorted(params) == ['Dense_0', 'Dense_1', 'Dense_2', 'GaussianFourierProjection_0',
                            'WideResnetGroup_0', 'WideResnetGroup_1', 'WideResnetGroup_2',
                            'init_conv', 'pre-pool-bn']
  assert sorted(params['WideResnetGroup_0']['WideResnetBlock_0']) == [
      'Dense_0', 'bn_2', 'conv1', 'conv2', 'init_bn']
  assert sorted(params['WideResnetGroup_1']['WideResnetBlock_1']) == [
      'Dense_0', 'bn_2', 'conv1', 'conv2', 'init_bn']
  assert params['WideResnetGroup_1']['WideResnetBlock_0']['conv1']['kernel'].shape == (3, 3, 16,
                                                                                       32)


@pytest.fixture(scope='module')
def small():
  model = classifier_lib.WideResNet(blocks_per_group=1, channel_multiplier=1, num_classes=7,
                                embedding_size=16)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  params = jax.jit(model.init)({'params': jax.random.key(1)}, x, jnp.ones(2))['params']
  return model, params, x


def test_shapes_and_time_conditioning(small):
  model, params, x = small
  apply = jax.jit(lambda x, s: model.apply({'params': params}, x, s))
  low, high = apply(x, jnp.full(2, 0.05)), apply(x, jnp.full(2, 20.0))
  chex.assert_shape(low, (2, 7))
  assert np.all(np.isfinite(np.asarray(low)))
  assert np.abs(np.asarray(low - high)).max() > 1e-3
  # Examples are independent: one example's noise level does not move the other's logits.
  mixed = apply(x, jnp.array([0.05, 20.0]))
  chex.assert_trees_all_close(mixed, jnp.stack([low[0], high[1]]), atol=1e-5)


def test_per_image_standardisation(small):
  """Logits do not change when an image is scaled and shifted (std above the floor)."""
  model, params, x = small
  s = jnp.full(2, 0.3)
  apply = jax.jit(lambda x: model.apply({'params': params}, x, s))
  chex.assert_trees_all_close(apply(3.0 * x + 1.5), apply(x), rtol=1e-4, atol=1e-4)


def test_get_classifier_errors():
  with pytest.raises(ValueError, match='no `classifier` section'):
    classifier_lib.get_classifier(ml_collections.ConfigDict({'model': {}}))
  with pytest.raises(ValueError, match="'resnet'"):
    classifier_lib.get_classifier(ml_collections.ConfigDict({'classifier': {'name': 'resnet'}}))


# --- Training ------------------------------------------------------------------------------------

class _LevelEcho(classifier_lib.WideResNet):
  """Logits that are the noise level the network was fed (first logit) and zeros."""

  @nn.compact
  def __call__(self, x, noise_level, train=False):
    dummy = self.param('w', jax.nn.initializers.zeros, (1,))
    return jnp.zeros((x.shape[0], self.num_classes)).at[:, 0].set(noise_level) + dummy[0]


@pytest.mark.parametrize('sde', [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.SubVPSDE()])
def test_loss_feeds_the_sdes_noise_level(sde):
  """The classifier sees x_t of the SDE in use and its noise level s(t) / m(t), for VP too."""
  model = _LevelEcho(num_classes=3)
  loss_fn = classifier_loss.classifier_loss_fn(sde, model, lambda x: x, eps=1e-3)
  batch = {'image': jnp.zeros((4, 8, 8, 1)), 'label': jnp.arange(4) % 3}
  _, aux = loss_fn({'w': jnp.zeros(1)}, jax.random.key(0), batch)
  m, s = sde.marginal_prob(jnp.ones(4), aux['t'])
  np.testing.assert_allclose(aux['noise_level'], s / m, rtol=1e-6)
  assert np.all((aux['t'] >= 1e-3) & (aux['t'] <= 1.0))
  logits_0 = aux['noise_level']
  expected = -jax.nn.log_softmax(jnp.zeros((4, 3)).at[:, 0].set(logits_0))[jnp.arange(4),
                                                                            jnp.arange(4) % 3]
  np.testing.assert_allclose(aux['per_example'], expected, rtol=1e-5)


def tiny_config():
  """The digits classifier config shrunk by the test recipe: a WRN-10-1 trained 3 steps (one
  per call, saved at the end) on batches of 16 8x8 digits."""
  return helpers.tiny_config('digits/classifier.py',
                             classifier=dict(training=dict(batch_size=16)))


def test_train_classifier_saves_and_restores(tmp_path):
  config = tiny_config()
  state = train_classifier.train_classifier(config, str(tmp_path))
  directory = tmp_path / 'classifier'
  assert sorted(os.listdir(directory / 'checkpoints')) == ['3']
  report = json.loads((directory / 'accuracy.json').read_text())
  assert report['step'] == 3 and set(report['accuracy']) == {'t=0', 't=0.25', 't=0.5', 't=0.75',
                                                               't=1'}
  model, params, step = controllable.restore_classifier(config, str(tmp_path))
  assert step == 3 and isinstance(model, classifier_lib.WideResNet)
  chex.assert_trees_all_close(params, state.params_ema)
  assert int(state.step) == 3
  logit_fn = controllable.get_logit_fn(sde_lib.from_config(config), model)
  logits = logit_fn(params, jnp.zeros((2, 8, 8, 1)), jnp.array([0.1, 0.9]))
  chex.assert_shape(logits, (2, 10))


def test_restore_without_classifier_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='train-classifier'):
    controllable.restore_classifier(tiny_config(), str(tmp_path))


def test_resume_with_another_classifier_optimizer_is_refused(tmp_path):
  """train-classifier's resume goes through the same guard as train's (train.fit): a checkpoint
  saved with the tiny config, resumed with another classifier.optim.lr, stops before compiling."""
  import optax  # pylint: disable=g-import-not-at-top
  from sde_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  manager = checkpoints.checkpoint_manager(tmp_path / 'classifier',
                                           item_names=checkpoints.TRAIN_ITEMS, writer=True)
  params = {'w': np.zeros(2, np.float32)}
  state = train.TrainState(np.int32(2), params, optax.adam(1e-3).init(params), params,
                           jax.random.key(0))
  train.save_state(manager, state, 2, {'config': json.loads(config.to_json_best_effort())})
  manager.close()
  old = config.classifier.optim.lr
  config.classifier.optim.lr = old * 2
  with pytest.raises(train.ConfigChangeError,
                     match=rf'classifier.optim.lr: {old!r} \(saved\) -> {old * 2!r} \(now\)'):
    train_classifier.train_classifier(config, str(tmp_path), allow_config_change=('optim.lr',))
