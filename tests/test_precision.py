"""Mixed precision (``config.model.dtype``) and rematerialisation (``config.model.remat``).

The bf16 networks are held to the float32 outputs of the original implementations (the
reference checkpoints of tests/data, see tests/test_reference.py): bfloat16 keeps 8 bits of
mantissa (unit roundoff 2^-9 = 0.2%), and a tiny network of a few dozen layers accumulates a
few such errors per layer, so the contract is a relative L2 error of at most 5% of the output.
What runs in which dtype is checked on the compiled program itself (the jaxpr), and remat must
give the same parameters, outputs and gradients under the same names.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from sde_jax import checkpoints, losses, models
from sde_jax import sde as sde_lib
from sde_jax.models import classifier as classifier_lib
from sde_jax.models import compute

DATA = pathlib.Path(__file__).parent / 'data'
BF16_REL_L2 = 5e-2
# Reference checkpoints of both originals, one per network family.
REFERENCES = {'ve_ncsnpp_continuous_tiny': 'jax', 'vp_ddpmpp_continuous_tiny': 'jax',
              'torch_ddpm': 'jax', 'torch_ncsnv2_64': 'pytorch', 'torch_ncsn': 'pytorch'}


def nhwc(a):
  return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def reference(name, **model_fields):
  """(config, imported state, x, labels, original output) of fixture ``name``."""
  config = ml_collections.ConfigDict(json.loads((DATA / f'{name}.json').read_text())['config'])
  config.model.flavour = REFERENCES[name]
  config.model.update(model_fields)
  state = checkpoints.import_original(DATA / f'{name}.pth', config)
  ref = np.load(DATA / f'{name}.npz')
  return (config, state, nhwc(ref['x_nchw']), jnp.asarray(ref['labels']),
          np.asarray(nhwc(ref['model_out_nchw'])))


def apply_fn(config):
  model = models.get_model(config)
  return jax.jit(lambda p, x, y: model.apply({'params': p}, x, y, train=False))


def rel_l2(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_bfloat16_is_close_to_the_originals_float32(name):
  config, state, x, labels, expected = reference(name, dtype='bfloat16')
  out = apply_fn(config)(state.params_ema, x, labels)
  assert out.dtype == jnp.float32
  err = rel_l2(out, expected)
  assert err <= BF16_REL_L2, f'{name}: bf16 relative L2 error {err:.3g} > {BF16_REL_L2}'
  # and bf16 does change the numbers (the option is not a no-op)
  assert err > 1e-4


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_remat_keeps_names_and_outputs(name):
  """The originals' checkpoints import into the rematerialised networks unchanged."""
  config, state, x, labels, expected = reference(name, remat=True)
  plain, _, _, _, _ = reference(name)
  out = apply_fn(config)(state.params_ema, x, labels)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  abstract = jax.eval_shape(lambda k: models.init_params(models.get_model(config), k, x.shape),
                            jax.random.key(0))
  abstract_plain = jax.eval_shape(
      lambda k: models.init_params(models.get_model(plain), k, x.shape), jax.random.key(0))
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(abstract_plain)


