"""The package's layers, read from its source (tools/import_graph.py): no import cycle, no library
module importing the jobs layer or the command line, no module using another's ``_private``
name, and no module over 450 lines. Each rule is also shown to catch a planted violation."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('import_graph', ROOT / 'tools' / 'import_graph.py')
import_graph = importlib.util.module_from_spec(_spec)
sys.modules['import_graph'] = import_graph  # its dataclass looks itself up there
_spec.loader.exec_module(import_graph)

MAX_LINES = 450
# Over the limit, each with the issue that splits it.
LONG_MODULES: dict[str, str] = {}


def test_no_cycle_no_upward_import_no_private_use():
  graph = import_graph.build()
  assert 'sde_jax.jobs.train' in graph.modules and 'sde_jax.cli' in graph.modules
  assert import_graph.cycles(graph) == []
  assert import_graph.upward_imports(graph) == []
  assert graph.private_uses == []


def test_only_the_cli_and_the_jobs_read_the_job_modules():
  graph = import_graph.build()
  users = {a for a, targets in graph.arrows.items() for b in targets if b.startswith('sde_jax.jobs.')}
  assert users <= {'sde_jax.cli'} | {m for m in graph.modules if m.startswith('sde_jax.jobs')}
  assert 'sde_jax.jobs.config_check' in graph.arrows['sde_jax.jobs.train']


def test_module_sizes():
  sizes = {m: len(p.read_text().splitlines()) for m, p in import_graph.module_files().items()}
  over = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in LONG_MODULES}
  assert over == {}
  assert all(sizes[m] > MAX_LINES for m in LONG_MODULES)  # an exception that is still needed


def _package(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for name, text in files.items():
    path = root / 'sde_jax' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root / 'sde_jax'


def test_the_rules_catch_planted_violations(tmp_path):
  root = _package(tmp_path, {
      '__init__.py': '',
      'a.py': 'from sde_jax import b\n',
      'b.py': 'def f():\n  from sde_jax.c import g  # inside a function: still an arrow\n',
      'c.py': 'import sde_jax.a as a_lib\ndef g():\n  return a_lib._hidden\n',
      'lib.py': 'from sde_jax.jobs import train\nfrom sde_jax.b import _secret\n',
      'jobs/__init__.py': '',
      'jobs/train.py': 'from sde_jax import lib\n',
      'cli.py': 'from sde_jax.jobs import train\n',
  })
  graph = import_graph.build(root)
  assert import_graph.cycles(graph) == [['sde_jax.a', 'sde_jax.b', 'sde_jax.c'],
                                        ['sde_jax.jobs.train', 'sde_jax.lib']]
  assert import_graph.upward_imports(graph) == ['sde_jax.lib -> sde_jax.jobs.train']
  assert graph.private_uses == ['sde_jax.c: sde_jax.a._hidden',
                                'sde_jax.lib: from sde_jax.b import _secret']


def test_no_module_starts_jax_at_import():
  """Every module imported in a fresh process, then ``jax.distributed.initialize`` with a
  coordinator on 127.0.0.1: it fails if any import started JAX's backend (a multi-host job calls
  it after its imports)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  modules = sorted(import_graph.module_files())
  code = (f'import importlib, jax\n'
          f'for name in {modules!r}:\n'
          f'  importlib.import_module(name)\n'
          f'jax.distributed.initialize("127.0.0.1:{port}", num_processes=1, process_id=0)\n'
          f'assert jax.process_count() == 1\n'
          f'jax.distributed.shutdown()\n'
          f'print("initialised after", len({modules!r}), "modules")\n')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'initialised after {len(modules)} modules' in proc.stdout
