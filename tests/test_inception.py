"""The FID Inception network: against pytorch-fid's own model, TensorFlow's resize, and the
strict weight loader.

Without the real weights, the port is checked on random ones: a deterministic state dict
(:func:`reference_state_dict`, numpy only) loaded into pytorch-fid's FID Inception (its own
code path, ``fid_inception_v3`` with the download replaced by that state dict) gives the
reference outputs in ``data/pytorch_fid_inception.npz``; the Flax network must reproduce them
from the same tensors through :func:`inception.load_params`. Regenerate the file (it never needs to change) with
``python -m tests.test_inception write-reference`` where pytorch-fid, torchvision and jax
import.
"""

import json
import pathlib
import pickle
import sys
import zipfile
import zlib

import chex
import jax
import numpy as np
import pytest

from sde_jax.checkpoints import CheckpointError
from sde_jax.metrics import inception
from tests import helpers
from tests.pth_files import state_dict_file

DATA = pathlib.Path(__file__).parent / 'data'
REFERENCE = DATA / 'pytorch_fid_inception.npz'
# The recipe's FID network (configs/_runlocal.py): width 1/16, 75x75 inputs.
TINY = inception.InceptionV3(**helpers.tiny_inception_options())

# --------------------------------------------------------------------------------------------
# The reference weights and images (numpy only, so that any environment makes the same ones).


def torch_shapes(model=None) -> dict[str, tuple[int, ...]]:
  """``{state-dict key: shape}`` of the network, from the Flax template."""
  return {inception.torch_key(p): inception.to_torch_layout(np.empty(s.shape, np.uint8)).shape
          for p, s in inception.param_shapes(model).items()}


def reference_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Random float32 tensors, the same for a key on every machine: He-normal kernels, and batch
  norms far from the identity, so that every tensor changes the output."""
  out = {}
  for key, shape in shapes.items():
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith('.weight') and len(shape) in (2, 4):
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif key.endswith('running_var'):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith('bn.weight'):
      value = rng.uniform(0.8, 1.2, shape)
    else:  # running_mean and biases
      value = 0.1 * rng.standard_normal(shape)
    out[key] = value.astype(np.float32)
  return out


def reference_images() -> np.ndarray:
  """Two 299x299 uint8 images (no resize involved): noise, and a smooth random field."""
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (299, 299, 3), dtype=np.uint8)
  field = np.cumsum(np.cumsum(rng.normal(0, 4, (299, 299, 3)), axis=0), axis=1) / 30 + 128
  return np.stack([noise, np.clip(field, 0, 255).astype(np.uint8)])


def pytorch_fid_outputs(state_dict: dict[str, np.ndarray], images: np.ndarray):
  """pool_3 and logits (with the fc bias) of pytorch-fid's FID Inception holding
  ``state_dict``, for uint8 299x299 ``images`` mapped to ``(x - 127.5) / 127.5``."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as fid_inception  # pylint: disable=g-import-not-at-top
  tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  original = fid_inception.load_state_dict_from_url
  fid_inception.load_state_dict_from_url = lambda *args, **kwargs: tensors
  try:  # pytorch-fid's own construction; its load_state_dict is strict.
    net = fid_inception.fid_inception_v3().eval()
  finally:
    fid_inception.load_state_dict_from_url = original
  pooled = []  # pytorch-fid's FID features are the output of this average pool
  net.avgpool.register_forward_hook(lambda module, args, output: pooled.append(output))
  x = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
  with torch.no_grad():
    logits = net(x.contiguous()).numpy()
  return pooled[0][:, :, 0, 0].numpy(), logits, net


def _weight_sums(state_dict):
  keys = sorted(state_dict)
  return keys, np.array([np.sum(state_dict[k], dtype=np.float64) for k in keys])


def write_reference():
  state = reference_state_dict(torch_shapes())
  pool_3, logits, _ = pytorch_fid_outputs(state, reference_images())
  keys, sums = _weight_sums(state)
  np.savez_compressed(REFERENCE, pool_3=pool_3, logits=logits, weight_keys=np.array(keys),
           weight_sums=sums)
  import pytorch_fid, torch, torchvision  # pylint: disable=g-import-not-at-top,multiple-imports
  REFERENCE.with_suffix('.json').write_text(json.dumps({
      'made_by': 'python -m tests.test_inception write-reference',
      'pytorch_fid': pytorch_fid.__version__, 'torch': torch.__version__,
      'torchvision': torchvision.__version__,
      'weights': 'tests/test_inception.py reference_state_dict (numpy, seeded by crc32 of key)',
      'images': 'tests/test_inception.py reference_images, mapped to (x - 127.5) / 127.5',
      'logits': 'pytorch-fid Inception3.fc output, i.e. with the fc bias'}, indent=1) + '\n')