def _equations(jaxpr):
  """Every equation of a jaxpr, sub-jaxprs (jit, remat, custom derivatives, scans) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def _loss_jaxpr(config, shape):
  sde = sde_lib.from_config(config)
  model = models.get_model(config)
  loss_fn = losses.get_loss_fn(config, sde, model, train=True)
  # Abstract parameters: the jaxpr needs their shapes only (an eager init runs op by op).
  params = jax.eval_shape(lambda k: models.init_params(model, k, (1, *shape[1:])),
                          jax.random.key(0))
  grad = jax.grad(lambda p: loss_fn(p, jax.random.key(1), jnp.zeros(shape))[0])
  return jax.make_jaxpr(grad)(params).jaxpr, jax.eval_shape(grad, params)


def _operand_dtypes(eqns, primitive):
  return [tuple(str(v.aval.dtype) for v in e.invars) for e in eqns if e.primitive.name == primitive]


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_what_runs_in_bfloat16(name):
  """In the gradient of the training loss: every convolution in bf16, every matrix product over
  pixels (NIN layers, attention) in bf16, the gradients of the float32 parameters float32; with
  float32 not one bf16 value anywhere."""
  config, _, x, _, _ = reference(name, dtype='bfloat16')
  shape = (2, *x.shape[1:])
  jaxpr, grads = _loss_jaxpr(config, shape)
  eqns = list(_equations(jaxpr))
  convs = _operand_dtypes(eqns, 'conv_general_dilated')
  assert convs and all(d == ('bfloat16', 'bfloat16') for d in convs), set(convs)
  pixel_dots = [tuple(str(v.aval.dtype) for v in e.invars) for e in eqns
                if e.primitive.name == 'dot_general' and e.invars[0].aval.ndim > 2]
  # The attention logits accumulate in float32 (preferred_element_type), so the backward pass
  # multiplies their float32 cotangent by a bf16 operand: one mixed product per attention
  # layer, never a float32 one.
  assert all('bfloat16' in d for d in pixel_dots), set(pixel_dots)
  assert pixel_dots or name.startswith('torch_ncsn')  # NCSN(v2) has no NIN or attention
  assert sum(d != ('bfloat16', 'bfloat16') for d in pixel_dots) <= 2 * len(
      [e for e in eqns if e.primitive.name == 'exp' and e.invars[0].aval.ndim > 2]), pixel_dots
  assert {str(g.dtype) for g in jax.tree_util.tree_leaves(grads)} == {'float32'}


@pytest.mark.parametrize('name', ['ve_ncsnpp_continuous_tiny', 'torch_ncsn'])
def test_float32_programs_hold_no_bfloat16(name):
  config, _, x, _, _ = reference(name, dtype='float32')
  eqns = list(_equations(_loss_jaxpr(config, (2, *x.shape[1:]))[0]))
  assert not [e for e in eqns for v in (*e.invars, *e.outvars)
              if str(getattr(v.aval, 'dtype', '')) == 'bfloat16']


def test_attention_softmax_stays_float32():
  from sde_jax.models.layers import self_attention
  q = jnp.ones((1, 4, 4, 8), jnp.bfloat16)
  eqns = list(_equations(jax.make_jaxpr(self_attention)(q, q, q).jaxpr))
  exps = [e for e in eqns if e.primitive.name == 'exp']
  assert exps and all(str(e.invars[0].aval.dtype) == 'float32' for e in exps)
  assert self_attention(q, q, q).dtype == jnp.bfloat16


def test_remat_recomputes_and_gives_the_same_gradients():
  config, state, x, labels, _ = reference('vp_ddpmpp_continuous_tiny')
  grads = {}
  for remat in ('none', 'True', 'dots_saveable'):
    config.model.remat = remat
    model = models.get_model(config)
    loss = lambda p: jnp.sum(model.apply({'params': p}, x, labels, train=False) ** 2)  # noqa: E731
    fn = jax.grad(loss)
    primitives = {e.primitive.name for e in _equations(jax.make_jaxpr(fn)(state.params).jaxpr)}
    # jax.checkpoint's primitive ('remat2' in this JAX, 'checkpoint' in others)
    rematted = any(n.startswith('remat') or n == 'checkpoint' for n in primitives)
    assert rematted == (remat != 'none'), primitives
    grads[remat] = jax.jit(fn)(state.params)
  for remat in ('True', 'dots_saveable'):
    flat, plain = (traverse_util.flatten_dict(grads[k]) for k in (remat, 'none'))
    assert flat.keys() == plain.keys()
    # Recomputation may sum in another order: float32 roundoff of a gradient summed over
    # B H W = 1024 positions, ~sqrt(1024) * 1.2e-7 = 4e-6 of the largest gradient, bounded by
    # 2e-5 of it (per leaf would not do: the attention keys' bias has a zero gradient, softmax
    # being shift-invariant, so its entries are pure roundoff).
    scale = max(float(np.abs(g).max()) for g in plain.values())
    for path in plain:
      np.testing.assert_allclose(flat[path], plain[path], rtol=1e-4, atol=2e-5 * scale,
                                 err_msg=str(path))


def test_classifier_in_bfloat16_and_remat():
  config = ml_collections.ConfigDict({'model': {'dtype': 'float32', 'remat': False},
                                      'classifier': {'name': 'wideresnet', 'blocks_per_group': 1,
                                                     'channel_multiplier': 1,
                                                     'num_classes': 10}})
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  sigmas = jnp.array([0.02, 1.0, 30.0])
  plain = classifier_lib.get_classifier(config)
  # Compiled: run eagerly, op by op, the network takes seconds per call on CPU.
  params = jax.jit(plain.init)({'params': jax.random.key(1)}, x, sigmas)['params']
  logits = jax.jit(plain.apply)({'params': params}, x, sigmas)
  config.model.update(dtype='bfloat16', remat=True)
  mixed = classifier_lib.get_classifier(config)
  abstract = jax.eval_shape(mixed.init, {'params': jax.random.key(1)}, x, sigmas)
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(
      {'params': params})
  out = jax.jit(mixed.apply)({'params': params}, x, sigmas)
  assert out.dtype == jnp.float32
  assert rel_l2(out, np.asarray(logits)) <= BF16_REL_L2


def test_bfloat16_training_loss_is_float32_and_close():
  """The loss of a bf16 network, and its gradients, are float32 and near float32's."""
  config, state, _, _, _ = reference('ve_ncsnpp_continuous_tiny')
  sde = sde_lib.from_config(config)
  batch = jax.random.uniform(jax.random.key(3), (2, config.data.image_size,
                                                 config.data.image_size, 3))
  values = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    loss_fn = losses.get_loss_fn(config, sde, models.get_model(config), train=False)
    values[dtype] = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, jax.random.key(4),
                                                                 batch)[0]))(state.params)
  (loss32, g32), (loss16, g16) = values['float32'], values['bfloat16']
  assert loss16.dtype == jnp.float32
  assert abs(float(loss16) - float(loss32)) <= BF16_REL_L2 * abs(float(loss32))
  flat16, flat32 = (np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g)])
                    for g in (g16, g32))
  assert flat16.dtype == np.float32
  assert rel_l2(flat16, flat32) <= 2 * BF16_REL_L2


@pytest.mark.parametrize('field,value,match', [
    ('dtype', 'float16', "model.dtype='float16' is not supported; expected one of"),
    ('remat', 'sometimes', "model.remat='sometimes' is not supported"),
])
def test_bad_options_are_named(field, value, match):
  config = ml_collections.ConfigDict(
      json.loads((DATA / 'vp_ddpmpp_continuous_tiny.json').read_text())['config'])
  config.model[field] = value
  with pytest.raises(ValueError, match=match):
    models.get_model(config)


def test_option_values():
  assert compute.remat_policy(False) is None and compute.remat_policy('none') is None
  assert compute.remat_policy(True) == 'block' and compute.remat_policy('True') == 'block'
  assert compute.remat_policy('dots_saveable') == 'dots_saveable'
  assert compute.compute_dtype('bfloat16') == jnp.bfloat16
  assert compute.compute_dtype(jnp.float32) == jnp.float32
