"""The ``.pth`` reader run in a child process under an address-space limit, so that a crash or a
runaway allocation fails a test (or the fuzz run of bench/fuzz_pth.py) instead of killing it.

Run as a script, it reads files and prints one JSON line for each: ``{"case", "kind",
"outcome", "detail", "seconds", "max_rss"}``, where ``outcome`` is ``same`` or ``changed``
(loaded; its arrays equal those of the unmutated file, or not: fuzz cases only), ``ok`` (loaded),
``CheckpointError``, or the name of any other exception; a line ``{"start": case, "kind"}``
comes first, so a case that crashes the process is known.

  python tests/pth_child.py load FILE[=MAX_BYTES]...
  python tests/pth_child.py fuzz --seed S --n N [--seconds T]

The child imports the reader's modules alone (not the ``sde_jax`` package, which brings JAX), so
that it starts in well under a second.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time
import types
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 1 << 30  # address space of the child: its imports take about 150 MiB


def _child(args: list[str], memory: int) -> dict:
  """The arguments of :class:`subprocess.Popen` that run this script with ``args`` in a child
  limited to ``memory`` bytes of address space."""
  def limit():
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

  env = {'PATH': '/usr/bin:/bin', 'OPENBLAS_NUM_THREADS': '1', 'OMP_NUM_THREADS': '1'}
  return dict(args=[sys.executable, __file__, *args], preexec_fn=limit, env=env, cwd=ROOT,
              text=True)


def run(args: list[str], memory: int = MEMORY_LIMIT, timeout: float = 60) -> tuple[int, list]:
  """Runs this script with ``args`` in a child limited to ``memory`` bytes of address space.

  Returns:
    The child's exit status (negative: the signal that ended it) and its JSON lines (then its
    stderr, if any, as ``{'stderr': ...}``).
  """
  proc = subprocess.run(**_child(args, memory), capture_output=True, timeout=timeout)
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  return proc.returncode, lines + ([{'stderr': proc.stderr[-2000:]}] if proc.stderr else [])


def stream(args: list[str], memory: int = MEMORY_LIMIT) -> Iterator[dict]:
  """As :func:`run`, for long runs: the child's JSON lines as they come, then ``{'rc': its exit
  status, 'stderr': its end}``."""
  with subprocess.Popen(**_child(args, memory), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE) as proc:
    for line in proc.stdout:
      if line.startswith('{'):
        yield json.loads(line)
    stderr = proc.stderr.read()
  yield {'rc': proc.returncode, 'stderr': stderr[-2000:]}


def load_in_child(files: list[tuple[bytes, int | None]], tmp_path: pathlib.Path,
                  memory: int = MEMORY_LIMIT, timeout: float = 60) -> list[dict]:
  """The outcomes of reading each ``(data, max_bytes)`` of ``files`` in one child: their JSON
  lines, then ``{'outcome': 'crash'}`` (or ``'timeout'``) for the one that ended it and those
  after it."""
  args = ['load']
  for i, (data, max_bytes) in enumerate(files):
    (tmp_path / f'{i}.pth').write_bytes(data)
    args.append(str(tmp_path / f'{i}.pth') + ('' if max_bytes is None else f'={max_bytes}'))
  try:
    rc, lines = run(args, memory, timeout)
  except subprocess.TimeoutExpired:
    rc, lines = 'timeout', []
  done = [line for line in lines if 'outcome' in line]
  ended = {'outcome': 'crash' if rc != 'timeout' else 'timeout', 'rc': rc, 'lines': lines[-3:]}
  return done + [ended] * (len(files) - len(done))


def _import_reader():
  """The reader's modules, without ``sde_jax/__init__.py`` (it imports JAX and the models)."""
  sys.path.insert(0, str(ROOT))
  for name in ('sde_jax', 'sde_jax.checkpoints'):
    package = types.ModuleType(name)
    package.__path__ = [str(ROOT / name.replace('.', '/'))]
    sys.modules[name] = package
  from sde_jax.checkpoints import torch_pickle  # pylint: disable=import-outside-toplevel
  return torch_pickle


def _arrays(tree) -> list:
  """The arrays of a loaded tree, in order."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if isinstance(tree, np.ndarray):
    return [tree]
  if isinstance(tree, dict):
    return [a for v in tree.values() for a in _arrays(v)]
  if isinstance(tree, (list, tuple)):
    return [a for v in tree for a in _arrays(v)]
  return []


def _same(a: list, b: list) -> bool:
  return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and
                                  x.tobytes() == y.tobytes() for x, y in zip(a, b))


def peak_rss() -> int:
  """This process's peak resident memory since it started this script, in bytes.

  ``/proc/self/status``'s ``VmHWM``, the high-water mark of the address space that ``exec``
  made, and not ``getrusage``'s ``ru_maxrss``: Linux carries that one over from the process
  before ``exec``, which here is a fork of a pytest worker holding gigabytes (JAX, compiled
  programs), so it measured the worker's memory instead of the reader's.
  """
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('no VmHWM line in /proc/self/status')


def _case(reader, case: int, kind: str, data: bytes, reference: list | None, **kwargs) -> None:
  """Reads one file and prints its JSON line."""
  print(json.dumps({'start': case, 'kind': kind}), flush=True)
  start = time.perf_counter()
  try:
    arrays = _arrays(reader.load(data, f'case{case}.pth', **kwargs))
    outcome = 'ok' if reference is None else 'same' if _same(arrays, reference) else 'changed'
    detail = ''
  except Exception as e:  # pylint: disable=broad-except
    outcome, detail = type(e).__name__, str(e)[:500]
  print(json.dumps({'case': case, 'kind': kind, 'outcome': outcome, 'detail': detail,
                    'seconds': time.perf_counter() - start,
                    'max_rss': peak_rss()}),
        flush=True)


def _fuzz(reader, seed: int, n: int, seconds: float) -> None:
  from tests import pth_fuzz  # pylint: disable=import-outside-toplevel
  originals = pth_fuzz.originals()
  references = [_arrays(reader.load(data, 'original.pth')) for _, data in originals]
  end = time.perf_counter() + seconds
  for case, (which, kind, data) in enumerate(pth_fuzz.mutations(originals, seed, n)):
    if time.perf_counter() > end:
      break
    _case(reader, case, kind, data, references[which])


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=['load', 'fuzz'])
  parser.add_argument('files', nargs='*', help='FILE or FILE=MAX_BYTES')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--n', type=int, default=100)
  parser.add_argument('--seconds', type=float, default=float('inf'))
  args = parser.parse_args(argv)
  reader = _import_reader()
  if args.mode == 'load':
    for case, spec in enumerate(args.files):
      path, _, max_bytes = spec.partition('=')
      kwargs = {'max_bytes': int(max_bytes)} if max_bytes else {}
      _case(reader, case, 'load', pathlib.Path(path).read_bytes(), None, **kwargs)
  else:
    _fuzz(reader, args.seed, args.n, args.seconds)


if __name__ == '__main__':
  main(sys.argv[1:])
