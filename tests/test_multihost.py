"""Multi-host on one machine: processes on 127.0.0.1 with gloo collectives and fake CPU devices.

The collective tests need only JAX and sde_jax.parallel; the training test checks that 2
processes x 2 devices train exactly like 1 process x 4 devices on the same global batches.
Run as ``python -m tests.test_multihost psum|train ...``, this module is the tests' worker.
"""

import glob
import json
import os
import struct
import subprocess
import sys

import chex
import jax
import numpy as np

from sde_jax import checkpoints
from tests.helpers import tiny_flags
from tests.test_launch import ROOT, fake_srun_env, load_local

LOCAL = os.path.join(ROOT, 'launch', 'local.py')
SLURM = os.path.join(ROOT, 'launch', 'slurm.sh')
PSUM_WORKER = [sys.executable, '-m', 'tests.test_multihost', 'psum']
TRAIN_WORKER = [sys.executable, '-m', 'tests.test_multihost', 'train']
# The test recipe's DDPM++ on 8x8 digits (tests.helpers): 3 steps of a global batch of 8, all
# logged, one checkpoint at the end; no warm-up, so the parameters move.
TINY = tiny_flags('digits/ddpmpp_continuous.py', training=dict(
    n_iters=3, n_jitted_steps=1, log_freq=1, eval_freq=1000, snapshot_freq=1000,
    snapshot_freq_for_preemption=1000))
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
  """``sde-jax train`` in which every process reads its rows of the same global batches.

  The data pipeline shards the data set between processes (process p of n owns rows p, p + n,
  ...), so its global batches depend on n; here each process instead takes its slice of the
  stream a single process would read, and any difference between runs comes from the parallel
  code alone.
  """
  from sde_jax import cli
  from sde_jax.data import pipeline
  get_dataset = pipeline.get_dataset

  def rows_of_global_batches(config, split, *, batch_size, **kwargs):
    n, p = jax.process_count(), jax.process_index()
    kwargs.update(process_index=0, process_count=1)
    for batch in get_dataset(config, split, batch_size=batch_size * n, **kwargs):
      yield {k: v[p * batch_size:(p + 1) * batch_size] for k, v in batch.items()}

  pipeline.get_dataset = rows_of_global_batches  # what the trainer's global batches read
  sys.argv = ['sde-jax', 'train', *argv]
  cli.main()


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


def _scalars(workdir, tag):
  """``{step: value}`` of a TensorBoard scalar in ``workdir/tensorboard`` (read without TF)."""
  from tensorboardX.proto import event_pb2
  values = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    data, i = open(path, 'rb').read(), 0
    while i < len(data):  # TFRecord: length (u64), its CRC (u32), payload, payload CRC (u32)
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      values.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
  return values


def test_two_processes_train_like_one_with_four_devices(tmp_path):
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}
  procs = [
      subprocess.Popen([sys.executable, LOCAL, '-n', '2', '--devices-per-process', '2',
                        '--timeout', '240', '--', *TRAIN_WORKER, '--workdir', two, *TINY],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True),
      subprocess.Popen([*TRAIN_WORKER, '--workdir', one, *TINY], cwd=ROOT, env={
          **env, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'{FAST_COMPILE} --xla_force_host_platform_device_count=4'},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  # Both processes of the 2-process job ran every step, on a mesh over all 4 devices.
  for rank in (0, 1):
    log = '\n'.join(line for line in outputs[0].splitlines() if line.startswith(f'[{rank}] '))
    assert "on a {'data': 4, 'fsdp': 1} mesh, 4 images per process" in log
    assert 'step 3/3: loss' in log
  for tag in ('train/loss', 'train/grad_norm'):
    two_values, one_values = _scalars(two, tag), _scalars(one, tag)
    assert sorted(two_values) == [1, 2, 3]
    np.testing.assert_allclose([two_values[s] for s in (1, 2, 3)],
                               [one_values[s] for s in (1, 2, 3)], rtol=1e-5, err_msg=tag)
  one_state, _ = checkpoints.restore(one)
  assert one_state.step == 3
  # The 2-process checkpoint names devices of 2 processes: restore it onto this process's.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  for item in ('params', 'params_ema'):
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), getattr(one_state, item))
    restored, step = checkpoints.restore_params(two, target, item=item)
    assert step == 3
    chex.assert_trees_all_close(restored, getattr(one_state, item), rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  {'psum': _psum_worker, 'train': lambda: _train_worker(sys.argv[2:])}[sys.argv[1]]()
