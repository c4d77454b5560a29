"""The launchers in launch/: their dry runs print what they run, and bad arguments are clear errors.

gcloud and srun are replaced by stand-ins on PATH, so the commands the scripts really run are
checked against their dry runs, and the per-task environment the SLURM script builds is checked
the way srun would hand it to each task.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, 'launch', 'local.py')
TPU = os.path.join(ROOT, 'launch', 'tpu_pod.sh')
SLURM = os.path.join(ROOT, 'launch', 'slurm.sh')
TRAIN = ['sde-jax', 'train', '--config', 'configs/ve/cifar10_ncsnpp_continuous.py',
         '--workdir', '/tmp/run']
# Prints the JAX variables a process sees, as one JSON line.
PRINT_ENV = [sys.executable, '-c', 'import json, os; print(json.dumps({k: v for k, v in '
             'os.environ.items() if k.startswith(("JAX_", "XLA_", "SLURM_", "SDE_JAX"))}))']

# srun stand-in: starts --ntasks copies of the command with the variables srun gives each task.
FAKE_SRUN = textwrap.dedent('''\
    #!{python}
    import os, subprocess, sys
    args = sys.argv[1:]
    opts = {{}}
    while args[0].startswith('--'):
      key, _, value = args.pop(0)[2:].partition('=')
      opts[key] = value
    with open(os.environ['FAKE_SRUN_LOG'], 'a') as f:
      f.write(repr(sys.argv[1:]) + '\\n')
    n, per_node = int(opts['ntasks']), int(opts['ntasks-per-node'])
    procs = [subprocess.Popen(args, env={{**os.environ, 'SLURM_PROCID': str(i),
                                         'SLURM_NTASKS': str(n), 'SLURM_LOCALID': str(i % per_node),
                                         'SLURM_NODEID': str(i // per_node)}},
                              stdout=subprocess.PIPE, text=True) for i in range(n)]
    for i, p in enumerate(procs):
      out, _ = p.communicate()
      sys.stdout.write(''.join(f'{{i}}: {{line}}\\n' for line in out.splitlines()))
    sys.exit(max(p.returncode for p in procs))
    ''')


def _run(cmd, env=None, timeout=120):
  return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                        text=True, timeout=timeout)


def _env_lines(stdout):
  """``env A=1 B=2 cmd ...`` lines -> [(variables, command)]."""
  parsed = []
  for line in stdout.strip().splitlines():
    words = shlex.split(line)
    assert words[0] == 'env', line
    n = next(i for i, w in enumerate(words[1:], 1) if '=' not in w)
    parsed.append((dict(w.split('=', 1) for w in words[1:n]), words[n:]))
  return parsed


def load_local():
  """launch/local.py as a module (launch/ is a folder of scripts, not a package)."""
  spec = importlib.util.spec_from_file_location('launch_local', LOCAL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fake_bin(tmp_path, name, source):
  """An executable ``name`` in ``tmp_path/bin``; returns the PATH that finds it first."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / name).write_text(source)
  (bin_dir / name).chmod(0o755)
  return f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'


def fake_srun_env(tmp_path):
  """Variables that put a fake srun first on PATH (its argv log under FAKE_SRUN_LOG)."""
  return {'PATH': fake_bin(tmp_path, 'srun', FAKE_SRUN.format(python=sys.executable)),
          'FAKE_SRUN_LOG': str(tmp_path / 'srun.log')}


# launch/local.py


def test_local_dry_run_prints_each_process_environment():
  proc = _run([sys.executable, LOCAL, '-n', '3', '--devices-per-process', '2', '--port', '5555',
               '--dry-run', '--', *TRAIN, '--config.model.attn_resolutions=()'],
              env={'XLA_FLAGS': '--xla_cpu_enable_fast_math=false '
                                '--xla_force_host_platform_device_count=8'})
  assert proc.returncode == 0, proc.stderr
  lines = _env_lines(proc.stdout)
  assert len(lines) == 3
  for rank, (variables, command) in enumerate(lines):
    assert variables == {
        'JAX_COORDINATOR_ADDRESS': '127.0.0.1:5555', 'JAX_NUM_PROCESSES': '3',
        'JAX_PROCESS_ID': str(rank), 'JAX_PLATFORMS': 'cpu',
        'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
        # The inherited device count is replaced, other XLA flags are kept.
        'XLA_FLAGS': '--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2'}
    assert command == [*TRAIN, '--config.model.attn_resolutions=()']


