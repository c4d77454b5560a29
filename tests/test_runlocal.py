"""The one shrink recipe of the tests (configs/_runlocal.py, through tests.helpers): every config
shrinks and its command-line flags give the same config (the shrunk networks run in the
tests that use them).
"""

import json
import pathlib

import ml_collections
import pytest

from configs import _runlocal
from tests import helpers
from tests.test_configs import CONFIGS

# config_flags loads config files with importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

DATA = pathlib.Path(__file__).parent / 'data'


@pytest.mark.parametrize('rel', CONFIGS)
def test_every_config_shrinks_and_its_flags_give_the_same_config(rel):
  tiny = helpers.tiny_config(rel)
  assert tiny.model.num_scales == _runlocal.NUM_SCALES
  assert tiny.training.batch_size == _runlocal.TRAINING['batch_size']
  assert tiny.training.n_iters == _runlocal.TRAINING['n_iters']
  if 'image_size' in tiny.data:
    assert tiny.data.image_size == _runlocal.IMAGE_SIZE
    assert tiny.eval.batch_size == _runlocal.EVAL['batch_size']
  for field, value in _runlocal.NETWORK[_runlocal.FAMILIES[tiny.model.name]].items():
    assert tiny.model[field] == value, field
  if 'n_jitted_steps' in tiny.training:  # the periods stay multiples of the compiled steps
    for period in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
      assert tiny.training[period] % tiny.training.n_jitted_steps == 0, period
  assert helpers.parse_flags(helpers.tiny_flags(rel)).to_dict() == tiny.to_dict()


def test_overrides_and_their_flags():
  overrides = dict(model=dict(num_scales=8), training=dict(n_iters=16),
                   classifier=dict(training=dict(batch_size=16)))
  tiny = helpers.tiny_config('digits/classifier.py', **overrides)
  assert (tiny.model.num_scales, tiny.training.n_iters) == (8, 16)
  assert tiny.classifier.training.batch_size == 16
  assert tiny.classifier.training.n_iters == _runlocal.CLASSIFIER_TRAINING['n_iters']
  flags = helpers.tiny_flags('digits/classifier.py', **overrides)
  assert helpers.parse_flags(flags).to_dict() == tiny.to_dict()
  with pytest.raises(KeyError, match='model.nff'):
    helpers.tiny_config('digits/classifier.py', model=dict(nff=8))


def test_unknown_network_family_is_an_error():
  config = ml_collections.ConfigDict({'model': {'name': 'unet3d'}})
  with pytest.raises(ValueError, match="model.name='unet3d'"):
    _runlocal.runlocal(config)


def test_reference_network_is_the_fixtures():
  """``helpers.REFERENCE_NETWORK`` is the network stored with the fixture checkpoints."""
  stored = json.loads((DATA / 've_ncsnpp_continuous_tiny.json').read_text())['config']
  config = helpers.reference_config()
  for field in helpers.REFERENCE_NETWORK['model']:
    value = config.model[field]
    assert (list(value) if isinstance(value, tuple) else value) == stored['model'][field], field
  assert config.data.image_size == stored['data']['image_size']
  for field in ('name', 'embedding_type', 'progressive', 'progressive_input', 'fir'):
    assert config.model[field] == stored['model'][field], field
