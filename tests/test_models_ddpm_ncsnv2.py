"""DDPM, NCSNv2 and NCSN against the original implementations.

Reference vectors in tests/data:
* ``torch_*.{pth,npz,json}``: checkpoints and outputs of the original PyTorch networks
  (score_sde_pytorch), made by tools/make_torch_fixtures.py (the ``.json`` records how);
* ``jax_orig_ddpm_ncsnv2.{npz,json}``: outputs of the original score_sde (JAX) networks for the
  tiny networks of ``JAX_CASES`` with the parameters of :func:`numpy_params`, and the
  original's parameter names and shapes.
"""

import functools
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from sde_jax import checkpoints
from sde_jax.models import ddpm, ncsnv2, ncsnv2_torch_layout

DATA = pathlib.Path(__file__).parent / 'data'
ARCH = ncsnv2.ARCHITECTURES

# name: (module, image size, labels); each equals an original config shrunk as the .json says.
JAX_CASES = {
    'ddpm': (ddpm.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                       centered=False), 16, np.array([0.3, 500.7, 999.0], np.float32)),
    'ddpm_ve': (ddpm.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                          resamp_with_conv=False, centered=False, scale_by_sigma=True),
                16, np.array([0, 500, 999], np.int32)),
    'ncsnv2_64': (ncsnv2.NCSNv2(nf=8, num_scales=232, **ARCH['ncsnv2_64']), 16,
                  np.array([0, 116, 231], np.int32)),
    'ncsnv2_128': (ncsnv2.NCSNv2(nf=4, sigma_max=190.0, num_scales=1086, **ARCH['ncsnv2_128']),
                   16, np.array([0, 543, 1085], np.int32)),
    'ncsnv2_256': (ncsnv2.NCSNv2(nf=4, sigma_max=190.0, num_scales=1086, **ARCH['ncsnv2_256']),
                   32, np.array([0, 543, 1085], np.int32)),
    'ncsn': (ncsnv2.NCSNv2(nf=8, sigma_max=1.0, num_scales=10, scale_by_sigma=False,
                           **ARCH['ncsn']), 16, np.array([0, 5, 9], np.int32)),
}

TORCH_FIXTURES = ('torch_ddpm', 'torch_ncsnv2_64', 'torch_ncsnv2_128', 'torch_ncsn')


def numpy_params(template, seed: int = 0):
  """Initialisation-like parameters drawn with numpy, so stored outputs outlive JAX's streams.

  Leaf i (in sorted path order) uses ``default_rng([seed, i])``: normalisation scales (and the
  conditional tables) ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), weights ~ N(0, 1 / fan_in).
  """
  flat = traverse_util.flatten_dict(template)
  params = {}
  for i, path in enumerate(sorted(flat)):
    shape, rng = flat[path].shape, np.random.default_rng([seed, i])
    if path[-1] in ('scale', 'gamma', 'alpha', 'embedding'):
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif path[-1] in ('bias', 'beta', 'b'):
      value = 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    params[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(params)


def jax_case_inputs(name: str):
  """The inputs (NHWC, in [0, 1]) and labels of case ``name``."""
  _, size, labels = JAX_CASES[name]
  x = np.random.default_rng(1).uniform(size=(3, size, size, 3)).astype(np.float32)
  return x, labels


def param_template(model, x, labels):
  init = lambda: model.init({'params': jax.random.key(0)}, x, labels, train=False)  # noqa: E731
  return jax.eval_shape(init)['params']


def assert_close_to_reference(out, ref, rtol):
  """``max |out - ref| <= rtol (1 + max |ref|)``."""
  chex.assert_shape(out, ref.shape)
  chex.assert_trees_all_close(out, ref, atol=rtol * (1 + np.max(np.abs(ref))), rtol=0)


@pytest.mark.parametrize('name', sorted(JAX_CASES))
def test_matches_original_jax(name):
  model = JAX_CASES[name][0]
  x, labels = jax_case_inputs(name)
  record = json.loads((DATA / 'jax_orig_ddpm_ncsnv2.json').read_text())[name]
  template = param_template(model, x, labels)
  shapes = {'/'.join(k): list(v.shape) for k, v in traverse_util.flatten_dict(template).items()}
  assert shapes == record['param_shapes']  # the original's linen names, so checkpoints load
  out = jax.jit(functools.partial(model.apply, train=False))(
      {'params': numpy_params(template)}, x, labels)
  ref = np.load(DATA / 'jax_orig_ddpm_ncsnv2.npz')[f'{name}/out']
  assert_close_to_reference(out, ref, 1e-5)


def load_torch_fixture(name):
  """(config, checkpoint, arrays, module of the network) of fixture ``name``."""
  record = json.loads((DATA / f'{name}.json').read_text())
  config = ml_collections.ConfigDict(record['config'])
  checkpoint = checkpoints.read_torch(DATA / f'{name}.pth')  # numpy arrays, no torch needed
  module = ddpm if config.model.name == 'ddpm' else ncsnv2
  return config, checkpoint, np.load(DATA / f'{name}.npz'), module


def torch_model(config, module):
  factory = ddpm.ddpm_from_config if module is ddpm else ncsnv2.ncsnv2_from_config
  return factory(config, flavour='pytorch')


def imported(name):
  """(model, state, arrays) of fixture ``name``, imported by checkpoints.import_original."""
  config, _, arrays, module = load_torch_fixture(name)
  config.model.flavour = 'pytorch'
  state = checkpoints.import_original(DATA / f'{name}.pth', config)
  return torch_model(config, module), state, arrays


@pytest.mark.parametrize('name', TORCH_FIXTURES)
def test_matches_original_pytorch(name):
  """Every parameter imported (the importer is strict) and the EMA output matches."""
  model, state, arrays = imported(name)
  x, labels = arrays['x_nchw'].transpose(0, 2, 3, 1), arrays['labels']
  out = jax.jit(functools.partial(model.apply, train=False))({'params': state.params_ema}, x,
                                                             labels)
  assert_close_to_reference(out, arrays['model_out_nchw'].transpose(0, 2, 3, 1), 1e-4)


def test_pytorch_flavour_matters():
  """The PyTorch numerics (resizing, unbiased variances) do change NCSNv2's output."""
  model, state, arrays = imported('torch_ncsnv2_64')
  x, labels = arrays['x_nchw'].transpose(0, 2, 3, 1), arrays['labels']
  apply = lambda m: jax.jit(functools.partial(m.apply, train=False))  # noqa: E731
  jax_out = apply(model.clone(flavour='jax'))({'params': state.params}, x, labels)
  torch_out = apply(model)({'params': state.params}, x, labels)
  assert np.max(np.abs(jax_out - torch_out)) > 1e-2


def count(model, size):
  x, labels = jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32)
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(param_template(model, x, labels)))