def test_local_dry_run_picks_a_free_port():
  proc = _run([sys.executable, LOCAL, '-n', '2', '--dry-run', '--', 'true'])
  (first, _), (second, _) = _env_lines(proc.stdout)
  host, port = first['JAX_COORDINATOR_ADDRESS'].split(':')
  assert host == '127.0.0.1' and 0 < int(port) < 65536
  assert second['JAX_COORDINATOR_ADDRESS'] == first['JAX_COORDINATOR_ADDRESS']


def test_local_runs_every_rank_with_its_environment_and_prefixes_output():
  proc = _run([sys.executable, LOCAL, '-n', '2', '--devices-per-process', '3', '--', *PRINT_ENV])
  assert proc.returncode == 0, proc.stdout + proc.stderr
  seen = {}
  for line in proc.stdout.splitlines():
    rank, _, payload = line.partition(' ')
    seen[rank] = json.loads(payload)
  assert sorted(seen) == ['[0]', '[1]']
  for rank in (0, 1):
    env = seen[f'[{rank}]']
    assert env['JAX_PROCESS_ID'] == str(rank) and env['JAX_NUM_PROCESSES'] == '2'
    assert env['XLA_FLAGS'].split().count('--xla_force_host_platform_device_count=3') == 1
  assert seen['[0]']['JAX_COORDINATOR_ADDRESS'] == seen['[1]']['JAX_COORDINATOR_ADDRESS']


def test_local_failure_stops_the_other_processes_and_returns_its_status():
  script = ('import os, sys, time; rank = int(os.environ["JAX_PROCESS_ID"]); '
            'print("started", flush=True); time.sleep(0.5 if rank == 1 else 120); sys.exit(3)')
  start = time.monotonic()
  proc = _run([sys.executable, LOCAL, '-n', '3', '--', sys.executable, '-c', script])
  assert proc.returncode == 3
  assert time.monotonic() - start < 30  # ranks 0 and 2 were stopped, not waited for
  assert 'process 1 exited with status 3' in proc.stderr
  assert sorted(proc.stdout.split('\n')[:-1]) == ['[0] started', '[1] started', '[2] started']


def test_local_timeout_stops_everything():
  proc = _run([sys.executable, LOCAL, '-n', '2', '--timeout', '1', '--', 'sleep', '60'])
  assert proc.returncode == 124 and 'timeout' in proc.stderr


@pytest.mark.parametrize('args, message', [
    (['-n', '2'], 'no command given'),
    (['-n', '2', '--'], 'no command given'),
    (['-n', '0', '--', 'true'], '-n must be at least 1'),
    (['--devices-per-process', '0', '--', 'true'], '--devices-per-process must be at least 1'),
    (['--port', '70000', '--', 'true'], '--port must be in 1..65535'),
    (['-n', 'two', '--', 'true'], "invalid int value: 'two'"),
])
def test_local_bad_arguments(args, message):
  proc = _run([sys.executable, LOCAL, *args])
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_local_missing_program_is_a_clear_error():
  proc = _run([sys.executable, LOCAL, '-n', '2', '--', 'no-such-program-xyz'])
  assert proc.returncode == 127 and "cannot start 'no-such-program-xyz'" in proc.stderr


# launch/tpu_pod.sh

TPU_ARGS = ['--tpu', 'my-pod', '--zone', 'us-central2-b', '--config',
            'configs/ve/cifar10_ncsnpp_continuous.py', '--workdir', 'gs://bucket/run1']


def _gcloud_commands(stdout):
  return [shlex.split(line) for line in stdout.strip().splitlines()]


def test_tpu_dry_run_runs_train_on_every_worker():
  proc = _run([TPU, *TPU_ARGS, '--dry-run', '--config.training.batch_size=512',
               '--config.model.attn_resolutions=(16,)', '--', '--config.training.n_iters=10'])
  assert proc.returncode == 0, proc.stderr
  (gcloud,) = _gcloud_commands(proc.stdout)
  assert gcloud[:-1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-pod', '--zone',
                         'us-central2-b', '--worker=all', '--command']
  remote = gcloud[-1]
  assert 'SDE_JAX_DISTRIBUTED=1' in remote
  assert remote.endswith(
      "sde-jax train --config configs/ve/cifar10_ncsnpp_continuous.py --workdir gs://bucket/run1 "
      "--config.training.batch_size=512 '--config.model.attn_resolutions=(16,)' "
      '--config.training.n_iters=10')


