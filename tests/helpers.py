"""Small things several test modules share: loading a config file of configs/ (as Python, or as
the command line does), running the ``sde-jax`` command, and the environment of a test's
subprocess. (The exact Gaussian score, which also counts a compiled sampler's evaluations, is in
tests/gaussian.py.)"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

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
  """``sde-jax args`` in a subprocess on CPU, from the repository root."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'sde_jax.cli', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def subprocess_env(cache, **extra: str) -> dict[str, str]:
  """This process's environment on CPU, with the persistent compilation cache ``cache`` (the
  ``compilation_cache`` fixture of conftest.py) used for every program; ``extra`` on top."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0', **extra}
