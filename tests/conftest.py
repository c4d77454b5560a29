"""Test set-up: 8 fake CPU devices (set before JAX starts) and strict rank promotion."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update('jax_numpy_rank_promotion', 'raise')


import pytest  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the whole run, shared by the pytest-xdist workers and
  the subprocesses tests start with :func:`tests.helpers.subprocess_env`: a program that several
  modules compile (the same network, sampler or train step at the same shapes) compiles once,
  whichever worker runs them. It starts empty, so a run never depends on an earlier one. (JAX
  writes an entry under its final name; a reader that meets one half-written fails to
  deserialise it, warns and compiles, so concurrent writers cost at most a compile.)"""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's folder, above each worker's own
  directory = root / 'jax_cache'
  directory.mkdir(exist_ok=True)
  # Programs that compile in under half a second are not worth the write.
  names = {'jax_compilation_cache_dir': str(directory),
           'jax_persistent_cache_min_compile_time_secs': 0.5,
           'jax_persistent_cache_min_entry_size_bytes': 0}
  before = {name: getattr(jax.config, name) for name in names}
  for name, value in names.items():
    jax.config.update(name, value)
  yield directory
  for name, value in before.items():
    jax.config.update(name, value)


# The longest modules first (seconds measured on 2 cores: docs/benchmarks.md), so that the two
# xdist workers (`--dist loadfile`) do not end with one of them running a long module alone.
LONGEST_FIRST = ('test_train', 'test_multihost', 'test_sampling', 'test_controllable', 'test_gcs',
                 'test_precision', 'test_reference', 'test_predict_project', 'test_evaluate',
                 'test_fast_samplers', 'test_folder_data', 'test_likelihood', 'test_classifier',
                 'test_plan', 'test_models_ddpm_ncsnv2', 'test_checkpoints', 'test_toy',
                 'test_nonfinite', 'test_cli', 'test_losses', 'test_sde', 'test_metrics_fid',
                 'test_data', 'test_gaussian', 'test_inception', 'test_elastic')


def pytest_collection_modifyitems(items):
  def rank(item):
    module = item.module.__name__.rsplit('.', 1)[-1]
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: the tests of a module keep their order