def test_tpu_dry_run_with_repo_installs_first():
  proc = _run([TPU, *TPU_ARGS, '--project', 'proj', '--repo', 'https://example.com/sde-jax.git',
               '--ref', 'v1.0', '--dir', 'code', '--dry-run'])
  assert proc.returncode == 0, proc.stderr
  setup, train = _gcloud_commands(proc.stdout)
  for command in (setup, train):
    assert command[5:11] == ['my-pod', '--zone', 'us-central2-b', '--project', 'proj',
                             '--worker=all']
  assert 'git clone --quiet https://example.com/sde-jax.git code' in setup[-1]
  assert 'fetch --quiet origin v1.0' in setup[-1] and "pip install" in setup[-1]
  assert train[-1].startswith('cd code && ')


def test_tpu_remote_command_passes_flags_through_intact(tmp_path):
  """The --command string, run by a shell on a 'worker', gives sde-jax exactly our flags."""
  flags = ['--config.model.attn_resolutions=(16,)', '--config.data.tfrecords_path=a b']
  proc = _run([TPU, *TPU_ARGS, '--dir', str(tmp_path), '--dry-run', *flags])
  remote = _gcloud_commands(proc.stdout)[0][-1]
  path = fake_bin(tmp_path, 'sde-jax', f'#!{sys.executable}\nimport json, os, sys\n'
                  'print(json.dumps([sys.argv[1:], os.environ["SDE_JAX_DISTRIBUTED"]]))\n')
  worker = _run(['bash', '-c', remote], env={'PATH': path})
  assert worker.returncode == 0, worker.stderr
  argv, distributed = json.loads(worker.stdout)
  assert argv == ['train', '--config', 'configs/ve/cifar10_ncsnpp_continuous.py', '--workdir',
                  'gs://bucket/run1', *flags]
  assert distributed == '1'


def test_tpu_runs_what_the_dry_run_prints(tmp_path):
  log = tmp_path / 'gcloud.log'
  path = fake_bin(tmp_path, 'gcloud', f'#!{sys.executable}\nimport sys\n'
                  f'open({str(log)!r}, "a").write(repr(sys.argv[1:]) + "\\n")\n')
  args = [*TPU_ARGS, '--repo', 'https://example.com/sde-jax.git', '--detach']
  dry = _run([TPU, *args, '--dry-run'])
  real = _run([TPU, *args], env={'PATH': path})
  assert real.returncode == 0, real.stderr
  ran = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 (our own repr)
  assert [['gcloud', *argv] for argv in ran] == _gcloud_commands(dry.stdout)
  assert 'nohup sde-jax train' in ran[1][-1] and ran[1][-1].endswith('&')


@pytest.mark.parametrize('drop_or_change, message', [
    (('--zone', None), '--zone ZONE is required'),
    (('--tpu', None), '--tpu NAME is required'),
    (('--workdir', '/local/dir'), "--workdir must be a gs:// path that every worker shares, "
                                  "got '/local/dir'"),
    (('--bogus', 'x'), "unknown argument '--bogus'"),
    (('--ref', 'v1'), '--ref needs --repo'),
])
def test_tpu_bad_arguments(drop_or_change, message):
  flag, value = drop_or_change
  args = dict(zip(TPU_ARGS[::2], TPU_ARGS[1::2]))
  if value is None:
    del args[flag]
  else:
    args[flag] = value
  proc = _run([TPU, *[w for kv in args.items() for w in kv], '--dry-run'])
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not proc.stdout


def test_tpu_option_without_value():
  proc = _run([TPU, *TPU_ARGS, '--zone'])
  assert proc.returncode == 2 and '--zone needs a value' in proc.stderr


# launch/slurm.sh

