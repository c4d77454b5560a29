"""A workdir in a GCS bucket, end to end against a real GCS API on 127.0.0.1 (tests/gcs_emulator.py).

``train`` is killed with SIGKILL after its checkpoint of step 4, resumed by ``sde-jax train`` to
step 6, then ``sde-jax sample``, ``fid-stats`` and ``eval`` (loss and FID with the recipe's tiny
Inception, whose weights are read from the bucket too) run on ``gs://BUCKET/run``. Every job
runs in its own process in an empty local folder; the objects are then read through the HTTP
API, and nothing may appear on local disk.

Run as ``python -m tests.test_gcs train FLAGS...``, this module is the worker of the kill:
``sde-jax train`` with those flags that hangs when asked for train batch ``BLOCK_AT``; as
``python -m tests.test_gcs paths URL``, the worker of the path layer's test.
"""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sde_jax.metrics import fid, inception
from tests import gcs_emulator, helpers

ROOT = pathlib.Path(__file__).parent.parent
RUN = 'run'
BLOCK_AT = 4  # train batch index (from 0) at which the worker hangs: after the save of step 4
# The recipe's DDPM++ on 8x8 digits (25 noise scales, PC sampling): 6 steps of 8 images, two per
# compiled call, a checkpoint every 2 steps and for good at 6; evaluation of that checkpoint
# (number 6 // 6 = 1): its loss, and FID / IS / KID of 8 samples with the 1/16-wide Inception.
OVERRIDES = dict(training=dict(n_iters=6, snapshot_freq=6),
                 eval=dict(begin_ckpt=1, end_ckpt=1, enable_bpd=False, enable_sampling=True))
FAST_COMPILE = '--xla_backend_optimization_level=0'


def _worker(argv):
  """``sde-jax train`` (flags ``argv``), hanging when it asks for train batch ``BLOCK_AT``."""
  from sde_jax import cli  # pylint: disable=g-import-not-at-top
  from tests.test_train import hang_at_train_batch  # pylint: disable=g-import-not-at-top
  hang_at_train_batch(BLOCK_AT)
  sys.argv = [sys.argv[0], 'train', *argv]
  cli.main()


def _paths_worker(root):
  """The path layer's operations under ``root``; prints what it read back as JSON."""
  from sde_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  root = workdir_lib.path(root)
  workdir_lib.write_json(root / 'a' / 'x.json', {'x': 1})
  workdir_lib.save_npz(root / 'a' / 'y.npz', y=np.arange(3))
  for text in ('one', 'two'):  # the second run moves the first one's file aside
    out = workdir_lib.output_folder(root, 'out', ('r.txt',))
    workdir_lib.write_text(out / 'r.txt', text)
  workdir_lib.append_text(out / 'log.md', 'a\n')
  workdir_lib.append_text(out / 'log.md', 'b\n')
  fresh = workdir_lib.fresh_path(out / 'r.txt')
  workdir_lib.write_text(out / 'left.tmp', 'killed')
  workdir_lib.remove_temporary(out)
  workdir_lib.write_text(root / 'step' / 'd' / 'chunk', 'c')  # a folder tree, moved aside
  workdir_lib.write_text(root / 'step' / 'meta', 'm')
  workdir_lib.move(root / 'step', root / 'moved')
  print('RESULT ' + json.dumps({
      'x': workdir_lib.read_json(root / 'a' / 'x.json'),
      'missing': workdir_lib.read_json(root / 'nothing.json'),
      'y': workdir_lib.load_npz(root / 'a' / 'y.npz')['y'].tolist(),
      'fresh': str(fresh), 'found': [str(p) for p in workdir_lib.find_files(root, 'x.json')]}))


def _run(cmd, cwd, env, timeout=300):
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, (cmd[3:5], proc.stdout[-3000:], proc.stderr[-6000:])
  return proc


def _wait_for(gcs, name, proc, timeout=240):
  deadline = time.monotonic() + timeout
  while name not in gcs.objects(RUN + '/'):
    assert proc.poll() is None, f'the worker exited with {proc.returncode}'
    assert time.monotonic() < deadline, f'no object {name} after {timeout} s'
    time.sleep(0.2)


@pytest.fixture(scope='module')
def gcs():
  with gcs_emulator.running() as emulator:
    yield emulator


