"""Multi-host on one machine: processes on 127.0.0.1 with gloo collectives and fake CPU devices.

The collective tests need only JAX and sde_jax.parallel. The training tests run one 2-process
job (2 devices each, parameters sharded over fsdp = 2, 2 steps per compiled call), preempted by
SIGTERM to one process, resumed at 1 process x 4 devices and SIGKILLed there, then resumed at
4 processes x 1 device (fsdp = 2), and check that both processes of the first save the same
step and stop, and that the three parts together read the global batches of an uninterrupted
1 process x 4 devices run with fsdp = 1 (issue 27: the elastic input pipeline) and train like it.
Run as ``python -m tests.test_multihost psum|train ...``, this module is the tests' worker.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from tests.helpers import subprocess_env, tiny_flags, workdir_scalars
from tests.test_launch import ROOT, fake_srun_env, load_local
from tests.test_train import restore_trained

LOCAL = os.path.join(ROOT, 'launch', 'local.py')
SLURM = os.path.join(ROOT, 'launch', 'slurm.sh')
PSUM_WORKER = [sys.executable, '-m', 'tests.test_multihost', 'psum']
TRAIN_WORKER = [sys.executable, '-m', 'tests.test_multihost', 'train']
# The test recipe's DDPM++ on 8x8 digits (tests.helpers): 20 steps of a global batch of 8, 2 per
# compiled call (several, as in the paper's configs' 5; XLA:CPU unrolls them, and 5 compiled in
# 11.5 s against 2's 5.1 s, in each of the seven processes that compile), each call logged, one
# checkpoint at the end (and one on preemption); no warm-up, so the parameters move. SIGTERM
# once step SIGTERM_AT is logged, SIGKILL once SIGKILL_AT is.
N_JITTED = 2
TRAINING = dict(n_iters=20, n_jitted_steps=N_JITTED, log_freq=N_JITTED, eval_freq=1000,
                snapshot_freq=1000, snapshot_freq_for_preemption=1000)
LOGGED = list(range(N_JITTED, 21, N_JITTED))
SIGTERM_AT, SIGKILL_AT = 4, 16
# Each batch waits this long, so that a compiled call (N_JITTED steps) outlasts the 1 s in which
# JAX's SIGTERM notifier looks for the signal: the save comes before the end on any machine.
BATCH_DELAY = 0.6
TINY = tiny_flags('digits/ddpmpp_continuous.py', training=TRAINING)
TINY_FSDP = tiny_flags('digits/ddpmpp_continuous.py', training=TRAINING, parallel=dict(fsdp=2))
TINY_EVERY_CALL = tiny_flags('digits/ddpmpp_continuous.py',
                             training=dict(TRAINING, snapshot_freq_for_preemption=N_JITTED))
# Unoptimised XLA code compiles ~5x faster on CPU; both runs use it, so they stay comparable.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def _psum_worker():
  """Process p of n feeds rows [4p/n, 4(p+1)/n) of a (4, 2) batch, row r = (r, r^2); prints
  the sums."""
  import jax.numpy as jnp
  from sde_jax import parallel
  parallel.initialize()

  mesh = parallel.make_mesh()
  p = jax.process_index()
  k = 4 // jax.process_count()
  rows = np.arange(k * p, k * (p + 1), dtype=np.float32)
  x = parallel.host_local_to_global(np.stack([rows, rows ** 2], axis=1), mesh)
  total = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=parallel.replicated(mesh))(x)
  psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, parallel.BATCH_AXES), mesh=mesh,
                               in_specs=jax.P(parallel.BATCH_AXES), out_specs=jax.P()))(x)
  print('RESULT ' + json.dumps({
      'process': p, 'processes': jax.process_count(), 'devices': jax.device_count(),
      'local_devices': jax.local_device_count(),
      'collectives': jax.config.jax_cpu_collectives_implementation,
      'global_shape': list(x.shape), 'sum': np.asarray(total).tolist(),
      'psum': np.asarray(psum).tolist()}), flush=True)


def _train_worker(argv):
  """``sde-jax train``, printing the example ids of every train batch each process reads.

  A first argument ``--batch_delay=S`` makes each batch wait S seconds; ``--split_replicated``
  makes orbax split every replicated array among its replicas (each process then writes files
  of its own). Prints ``PID <id>`` (for a test to signal this process alone) and, per train
  batch, ``IDS [step, rows, ids]`` (its rows of the global batch and their examples).
  """
  delay = 0.0
  if argv and argv[0].startswith('--batch_delay='):
    delay, argv = float(argv[0].split('=', 1)[1]), argv[1:]
  if argv and argv[0] == '--split_replicated':
    from sde_jax.checkpoints import sealed_manager
    sealed_manager.MIN_SLICE_BYTES, argv = 0, argv[1:]
  from sde_jax import cli
  from sde_jax.data import pipeline
  get_dataset = pipeline.get_dataset

  def recorded(config, split, *, batch_size, **kwargs):
    step = kwargs.get('start_step', 0)
    for batch in get_dataset(config, split, batch_size=batch_size, **kwargs):
      time.sleep(delay)
      if split == 'train':
        print('IDS ' + json.dumps([step, kwargs['rows'], batch['index'].tolist()]), flush=True)
        step += 1
      yield batch

  pipeline.get_dataset = recorded  # what the trainer's global batches read
  print(f'PID {os.getpid()}', flush=True)  # for the preemption test's SIGTERM
  sys.argv = ['sde-jax', 'train', *argv]
  cli.main()


def _global_ids(output):
  """``{step: ids of the global batch}`` from a job's ``IDS`` lines (every process's rows)."""
  steps = {}
  for line in output.splitlines():
    if 'IDS ' in line:
      step, rows, ids = json.loads(line.split('IDS ', 1)[1])
      steps.setdefault(step, {}).update(zip(rows, ids))
  return {step: [rows[r] for r in sorted(rows)] for step, rows in steps.items()}


def _results(stdout):
  out = {}
  for line in stdout.splitlines():
    if 'RESULT ' in line:
      result = json.loads(line.split('RESULT ', 1)[1])
      out[result['process']] = result
  return out


def _check_psum(results, processes):
  assert sorted(results) == list(range(processes))
  for r in results.values():
    assert (r['processes'], r['devices'], r['local_devices']) == (processes, 4, 4 // processes)
    assert r['collectives'] == 'gloo' and r['global_shape'] == [4, 2]
    assert r['sum'] == [6.0, 14.0]            # 0+1+2+3, 0+1+4+9: every process's rows
    assert r['psum'] == [[6.0, 14.0]]


def _run(cmd, env=None, timeout=120):
  return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                        text=True, timeout=timeout)


def test_two_processes_reduce_over_four_devices():
  proc = _run([sys.executable, LOCAL, '-n', '2', '--devices-per-process', '2', '--timeout',
               '100', '--', *PSUM_WORKER])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  _check_psum(_results(proc.stdout), 2)


def test_one_process_with_four_devices_gives_the_same_sums():
  proc = _run([sys.executable, LOCAL, '-n', '1', '--devices-per-process', '4', '--', *PSUM_WORKER])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  _check_psum(_results(proc.stdout), 1)


def test_slurm_launcher_connects_the_processes(tmp_path):
  """launch/slurm.sh under a stand-in srun: the SLURM variables alone connect 2 processes."""
  env = {'SLURM_JOB_ID': '77', 'SLURM_JOB_NODELIST': 'localhost', 'SLURM_JOB_NUM_NODES': '1',
         'SLURM_GPUS_ON_NODE': '2', 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2', **fake_srun_env(tmp_path)}
  proc = _run([SLURM, '--port', str(load_local().free_port()), '--', *PSUM_WORKER], env=env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  _check_psum(_results(proc.stdout), 2)


def _rank_lines(output, rank):
  return [line for line in output.splitlines() if line.startswith(f'[{rank}] ')]


def _logged_steps(lines):
  return [int(m[1]) for m in map(re.compile(r'step (\d+)/\d+: loss').search, lines) if m]


def _sigterm_once_logged(proc, rank, step):
  """Reads ``proc``'s output until ``rank`` logs ``step``, sends SIGTERM to that process alone
  (its id is the worker's ``PID`` line), then reads to the end.

  Returns:
    The launcher's status, its output, and the wall-clock times (``time.time()``) of the signal
    and of the launcher's exit.
  """
  lines, pid, sent = [], None, None
  for line in proc.stdout:
    lines.append(line.rstrip('\n'))
    if line.startswith(f'[{rank}] PID '):
      pid = int(line.split()[-1])
    if sent is None and line.startswith(f'[{rank}] ') and f'step {step}/' in line:
      os.kill(pid, signal.SIGTERM)
      sent = time.time()
  proc.wait(timeout=60)
  return proc.returncode, '\n'.join(lines), (sent, time.time())


def _sigkill_once_logged(proc, step):
  """Reads ``proc``'s output until it logs ``step``, then SIGKILLs it (no save, no clean-up);
  returns its status and output."""
  lines = []
  for line in proc.stdout:
    lines.append(line.rstrip('\n'))
    if f'step {step}/' in line and proc.poll() is None:
      proc.kill()
  proc.wait(timeout=60)
  return proc.returncode, '\n'.join(lines)


@pytest.fixture(scope='module')
def jobs(tmp_path_factory, compilation_cache):
  """The training jobs of ``TINY_FSDP`` and ``TINY``, one workdir resumed at three layouts:

  - 'preempted': 2 processes x 2 devices, fsdp 2; SIGTERM to process 1 alone once it has logged
    step SIGTERM_AT (it saves that step and stops);
  - 'resumed_1x4': 1 process x 4 devices, fsdp 1, in the same workdir, checkpointing every
    compiled call, SIGKILLed once it has logged step SIGKILL_AT (its newest committed checkpoint
    survives);
  - 'resumed_4x1': 4 processes x 1 device, fsdp 2, in the same workdir, to the end;
  - 'one': ``TINY`` in one process over 4 devices, with fsdp 1, uninterrupted, alongside
    'preempted'.

  Returns ``{name: (status, output, workdir)}`` and ``'saved_before_resume'``: the checkpoints
  of 'preempted' before the resumes ran. (Two multi-process jobs at once are avoided: on this
  machine they have hung.)
  """
  root = tmp_path_factory.mktemp('multihost')
  env = subprocess_env(compilation_cache, XLA_FLAGS=FAST_COMPILE)
  two_processes = [sys.executable, LOCAL, '-n', '2', '--devices-per-process', '2', '--timeout',
                   '240', '--', *TRAIN_WORKER]
  two, one = str(root / 'two'), str(root / 'one')
  one_env = {**env, 'XLA_FLAGS': f'{FAST_COMPILE} --xla_force_host_platform_device_count=4'}
  one_job = subprocess.Popen([*TRAIN_WORKER, '--workdir', one, *TINY], cwd=ROOT, env=one_env,
                             stdout=open(root / 'one.log', 'w'), stderr=subprocess.STDOUT)
  preempted = subprocess.Popen([*two_processes, f'--batch_delay={BATCH_DELAY}', '--workdir', two,
                                *TINY_FSDP], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
  status, output, (sent, exited) = _sigterm_once_logged(preempted, rank=1, step=SIGTERM_AT)
  out = {'preempted': (status, output, two)}
  saved = os.path.join(two, 'checkpoints')
  out['saved_before_resume'] = sorted(int(d) for d in os.listdir(saved))
  # orbax commits a step by renaming its temporary directory into `saved`: the last change there.
  out['seconds_after_sigterm'] = {'committed': os.stat(saved).st_mtime - sent,
                                  'exited': exited - sent}
  # The delay per batch puts 1.2 s between a checkpoint and the log of the next call's step.
  killed = subprocess.Popen([*TRAIN_WORKER, f'--batch_delay={BATCH_DELAY}', '--workdir', two,
                             *TINY_EVERY_CALL],
                            cwd=ROOT, env=one_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  out['resumed_1x4'] = (*_sigkill_once_logged(killed, step=SIGKILL_AT), two)
  # Every array split among its replicas: each process writes part of each (its replicas), and
  # the manifest of the last step must list them.
  resumed = subprocess.run([sys.executable, LOCAL, '-n', '4', '--devices-per-process', '1',
                            '--timeout', '240', '--', *TRAIN_WORKER, '--split_replicated',
                            '--workdir', two, *TINY_FSDP],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  out['resumed_4x1'] = (resumed.returncode, resumed.stdout + resumed.stderr, two)
  one_job.wait(timeout=300)
  out['one'] = (one_job.returncode, (root / 'one.log').read_text(), one)
  return out


def test_sigterm_to_one_process_saves_the_same_step_on_both(jobs):
  """SIGTERM to process 1 alone: both processes save one step, off the checkpoint cadence,
  within two compiled calls of the moment JAX's notifier caught the signal, and exit 0; the
  step is committed, and the whole job has exited, within 30 s of the signal (the grace before
  SIGKILL of SLURM's default and about a preemptible VM's notice). Measured here: committed
  after 3-9 s, exited after 4-13 s (the longer with three other jobs busy on the 2 cores)."""
  status, output, _ = jobs['preempted']
  assert status == 0, output[-5000:]
  saved = set()
  for rank in (0, 1):
    found = [re.search(r'Preempted: saved step (\d+); stopping', line)
             for line in _rank_lines(output, rank)]
    saved |= {int(m[1]) for m in found if m}
  assert len(saved) == 1, output[-5000:]  # the same step on both, and only one
  (step,) = saved
  assert jobs['saved_before_resume'] == [step] and step < LOGGED[-1]
  lines = _rank_lines(output, 1)
  caught = next(i for i, line in enumerate(lines) if 'SIGTERM caught at' in line)
  last_logged = max(_logged_steps(lines[:caught]))
  assert last_logged <= step <= last_logged + 2 * N_JITTED, (last_logged, step)
  seconds = jobs['seconds_after_sigterm']
  assert 0 < seconds['committed'] <= seconds['exited'] < 30, seconds
  print(seconds)
  print(f'SIGTERM caught after step {last_logged} was logged; saved step {step} '
        f'({(step - last_logged) // N_JITTED} compiled calls later)')


def _differences(a, b):
  """``(||a - b|| / ||b||, max |a - b|)`` over all the leaves of two trees."""
  pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64))
           for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  diff = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in pairs))
  norm = np.sqrt(sum(np.sum(y ** 2) for _, y in pairs))
  return float(diff / norm), max(float(np.max(np.abs(x - y))) for x, y in pairs)


def test_preempted_at_2x2_killed_at_1x4_resumed_at_4x1_trains_like_one_process(jobs):
  """One workdir trained at three layouts (2 x 2 with fsdp 2, preempted; 1 x 4, SIGKILLed;
  4 x 1 with fsdp 2, to the end) reads, step for step, the global batches of the uninterrupted
  1 x 4 run (example ids compared exactly), and gives its losses, parameters, optimizer state
  and key to float rounding: the sharded programs sum the gradient in another order (measured:
  parameters 3.5e-8 in relative norm, 1.4e-7 at most absolute; EMA 6.1e-9, optimizer state
  2.2e-9). The examples are the same, so rounding is the floor: an uninterrupted 2 x 2 run
  differed from 'one' as much (6e-7 absolute on the parameters)."""
  for name in ('preempted', 'resumed_4x1', 'one'):
    assert jobs[name][0] == 0, jobs[name][1][-5000:]
  killed = jobs['resumed_1x4']
  assert killed[0] == -signal.SIGKILL, killed[1][-5000:]
  step = jobs['saved_before_resume'][0]
  assert f"from step {step} to {LOGGED[-1]} on a {{'data': 4, 'fsdp': 1}} mesh" in killed[1]
  final = jobs['resumed_4x1'][1]
  resumed_at = {int(m[1]) for m in re.finditer(rf'from step (\d+) to {LOGGED[-1]} on a', final)}
  assert len(resumed_at) == 1 and step < min(resumed_at) < LOGGED[-1], (step, resumed_at)
  (resumed_at,) = resumed_at
  for rank in range(4):  # every process ran every step, on a mesh over all 4 devices
    log = '\n'.join(_rank_lines(final, rank))
    assert f"from step {resumed_at} to {LOGGED[-1]} on a {{'data': 2, 'fsdp': 2}} mesh" in log
    assert 'FSDP parameters: 17 of 74 arrays, 89.4% of the 10593 values, split over fsdp=2' in log
  # The examples: each segment's global batches are those of 'one' at the same steps, and the
  # segments kept (0 to the preemption, on to the 1 x 4 run's last checkpoint, on to the end)
  # cover every step once.
  one_ids = _global_ids(jobs['one'][1])
  assert sorted(one_ids) == list(range(LOGGED[-1]))
  segments = [(jobs['preempted'][1], 0, step), (killed[1], step, resumed_at),
              (final, resumed_at, LOGGED[-1])]
  for output, first, last in segments:
    ids = _global_ids(output)
    assert set(range(first, last)) <= set(ids), (first, last, sorted(ids))
    for s in ids:
      assert ids[s] == one_ids[s], s
  two, one = jobs['resumed_4x1'][2], jobs['one'][2]
  for tag in ('train/loss', 'train/grad_norm'):
    two_values, one_values = workdir_scalars(two, tag), workdir_scalars(one, tag)
    assert sorted(two_values) == sorted(one_values) == LOGGED
    np.testing.assert_allclose([two_values[s] for s in LOGGED], [one_values[s] for s in LOGGED],
                               rtol=1e-5, err_msg=tag)
  # Process 0 wrote the manifest after every process had written its files: it covers them all
  # (with --split_replicated; by default process 0 holds a replica of every array of this mesh
  # and, all of them under sealed_manager.MIN_SLICE_BYTES, writes them whole).
  with open(os.path.join(two, 'checkpoints', str(LOGGED[-1]), 'manifest.json')) as f:
    files = json.load(f)['files']
  writers = {p for p in range(4) if any(f'ocdbt.process_{p}/' in name for name in files)}
  assert len(writers) > 1 and 0 in writers, writers
  # A checkpoint of several processes names their devices: restore_trained puts it whole on ours.
  two, one = restore_trained(two), restore_trained(one)
  assert int(two['loop']['step']) == int(one['loop']['step']) == LOGGED[-1]
  for item in ('params', 'params_ema', 'opt_state'):
    chex.assert_trees_all_close(two[item], one[item], rtol=1e-5, atol=1e-6)
    print(item, 'relative norm of the difference, max |difference|:',
          _differences(two[item], one[item]))
  chex.assert_trees_all_equal(two['loop']['key'], one['loop']['key'])


if __name__ == '__main__':
  {'psum': _psum_worker, 'train': lambda: _train_worker(sys.argv[2:])}[sys.argv[1]]()