# --------------------------------------------------------------------------------------------
# The full network against pytorch-fid.


@pytest.fixture(scope='module')
def full():
  """The full-size network holding the reference weights, jitted, and its outputs."""
  state = reference_state_dict(torch_shapes())
  params = inception.params_from_state_dict(state)

  def apply(p, x):  # both logits conventions in one program; XLA shares the network
    out = inception.InceptionV3(logits_bias=True).apply({'params': p}, x)
    return {**out, 'plain': inception.InceptionV3().apply({'params': p}, x)['logits']}

  out = jax.jit(apply)(params, reference_images())
  return state, params, jax.tree_util.tree_map(np.asarray, out)


def _assert_close(ours, theirs, rtol):
  err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  assert err < rtol, err


def test_matches_pytorch_fid_reference(full):
  state, params, out = full
  ref = np.load(REFERENCE)
  keys, sums = _weight_sums(state)
  assert keys == ref['weight_keys'].tolist()  # pytorch-fid's keys are exactly ours
  np.testing.assert_allclose(sums, ref['weight_sums'], rtol=1e-6, atol=1e-4)
  chex.assert_shape([out['pool_3'], out['logits']], [(2, 2048), (2, 1008)])
  _assert_close(out['pool_3'], ref['pool_3'], 1e-5)
  _assert_close(out['logits'], ref['logits'], 1e-5)
  # Without the bias (the default, as the original Inception Score): pool_3 @ W.
  np.testing.assert_allclose(out['plain'] + params['fc']['bias'][None], out['logits'], atol=1e-5)


# --------------------------------------------------------------------------------------------
# Input: normalisation and TensorFlow's bilinear resize.


@pytest.mark.parametrize('size', [(32, 32), (28, 20), (256, 256), (400, 512)])
def test_resize_matches_tensorflow(size):
  tf = pytest.importorskip('tensorflow')
  images = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
  x = (images.astype(np.float32) - 127.5) / 127.5
  # The original: (x - 127.5) / 127.5, then the TF-Hub module's tf.compat.v1.image.resize.
  legacy = tf.compat.v1.image.resize(x, [299, 299], method=tf.image.ResizeMethod.BILINEAR)
  half_pixel = tf.image.resize(x, [299, 299], method='bilinear')
  np.testing.assert_allclose(inception.preprocess(images), legacy.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(images, method='half_pixel'),
                             half_pixel.numpy(), rtol=0, atol=1e-6)


def test_preprocess_range_identity_and_gray():
  images = np.zeros((2, 299, 299, 3), np.uint8)
  images[1] = 255
  x = np.asarray(inception.preprocess(images))
  assert x[0].min() == x[0].max() == -1 and x[1].min() == x[1].max() == 1
  noise = np.random.default_rng(2).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_allclose(inception.preprocess(noise), (noise - 127.5) / 127.5, rtol=0,
                             atol=1.2e-7)  # float32 to an ulp; no resize at 299
  gray = noise[..., :1]
  chex.assert_trees_all_equal(inception.preprocess(gray),
                              inception.preprocess(np.repeat(gray, 3, axis=-1)))
  with pytest.raises(ValueError, match='legacy'):
    inception.resize_matrix(32, 299, 'bicubic')


def test_resize_matrix_rows_are_convex_weights():
  for method in ('legacy', 'half_pixel'):
    m = inception.resize_matrix(32, 299, method)
    np.testing.assert_allclose(m.sum(axis=1), 1, atol=1e-6)
    assert m.min() >= 0 and np.count_nonzero(m, axis=1).max() <= 2
  np.testing.assert_array_equal(inception.resize_matrix(7, 7), np.eye(7))


# --------------------------------------------------------------------------------------------
# The tiny variant and the strict loader.


