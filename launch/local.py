#!/usr/bin/env python3
"""Runs one command as N JAX processes on this machine, connected like the hosts of a pod.

    python launch/local.py -n 2 --devices-per-process 2 -- \\
        sde-jax train --config configs/ve/cifar10_ncsnpp_continuous.py --workdir /tmp/run

Each process gets ``JAX_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port),
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (read by ``sde_jax.parallel.initialize``),
``JAX_PLATFORMS=cpu``, ``K`` fake CPU devices (``XLA_FLAGS``) and gloo cross-process
collectives (``JAX_CPU_COLLECTIVES_IMPLEMENTATION``, which jax reads as the default of the
``jax_cpu_collectives_implementation`` option). Output lines are prefixed with the rank. If a
process fails, the others are stopped (they would wait for it in the next collective) and the
launcher exits with the failing process's status. This is how multi-host code is tested without
a cluster; see docs/launch.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

_DEVICE_COUNT_FLAG = re.compile(r'--xla_force_host_platform_device_count=\S*')


def free_port(host: str = '127.0.0.1') -> int:
  """A TCP port that nothing listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind((host, 0))
    return sock.getsockname()[1]


def process_env(rank: int, num_processes: int, devices: int, coordinator: str,
                base: dict[str, str] | None = None) -> dict[str, str]:
  """The variables that make process ``rank`` one host of a ``num_processes``-host CPU job.

  Only the variables set here are returned; merge them into the inherited environment. A device
  count flag already in ``XLA_FLAGS`` (e.g. a test's) is replaced, other XLA flags are kept.
  """
  base = os.environ if base is None else base
  xla_flags = _DEVICE_COUNT_FLAG.sub('', base.get('XLA_FLAGS', '')).split()
  xla_flags.append(f'--xla_force_host_platform_device_count={devices}')
  return {
      'JAX_COORDINATOR_ADDRESS': coordinator,
      'JAX_NUM_PROCESSES': str(num_processes),
      'JAX_PROCESS_ID': str(rank),
      'JAX_PLATFORMS': 'cpu',
      'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
      'XLA_FLAGS': ' '.join(xla_flags),
  }


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='launch/local.py', description=__doc__.split('\n\n')[0],
      usage='%(prog)s [-n N] [--devices-per-process K] [--port P] [--dry-run] -- COMMAND ...')
  parser.add_argument('-n', '--num-processes', type=int, default=2,
                      help='number of processes (hosts) to start (default 2)')
  parser.add_argument('--devices-per-process', type=int, default=1, metavar='K',
                      help='fake CPU devices per process (default 1)')
  parser.add_argument('--port', type=int, default=None,
                      help='coordinator port on 127.0.0.1 (default: a free one)')
  parser.add_argument('--timeout', type=float, default=None, metavar='SECONDS',
                      help='stop every process and fail after this many seconds')
  parser.add_argument('--dry-run', action='store_true',
                      help='print the command of every process (with its environment) and exit')
  if '--' in argv:
    split = argv.index('--')
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
  else:
    args, command = parser.parse_args(argv), []
  if not command:
    parser.error('no command given; put it after "--", e.g. -- sde-jax train --config C '
                 '--workdir D')
  if args.num_processes < 1:
    parser.error(f'-n must be at least 1, got {args.num_processes}')
  if args.devices_per_process < 1:
    parser.error(f'--devices-per-process must be at least 1, got {args.devices_per_process}')
  if args.port is not None and not 0 < args.port < 65536:
    parser.error(f'--port must be in 1..65535, got {args.port}')
  args.command = command
  return args


def _pump(rank: int, stream, lock: threading.Lock) -> None:
  """Copies a process's output to ours, each line prefixed with its rank."""
  for line in iter(stream.readline, b''):
    text = line.decode(errors='replace').rstrip('\n')
    with lock:
      sys.stdout.write(f'[{rank}] {text}\n')
      sys.stdout.flush()
  stream.close()


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
  """SIGTERM to every running process group, SIGKILL to those still alive after ``grace``."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
      time.sleep(0.05)


def _exit_status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


def _wait(procs: list[subprocess.Popen], timeout: float | None) -> int:
  """Waits for all processes; the first failure (or the timeout) stops the rest."""
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    codes = [p.poll() for p in procs]
    failed = [(rank, c) for rank, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      rank, code = failed[0]
      print(f'[launch] process {rank} exited with status {_exit_status(code)}; stopping the '
            'others', file=sys.stderr, flush=True)
      _stop(procs)
      return _exit_status(code)
    if all(c == 0 for c in codes):
      return 0
    if deadline is not None and time.monotonic() > deadline:
      print(f'[launch] timeout after {timeout:g} s; stopping every process', file=sys.stderr,
            flush=True)
      _stop(procs)
      return 124
    time.sleep(0.05)


def launch(command: list[str], num_processes: int, devices: int, port: int | None = None,
           timeout: float | None = None) -> int:
  """Starts ``command`` ``num_processes`` times as one JAX job and returns its exit status."""
  coordinator = f'127.0.0.1:{port or free_port()}'
  procs, pumps, lock = [], [], threading.Lock()

  def forward(signum, frame):  # a stopped launcher must not leave orphans behind
    _stop(procs)
    sys.exit(128 + signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for rank in range(num_processes):
      env = {**os.environ, **process_env(rank, num_processes, devices, coordinator),
             'PYTHONUNBUFFERED': '1'}
      proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(proc)
      pumps.append(threading.Thread(target=_pump, args=(rank, proc.stdout, lock), daemon=True))
      pumps[-1].start()
    status = _wait(procs, timeout)
  finally:
    _stop(procs)
    for s, handler in previous.items():
      signal.signal(s, handler)
  for pump in pumps:
    pump.join(timeout=5)
  return status


def dry_run(command: list[str], num_processes: int, devices: int, port: int | None) -> str:
  """One shell line per process: its variables and the command."""
  coordinator = f'127.0.0.1:{port or free_port()}'
  lines = []
  for rank in range(num_processes):
    env = process_env(rank, num_processes, devices, coordinator)
    assignments = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
    lines.append(f'env {assignments} {shlex.join(command)}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.dry_run:
    print(dry_run(args.command, args.num_processes, args.devices_per_process, args.port))
    return 0
  try:
    return launch(args.command, args.num_processes, args.devices_per_process, args.port,
                  args.timeout)
  except FileNotFoundError as e:
    print(f'launch/local.py: cannot start {args.command[0]!r}: {e.strerror}', file=sys.stderr)
    return 127


if __name__ == '__main__':
  sys.exit(main())