# Parameter counts of the full networks, counted on the original code (jax.eval_shape of the
# score_sde models, parameters of the score_sde_pytorch models) for the configs named.
@pytest.mark.parametrize('kwargs,size,expected', [
    ({}, 32, 35_218_947),  # vp/ddpm/cifar10, both originals
    (dict(ch_mult=(1, 1, 2, 2, 4, 4)), 256, 111_569_923),  # vp/ddpm/celebahq, score_sde
])
def test_ddpm_parameter_counts(kwargs, size, expected):
  assert count(ddpm.DDPM(**kwargs), size) == expected


@pytest.mark.parametrize('name,flavour,kwargs,size,expected', [
    ('ncsnv2_64', 'jax', dict(num_scales=232), 32, 33_970_563),  # ve/ncsnv2/cifar10
    ('ncsnv2_64', 'pytorch', dict(num_scales=232), 32, 29_694_083),
    ('ncsnv2_128', 'jax', dict(num_scales=1086), 128, 83_445_379),  # ve/ncsnv2/bedroom, both
    ('ncsnv2_256', 'jax', dict(num_scales=1086), 256, 94_132_611),
    ('ncsn', 'jax', dict(num_scales=10), 32, 34_428_675),  # ve/ncsn/cifar10
    ('ncsn', 'pytorch', dict(num_scales=10), 32, 30_117_635),
])
def test_ncsn_parameter_counts(name, flavour, kwargs, size, expected):
  arch = (ncsnv2.TORCH_ARCHITECTURES if flavour == 'pytorch' else ARCH)[name]
  assert count(ncsnv2.NCSNv2(nf=128, flavour=flavour, **kwargs, **arch), size) == expected


def test_torch_layout_refuses_what_pytorch_lacks():
  """The PyTorch NCSNv2 networks only have InstanceNorm++ / VarianceNorm parameters."""
  model = ncsnv2.NCSNv2(nf=4, normalization='InstanceNorm', **ARCH['ncsnv2_64'])
  x, labels = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,), jnp.int32)
  with pytest.raises(ValueError, match='InstanceNorm2d_0'):
    ncsnv2_torch_layout.torch_layout(param_template(model, x, labels), [])


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="flavour='tf'"):
    ncsnv2.NCSNv2(flavour='tf')
  with pytest.raises(ValueError, match="'bicubic'"):
    ncsnv2.NCSNv2(interpolation='bicubic')
  config = ml_collections.ConfigDict({'model': {'name': 'ncsnv3'}})
  with pytest.raises(ValueError, match="'ncsnv3'"):
    ncsnv2.ncsnv2_from_config(config)