def test_width_scales_the_network():
  shapes = inception.param_shapes(TINY)
  assert shapes[('fc', 'kernel')].shape == (128, 1008)  # 2048 / 16 pool_3 features
  assert shapes[('Conv2d_1a_3x3', 'conv', 'kernel')].shape == (3, 3, 3, 2)
  full = inception.param_shapes()
  assert full.keys() == shapes.keys() and len(full) == 5 * 94 + 2  # 94 conv + bn, fc
  assert sum(int(np.prod(s.shape)) for s in full.values()) == 23_885_392
  params = inception.init_params(jax.random.key(0), TINY)
  images = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  out = jax.jit(lambda p, x: TINY.apply({'params': p}, x))(params, images)
  chex.assert_shape([out['pool_3'], out['logits']], [(3, 128), (3, 1008)])
  chex.assert_tree_all_finite(out)
  assert np.ptp(np.asarray(out['pool_3']), axis=0).max() > 0  # images differ in features
  with pytest.raises(ValueError, match='75'):
    inception.InceptionV3(image_size=32).init(jax.random.key(0), images)


def test_npz_and_pth_round_trip(tmp_path):
  state = reference_state_dict(torch_shapes(TINY))
  params = inception.params_from_state_dict(state, TINY)
  np.savez(tmp_path / 'w.npz', **state)
  (tmp_path / 'w.pth').write_bytes(state_dict_file(state))  # torch.save's zip format
  for name in ('w.npz', 'w.pth'):
    chex.assert_trees_all_equal(inception.load_params(tmp_path / name, TINY), params)
  assert inception.state_dict_from_params(params).keys() == state.keys()
  for key, value in inception.state_dict_from_params(params).items():
    np.testing.assert_array_equal(value, state[key])


def test_missing_weights_say_where_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    inception.load_params(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
  assert inception.WEIGHTS_URL in str(info.value) and '.npz' in str(info.value)


def _tiny_state():
  return reference_state_dict(torch_shapes(TINY))


def test_loader_names_missing_and_unexpected_tensors():
  state = _tiny_state()
  del state['Mixed_6c.branch7x7_2.bn.running_var']
  state['AuxLogits.fc.weight'] = np.zeros((1008, 768), np.float32)
  with pytest.raises(CheckpointError) as info:
    inception.params_from_state_dict(state, TINY)
  message = str(info.value)
  assert 'Mixed_6c.branch7x7_2.bn.running_var' in message and 'AuxLogits.fc.weight' in message


def test_loader_names_tensor_parameter_and_both_shapes():
  state = _tiny_state()
  state['Mixed_5b.branch5x5_2.conv.weight'] = np.zeros((4, 3, 3, 3), np.float32)
  with pytest.raises(CheckpointError) as info:
    inception.params_from_state_dict(state, TINY)
  message = str(info.value)
  for part in ('Mixed_5b.branch5x5_2.conv.weight', 'Mixed_5b/branch5x5_2/conv/kernel',
               '(4, 3, 3, 3)', '(4, 3, 5, 5)'):
    assert part in message, (part, message)


def test_full_weights_do_not_fit_the_tiny_network():
  with pytest.raises(CheckpointError, match=r'Conv2d_1a_3x3.* has shape \(32,'):
    inception.params_from_state_dict(reference_state_dict(torch_shapes()), TINY)


def test_batch_norm_counters_are_the_only_tensors_left_unused():
  state = _tiny_state()
  state['Conv2d_1a_3x3.bn.num_batches_tracked'] = np.array(7)
  # The counter changes nothing: the parameters are those of the state without it.
  chex.assert_trees_all_equal(inception.params_from_state_dict(state, TINY),
                              inception.params_from_state_dict(_tiny_state(), TINY))
  # Any other tensor the network has no place for is refused, however like a counter it is.
  state['Conv2d_1a_3x3.bn.num_batches_seen'] = np.array(7)
  with pytest.raises(CheckpointError, match=r"1 unexpected \(first: \['Conv2d_1a_3x3.bn."
                     r"num_batches_seen'\]\)"):
    inception.params_from_state_dict(state, TINY)


def test_unsafe_pth_is_refused(tmp_path, capsys):
  class Evil:
    def __reduce__(self):
      return (print, ('pwned',))

  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as archive:  # the zip format of torch.save, made without torch
    archive.writestr('archive/data.pkl',
                     pickle.dumps({'Conv2d_1a_3x3.conv.weight': Evil()}, protocol=2))
  with pytest.raises(CheckpointError, match='evil.pth: refuses global builtins.print'):
    inception.load_params(path, TINY)
  assert 'pwned' not in capsys.readouterr().out


if __name__ == '__main__':
  if sys.argv[1:] != ['write-reference']:
    sys.exit('usage: python -m tests.test_inception write-reference')
  write_reference()
