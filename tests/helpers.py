"""Small things several test modules share: loading a config file of configs/ (as Python, or as
the command line does), the one shrink recipe for tests (``tiny_config`` / ``tiny_flags``: any
config through configs/_runlocal.py, plus a test's overrides), running the ``sde-jax`` command,
the environment of a test's subprocess, and the no-retrace checks (``first_compile`` with
``chex.assert_max_traces``). (The exact Gaussian score, which also counts a compiled sampler's
evaluations, is in tests/gaussian.py.)"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pathlib
import struct
import subprocess
import sys

import chex
import jax
from absl import flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = ROOT / 'configs'


def load_config(relative: str):
  """``get_config()`` of ``configs/<relative>``, without the command line's override flags."""
  spec = importlib.util.spec_from_file_location('config', CONFIGS / relative)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse_flags(argv: list[str]):
  """The config that ``sde-jax`` builds from the flags ``argv`` (``--config=PATH`` first, then
  ``--config.a.b=v`` overrides), locked as there."""
  argv = ['prog', *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def run_cli(*args: str) -> subprocess.CompletedProcess:
  """``sde-jax args`` in a subprocess on CPU, from the repository root, with this run's
  persistent compilation cache (conftest.py) when it has one: the commands compile the same tiny
  programs as each other and as the tests in this process."""
  cache = jax.config.jax_compilation_cache_dir
  env = subprocess_env(cache) if cache else {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'sde_jax.cli', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def subprocess_env(cache, **extra: str) -> dict[str, str]:
  """This process's environment on CPU, with the persistent compilation cache ``cache`` (the
  ``compilation_cache`` fixture of conftest.py) used for every program; ``extra`` on top."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0', **extra}


@contextlib.contextmanager
def first_compile():
  """The calls in the body compile their programs; every later call must reuse them.

  For a function that a compiled program evaluates at several places (a score function inside a
  sampler's loop), wrap it in ``chex.assert_max_traces(fn, 0)`` and make the first call in this
  context: chex's assertions are off while the program is traced, and its trace counters start
  from zero after it, so any later trace of ``fn`` (a retrace for new params, keys or data of the
  same shapes) fails the test::

    score = chex.assert_max_traces(score_fn, 0)
    with helpers.first_compile():
      sampler(key, score, params)
    sampler(other_key, score, other_params)  # AssertionError if this traces ``score`` again
  """
  chex.disable_asserts()
  try:
    yield
  finally:
    chex.enable_asserts()
    chex.clear_trace_counter()


def _override(section, overrides: dict, where: str) -> None:
  for name, value in overrides.items():
    if name not in section:
      raise KeyError(f'{where}{name} is not a field of the config')
    if isinstance(value, dict):
      _override(section[name], value, f'{where}{name}.')
    else:
      section[name] = value


def tiny_config(relative: str, **overrides):
  """``configs/<relative>`` shrunk by the one recipe, ``configs._runlocal.runlocal``, then
  ``overrides``: per section a dict of fields (nested for sub-sections), for what a test needs
  to differ from the recipe, e.g. ``tiny_config('digits/ddpmpp_continuous.py',
  model=dict(num_scales=8), training=dict(n_iters=16))``. An unknown field is a KeyError."""
  from configs import _runlocal  # pylint: disable=g-import-not-at-top
  config = _runlocal.runlocal(load_config(relative))
  _override(config, overrides, '')
  return config


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return '(' + ','.join(_flag_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return repr(value) if isinstance(value, float) else str(value)


def _leaves(tree: dict, prefix: str = ''):
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f'{prefix}{name}.')
    else:
      yield f'{prefix}{name}', value


def tiny_flags(relative: str, **overrides) -> list[str]:
  """The ``sde-jax`` flags that give :func:`tiny_config` ``(relative, **overrides)``:
  ``--config=configs/<relative>``, then ``--config.a.b=v`` for every field that differs from
  the config file's."""
  full = dict(_leaves(load_config(relative).to_dict()))
  tiny = dict(_leaves(tiny_config(relative, **overrides).to_dict()))
  assert full.keys() == tiny.keys(), set(full) ^ set(tiny)
  return [f'--config={CONFIGS / relative}'] + [
      f'--config.{name}={_flag_value(value)}' for name, value in tiny.items()
      if value != full[name]]


# The network of the fixture checkpoints tests/data/*ve_ncsnpp_continuous_tiny* (score_sde's
# checkpoint_5 and score_sde_pytorch's .pth of a tiny NCSN++, described by
# tests/data/ve_ncsnpp_continuous_tiny.json): the VE CIFAR-10 NCSN++ config with these fields
# over the recipe. They must match the stored networks, not follow the recipe.
REFERENCE_CONFIG = 've/cifar10_ncsnpp_continuous.py'
REFERENCE_NETWORK = dict(model=dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                    attn_resolutions=(8,)),
                         data=dict(image_size=16))


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for name, value in b.items():
    out[name] = _merge(a[name], value) if isinstance(value, dict) and name in a else value
  return out


def reference_config(**overrides):
  """:func:`tiny_config` of the fixture checkpoints' network (``REFERENCE_NETWORK``), then
  ``overrides``."""
  return tiny_config(REFERENCE_CONFIG, **_merge(REFERENCE_NETWORK, overrides))


def reference_flags(**overrides) -> list[str]:
  """The ``sde-jax`` flags of :func:`reference_config` ``(**overrides)``."""
  return tiny_flags(REFERENCE_CONFIG, **_merge(REFERENCE_NETWORK, overrides))


def tiny_inception_options() -> dict:
  """``InceptionV3(**options)`` of the recipe's FID network (``eval.inception_width`` and
  ``eval.inception_image_size`` of configs/_runlocal.py)."""
  from configs import _runlocal  # pylint: disable=g-import-not-at-top
  return dict(width=_runlocal.EVAL['inception_width'],
              image_size=_runlocal.EVAL['inception_image_size'])


def write_progressive_gan_records(path, images) -> None:
  """uint8 images (N, H, W, C) as TFRecords of the progressive-GAN dataset tool (FFHQ,
  CelebA-HQ): 'shape' int64 (C, H, W), 'data' the CHW bytes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image in images:
      chw = image.transpose(2, 0, 1)
      example = tf.train.Example(features=tf.train.Features(feature={
          'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
          'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()]))}))
      writer.write(example.SerializeToString())


def event_scalars(data: bytes, tag: str) -> dict[int, float]:
  """``{step: value}`` of the scalar ``tag`` in the bytes of a TensorBoard event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  values, i = {}, 0
  while i < len(data):  # TFRecord: length (u64), its CRC (u32), payload, payload CRC (u32)
    (n,) = struct.unpack('<Q', data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    i += 12 + n + 4
    values.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
  return values


def workdir_scalars(workdir, tag: str) -> dict[int, float]:
  """``{step: value}`` of the scalar ``tag`` in every event file of ``workdir/tensorboard``."""
  values = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      values.update(event_scalars(f.read(), tag))
  return values