def test_path_layer_on_gcs(gcs, tmp_path):
  """Atomic writes, outputs moved aside, fresh names, leftovers removed, a folder moved, a
  recursive search."""
  root = f'gs://{gcs.bucket}/paths'
  env = {**os.environ, **gcs.environment(), 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  out = _run([sys.executable, '-m', 'tests.test_gcs', 'paths', root], tmp_path, env).stdout
  result = json.loads(out.split('RESULT ', 1)[1])
  assert result == {'x': {'x': 1}, 'missing': {}, 'y': [0, 1, 2],
                    'fresh': f'{root}/out/r-1.txt', 'found': [f'{root}/a/x.json']}
  objects = gcs.objects('paths/')
  (previous,) = [n for n in objects if n.startswith('paths/out/previous-')]
  assert previous.endswith('/r.txt') and gcs.read(previous) == b'one'
  assert gcs.read('paths/out/r.txt') == b'two' and gcs.read('paths/out/log.md') == b'a\nb\n'
  assert json.loads(gcs.read('paths/a/x.json')) == {'x': 1}
  assert gcs.read('paths/moved/d/chunk') == b'c' and gcs.read('paths/moved/meta') == b'm'
  assert sorted(objects) == sorted(['paths/a/x.json', 'paths/a/y.npz', 'paths/out/r.txt',
                                    'paths/out/log.md', previous, 'paths/moved/d/chunk',
                                    'paths/moved/meta'])
  assert os.listdir(tmp_path) == []


def test_train_kill_resume_sample_eval_with_the_workdir_in_a_bucket(gcs, tmp_path,
                                                                    compilation_cache):
  cwd = tmp_path / 'cwd'  # every job's working directory: must stay empty
  cwd.mkdir()
  workdir = f'gs://{gcs.bucket}/{RUN}'
  model = inception.InceptionV3(**helpers.tiny_inception_options())
  buffer = io.BytesIO()
  np.savez(buffer, **inception.state_dict_from_params(
      inception.init_params(jax.random.key(0), model)))
  gcs.write('inputs/tiny_inception.npz', buffer.getvalue())
  stats = f'{RUN}/{fid.stats_filename("digits")}'
  flags = helpers.tiny_flags('digits/ddpmpp_continuous.py', **OVERRIDES) + [
      f'--workdir={workdir}',
      f'--config.eval.inception_weights=gs://{gcs.bucket}/inputs/tiny_inception.npz',
      f'--config.eval.stats_path=gs://{gcs.bucket}/{stats}']
  env = {**helpers.subprocess_env(compilation_cache, XLA_FLAGS=FAST_COMPILE),
         **gcs.environment(), 'PYTHONPATH': str(ROOT)}
  cli = [sys.executable, '-m', 'sde_jax.cli']

  # train, killed after the checkpoint of step 4 is committed.
  with open(tmp_path / 'killed.log', 'w') as log:  # read on failure
    proc = subprocess.Popen([sys.executable, '-m', 'tests.test_gcs', 'train', *flags], cwd=cwd,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      _wait_for(gcs, f'{RUN}/checkpoints/4/commit_success.txt', proc)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  killed = gcs.objects(RUN + '/')
  assert not any(n.startswith(f'{RUN}/checkpoints/6') for n in killed)

  # resume to step 6, then sample, data statistics and eval.
  log = _run([*cli, 'train', *flags], cwd, env).stderr
  assert 'Restored checkpoint 4' in log, log[-3000:]
  _run([*cli, 'sample', *flags, '--num_samples=4'], cwd, env)
  _run([*cli, 'fid-stats', *flags], cwd, env)
  _run([*cli, 'eval', *flags], cwd, env)

  objects = gcs.objects(RUN + '/')
  names = set(objects)
  print('\n'.join(f'{objects[n]:>10} {n}' for n in sorted(names)))  # seen with pytest -s
  # Checkpoints: step 6 (kept for good) committed with every item; the kill's leftovers gone.
  for item in ('params', 'params_ema', 'opt_state', 'loop', 'meta'):
    assert any(n.startswith(f'{RUN}/checkpoints/6/{item}/') for n in names), item
  assert {f'{RUN}/checkpoints/6/{f}' for f in ('commit_success.txt', 'manifest.json')} <= names
  assert not [n for n in names if 'tmp' in n.rsplit('/', 1)[-1].lower()], sorted(names)
  # TensorBoard: the losses of the two runs, steps 2 and 4 (first run), 6 (resumed).
  events = [n for n in names if n.startswith(f'{RUN}/tensorboard/events.out.tfevents.')]
  losses = {}
  for name in events:
    losses.update(helpers.event_scalars(gcs.read(name), 'train/loss'))
  assert sorted(losses) == [2, 4, 6] and np.isfinite(list(losses.values())).all(), losses
  # Samples: 4 uint8 8x8 digits and their grid.
  with np.load(io.BytesIO(gcs.read(f'{RUN}/samples/samples.npz'))) as data:
    samples = data['samples']
  assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8 and samples.std() > 0
  assert gcs.read(f'{RUN}/samples/grid.png').startswith(b'\x89PNG')
  # Data statistics, and the eval report of checkpoint 1 (step 6) with its grid.
  assert stats in names and f'{stats[:-4]}_mean_cov.npz' in names
  report = json.loads(gcs.read(f'{RUN}/eval/report.json'))
  (row,) = report['checkpoints']
  assert (row['ckpt'], row['step']) == (1, 6), row
  assert np.isfinite([row[k] for k in ('loss', 'fid', 'inception_score', 'kid')]).all(), row
  assert report['workdir'] == workdir and report['stats_path'] == f'gs://{gcs.bucket}/{stats}'
  assert f'{RUN}/eval/report.md' in names and f'{RUN}/eval/ckpt_1/grid.png' in names
  assert all(size > 0 for size in objects.values())
  # Nothing of the workdir reached local disk.
  assert os.listdir(cwd) == []


if __name__ == '__main__':
  {'train': _worker, 'paths': lambda argv: _paths_worker(*argv)}[sys.argv[1]](sys.argv[2:])