SLURM_ENV = {'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[007-008]',
             'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '4'}


def _srun_line(stdout):
  comment, srun = stdout.strip().splitlines()
  assert comment.startswith('# ')
  return shlex.split(srun)


def test_slurm_dry_run_one_process_per_gpu():
  proc = _run([SLURM, '--dry-run', '--', *TRAIN], env=SLURM_ENV)
  assert proc.returncode == 0, proc.stderr
  srun = _srun_line(proc.stdout)
  port = 4242 % 4096 + 61440
  assert srun[:6] == ['srun', '--nodes=2', '--ntasks=8', '--ntasks-per-node=4',
                      '--kill-on-bad-exit=1', '--label']
  assert srun[6:8] == ['bash', '-c'] and srun[9:] == ['bash', *TRAIN]
  assert srun[8].startswith(f'export JAX_COORDINATOR_ADDRESS=gpu007:{port} '
                            'JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID;')
  assert f'coordinator gpu007:{port}' in proc.stdout


def test_slurm_dry_run_one_process_per_node():
  proc = _run([SLURM, '--dry-run', '--per-node', '--port', '1234', '--', *TRAIN], env=SLURM_ENV)
  srun = _srun_line(proc.stdout)
  assert srun[1:4] == ['--nodes=2', '--ntasks=2', '--ntasks-per-node=1']
  assert srun[8] == ('export JAX_COORDINATOR_ADDRESS=gpu007:1234 JAX_NUM_PROCESSES=$SLURM_NTASKS '
                     'JAX_PROCESS_ID=$SLURM_PROCID JAX_LOCAL_DEVICE_IDS=0,1,2,3; exec "$@"')


@pytest.mark.parametrize('nodelist, first', [
    ('node7', 'node7'), ('node7,node9', 'node7'), ('gpu[003-010,012],cpu1', 'gpu003'),
    ('a-b[12,15]', 'a-b12'), ('big[0100-0131]', 'big0100'),
])
def test_slurm_coordinator_is_the_first_node(nodelist, first):
  proc = _run([SLURM, '--dry-run', '--port', '999', '--', 'true'],
              env={**SLURM_ENV, 'SLURM_JOB_NODELIST': nodelist})
  assert f'JAX_COORDINATOR_ADDRESS={first}:999 ' in _srun_line(proc.stdout)[8]


def test_slurm_gpu_count_from_typed_gpus_per_node():
  env = {**SLURM_ENV, 'SLURM_GPUS_ON_NODE': '', 'SLURM_GPUS_PER_NODE': 'a100:2'}
  assert '--ntasks-per-node=2' in _run([SLURM, '--dry-run', '--', 'true'], env=env).stdout


@pytest.mark.parametrize('per_node, visible, device_ids', [
    (False, None, ['0', '1', '0', '1']),       # each task sees the node's GPUs, picks its own
    (False, '5', ['0', '0', '0', '0']),        # srun bound one GPU to each task
    (True, None, ['0,1', '0,1']),
])
def test_slurm_tasks_get_their_jax_variables(tmp_path, per_node, visible, device_ids):
  env = {**SLURM_ENV, 'SLURM_GPUS_ON_NODE': '2', **fake_srun_env(tmp_path)}
  if visible is not None:
    env['CUDA_VISIBLE_DEVICES'] = visible
  proc = _run([SLURM, *(['--per-node'] if per_node else []), '--', *PRINT_ENV], env=env)
  assert proc.returncode == 0, proc.stderr
  tasks = [json.loads(line.partition(': ')[2]) for line in proc.stdout.splitlines()]
  assert [t['JAX_PROCESS_ID'] for t in tasks] == [str(i) for i in range(len(device_ids))]
  assert {t['JAX_NUM_PROCESSES'] for t in tasks} == {str(len(device_ids))}
  assert {t['JAX_COORDINATOR_ADDRESS'] for t in tasks} == {f'gpu007:{4242 % 4096 + 61440}'}
  assert [t['JAX_LOCAL_DEVICE_IDS'] for t in tasks] == device_ids
  # What ran is what the dry run prints.
  dry = _srun_line(_run([SLURM, '--dry-run', *(['--per-node'] if per_node else []), '--',
                         *PRINT_ENV], env=env).stdout)
  assert ['srun', *eval((tmp_path / 'srun.log').read_text())] == dry  # noqa: S307


@pytest.mark.parametrize('env, args, message', [
    ({'SLURM_JOB_ID': ''}, ['--', 'true'], 'not inside a SLURM allocation'),
    ({}, [], 'no command given'),
    ({}, ['--frobnicate', '--', 'true'], "unknown argument '--frobnicate'"),
    ({'SLURM_GPUS_ON_NODE': ''}, ['--', 'true'], "GPUs per node '' is not a positive integer"),
    ({}, ['--gpus-per-node', '0', '--', 'true'], "GPUs per node '0' is not a positive integer"),
    ({}, ['--nodes', 'x', '--', 'true'], "node count 'x' is not a positive integer"),
    ({}, ['--port', '99999', '--', 'true'], "--port must be in 1..65535, got '99999'"),
    ({}, ['--port'], '--port needs a value'),
])
def test_slurm_bad_arguments(env, args, message):
  proc = _run([SLURM, '--dry-run', *args], env={**SLURM_ENV, **env})
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not proc.stdout
