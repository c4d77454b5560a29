"""Evaluation jobs end to end: a tiny imported checkpoint of the original (score_sde's
``checkpoint_5``), CIFAR-10 under ``tfds.testing.mock_data``, and a tiny Inception network
(width 1/16, 75x75 inputs) with random weights loaded from an ``.npz`` as real weights are.

``fid-stats`` and an uninterrupted ``eval`` run in this process; a second ``eval`` is killed
(SIGKILL) after its first sampling round and rerun through the CLI, in subprocesses that share a
persistent compilation cache with this process.

Run as ``python -m tests.test_evaluate MODE ARGS...``, this module is the subprocesses' worker:
``cli ARGS`` runs ``sde-jax ARGS`` under the mock data; ``block ARGS`` does the same but hangs
when asked to write the samples of round 1, after leaving a partial temporary file behind.
"""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sde_jax import checkpoints, evaluate
from sde_jax.jobs import compare as reproduce
from sde_jax.jobs import evaluate as eval_job
from sde_jax.jobs import fid_stats, import_checkpoint
from sde_jax import workdir as workdir_lib
from sde_jax.evaluate import checkpoint_index
from sde_jax.metrics import fid, inception
from tests import helpers
from tests.helpers import parse_flags, subprocess_env

# config_flags loads config files with importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

ROOT = pathlib.Path(__file__).parent.parent
CONFIG = ROOT / 'configs' / 've' / 'cifar10_ncsnpp_continuous.py'
CHECKPOINT = pathlib.Path(__file__).parent / 'data' / 'jax_ve_ncsnpp_continuous_tiny_checkpoint_5'
MOCK_EXAMPLES = 12  # per split: two batches of 8, the second padded
NUM_SAMPLES = 20  # three rounds of 8, the last one cut
TINY_INCEPTION = helpers.tiny_inception_options()  # width 1/16, 75x75 inputs


def config_flags_for(weights, stats):
  """The command-line flags of the tiny job: the network of the reference checkpoint and the
  recipe's sizes (tests.helpers), sampled in 4 steps, and this module's evaluation."""
  return helpers.reference_flags(
      model=dict(num_scales=4),
      eval=dict(inception_weights=str(weights), stats_path=str(stats), begin_ckpt=5,
                end_ckpt=5, enable_sampling=True, enable_bpd=True, num_samples=NUM_SAMPLES,
                bpd_solver='dopri5', bpd_rtol=0.1, bpd_atol=0.1))


def mock_data():
  import tensorflow_datasets as tfds
  return tfds.testing.mock_data(num_examples=MOCK_EXAMPLES)


@pytest.fixture(scope='module')
def files(tmp_path_factory, compilation_cache):
  """Tiny Inception weights (as an .npz of pytorch-fid's layout) and the data statistics."""
  del compilation_cache
  root = tmp_path_factory.mktemp('files')
  model = inception.InceptionV3(**TINY_INCEPTION)
  weights = root / 'tiny_inception.npz'
  np.savez(weights, **inception.state_dict_from_params(
      inception.init_params(jax.random.key(0), model)))
  stats = root / 'cifar10_stats.npz'
  config = parse_flags(config_flags_for(weights, stats))
  with mock_data():
    assert fid_stats.dataset_stats(config, str(root)) == str(stats)
  return {'weights': weights, 'stats': stats, 'flags': config_flags_for(weights, stats)}


def imported_workdir(path, checkpoint=CHECKPOINT):
  """``sde-jax import`` of ``checkpoint`` into ``path`` (the model fields are all it reads)."""
  config = parse_flags(config_flags_for('unused', 'unused'))
  import_checkpoint.import_to_workdir(config, str(checkpoint), str(path))
  return path


@pytest.fixture(scope='module')
def reference(tmp_path_factory, files):
  """An uninterrupted evaluation of checkpoint 5: loss, bits/dim, 20 samples and metrics."""
  workdir = imported_workdir(tmp_path_factory.mktemp('reference'))
  config = parse_flags(files['flags'])
  with mock_data():
    report = eval_job.evaluate(config, str(workdir), config_name=str(CONFIG))
  return {'workdir': workdir, 'report': report, 'row': report['checkpoints'][0]}


# --------------------------------------------------------------------------------------------
# Data-set statistics.


def test_fid_stats_match_a_direct_computation(files):
  """Every training image, resized as the pipeline does, as uint8, through the network."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  with mock_data():  # the elastic pipeline reads TFDS's data source, whose mock is per index
    source = tfds.data_source('cifar10', split='train')
    raw = np.stack([source[i]['image'] for i in range(len(source))])
  images = tf.image.resize(tf.image.convert_image_dtype(raw, tf.float32), (16, 16),
                           antialias=True).numpy()
  images = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
  model = inception.InceptionV3(**TINY_INCEPTION)
  params = inception.load_params(files['weights'], model)
  pool_3 = np.asarray(jax.jit(model.apply)({'params': params}, images)['pool_3'], np.float64)
  stored = fid.load_stats(files['stats'])['pool_3']
  assert stored.shape == (MOCK_EXAMPLES, 128)
  mean_cov = np.load(str(files['stats']).replace('.npz', '_mean_cov.npz'))
  np.testing.assert_allclose(mean_cov['mu'], pool_3.mean(0), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(mean_cov['sigma'], np.cov(pool_3, rowvar=False), rtol=1e-4,
                             atol=1e-9)


def test_fid_stats_never_overwrite(files):
  config = parse_flags(files['flags'])
  with pytest.raises(FileExistsError, match='never overwritten'):
    fid_stats.dataset_stats(config, 'unused')


# --------------------------------------------------------------------------------------------
# An uninterrupted job.


def test_eval_writes_reports_samples_and_features(reference, files):
  row, eval_dir = reference['row'], reference['workdir'] / 'eval'
  # The imported checkpoint_5 (stored step 50000) is checkpoint 5 by its file name.
  assert (row['ckpt'], row['step']) == (5, 50000)
  assert row['loss_examples'] == MOCK_EXAMPLES and row['bpd_values'] == MOCK_EXAMPLES
  assert np.isfinite([row[k] for k in ('loss', 'bpd', 'fid', 'inception_score', 'kid')]).all()
  assert row['num_samples'] == NUM_SAMPLES and row['nfe'] == 8  # 4 steps of P + C
  samples = np.load(eval_dir / 'ckpt_5' / 'samples_2.npz')['samples']
  assert samples.dtype == np.uint8 and samples.shape == (8, 16, 16, 3)
  # The metrics are those of the first 20 stored features against the data's.
  pools = np.concatenate([np.load(eval_dir / 'ckpt_5' / f'statistics_{r}.npz')['pool_3']
                          for r in range(3)])
  assert pools.shape == (24, 128)
  data = fid.load_stats(files['stats'])['pool_3']
  assert row['fid'] == pytest.approx(fid.fid_from_features(data, pools[:NUM_SAMPLES]))
  markdown = (eval_dir / 'report.md').read_text()
  assert '| ckpt | step | eval loss | bits/dim | FID | IS | KID | samples | NFE |' in markdown
  assert f'| 5 | 50000 | {row["loss"]:.4g} | {row["bpd"]:.4f} ±' in markdown
  assert '![samples of checkpoint 5](ckpt_5/grid.png)' in markdown
  from PIL import Image
  # The first 20 samples: 4 rows of 5, 16 px each with 2 px between.
  assert Image.open(eval_dir / 'ckpt_5' / 'grid.png').size == (92, 74)
  stored = json.loads((eval_dir / 'report.json').read_text())
  assert stored['checkpoints'] == [row] and stored['config_name'] == str(CONFIG)


def test_changed_settings_are_refused(reference, files):
  config = parse_flags(files['flags'] + ['--config.sampling.snr=0.2'])
  before = sorted(os.listdir(reference['workdir'] / 'eval' / 'ckpt_5'))
  with pytest.raises(ValueError, match=r"sampling.snr: 0.16 there, 0.2 now.*--eval_folder"):
    eval_job.evaluate(config, str(reference['workdir']))
  assert sorted(os.listdir(reference['workdir'] / 'eval' / 'ckpt_5')) == before
  # The sampler does not matter to a run that does not sample; it keeps the earlier numbers
  # (its stages are all done: nothing is computed).
  config.eval.enable_sampling = False
  with mock_data():
    report = eval_job.evaluate(config, str(reference['workdir']))
  assert report['checkpoints'] == [reference['row']]
  assert report['sampler'] == reference['report']['sampler']
  assert sorted(os.listdir(reference['workdir'] / 'eval' / 'ckpt_5')) == before


def test_eval_with_a_fast_sampler(reference, files):
  """DPM-Solver++ from the config in another eval folder: its samples, NFE and report row; the
  PC folder is untouched. A changed option of the fast sampler is refused like any other."""
  flags_ = files['flags'] + ['--config.sampling.method=dpm_solver++', '--config.sampling.nfe=3',
                             '--config.eval.enable_bpd=False', '--config.eval.enable_loss=False']
  before = sorted(os.listdir(reference['workdir'] / 'eval' / 'ckpt_5'))
  with mock_data():
    report = eval_job.evaluate(parse_flags(flags_), str(reference['workdir']),
                               eval_folder='eval_dpm')
  row = report['checkpoints'][0]
  assert row['nfe'] == 3 and row['num_samples'] == NUM_SAMPLES and np.isfinite(row['fid'])
  assert report['sampler'] == 'dpm_solver++ (nfe 3, order 2, schedule logsnr)'
  samples = np.load(reference['workdir'] / 'eval_dpm' / 'ckpt_5' / 'samples_0.npz')['samples']
  assert samples.shape == (8, 16, 16, 3) and samples.std() > 0
  assert sorted(os.listdir(reference['workdir'] / 'eval' / 'ckpt_5')) == before
  with pytest.raises(ValueError, match=r'sampling.nfe: 3 there, 4 now'):
    eval_job.evaluate(parse_flags(flags_ + ['--config.sampling.nfe=4']), str(reference['workdir']),
                      eval_folder='eval_dpm')


# --------------------------------------------------------------------------------------------
# A killed job.


def _digest(path):
  stat = path.stat()
  return stat.st_ino, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_job_resumes_at_the_next_round(tmp_path, reference, files, compilation_cache):
  """SIGKILL while round 1's samples are being written; the rerun (through the CLI) starts at
  round 1, leaves round 0's files and the loss alone, and ends with the uninterrupted run's
  numbers. Bits/dim are off here: their rounds resume the same way, and their solver is the one
  program the persistent compilation cache cannot hold (it raises errors through a callback)."""
  workdir = imported_workdir(tmp_path / 'killed')
  env = subprocess_env(compilation_cache, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  args = ['eval', *files['flags'], '--config.eval.enable_bpd=False', f'--workdir={workdir}']
  ckpt_dir = workdir / 'eval' / 'ckpt_5'
  proc = subprocess.Popen([sys.executable, '-m', 'tests.test_evaluate', 'block', *args],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not (ckpt_dir / 'samples_1.npz.tmp').exists():
      assert proc.poll() is None, f'the worker exited with {proc.returncode}'
      assert time.monotonic() < deadline, 'the worker never reached round 1'
      time.sleep(0.2)
    time.sleep(0.5)  # it is writing a partial file, then hangs
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert (ckpt_dir / 'samples_1.npz.tmp').exists()  # the kill's leftover
  assert not (ckpt_dir / 'samples_1.npz').exists()
  first = {name: _digest(ckpt_dir / name)
           for name in ('samples_0.npz', 'statistics_0.npz', 'loss.npz')}
  result = subprocess.run([sys.executable, '-m', 'tests.test_evaluate', 'cli', *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ' 8/24 ' in result.stderr  # the progress bar starts after round 0
  assert 'ckpt 5 loss' not in result.stderr
  for name, digest in first.items():
    assert _digest(ckpt_dir / name) == digest, f'{name} was rewritten'
  assert not list(ckpt_dir.glob('*.tmp'))
  row = json.loads((workdir / 'eval' / 'report.json').read_text())['checkpoints'][0]
  expected = reference['row']
  for name in ('loss', 'fid', 'inception_score', 'kid', 'nfe', 'num_samples'):
    assert row[name] == pytest.approx(expected[name], rel=1e-6), name
  assert '| 5 | 50000 |' in result.stdout  # the report is printed


# --------------------------------------------------------------------------------------------
# Checkpoint numbers and waiting.


def test_checkpoint_numbers():
  number = evaluate.checkpoint_number
  assert number(50000, {'source': '/runs/ve/checkpoint_5'}, 50000) == 5
  assert number(1_200_001, {'source': '/x/checkpoint_24.pth'}, 50000) == 24
  assert number(1_200_001, {'source': '/x/renamed.pth'}, 50000) == 24
  assert number(100_000, {'source': 'sde-jax train'}, 50000) == 2
  assert number(149_995, {'source': 'sde-jax train'}, 50000) == 2


def test_results_of_another_step_with_the_same_number_are_refused(tmp_path):
  def ckpt(step):
    return evaluate.Checkpoint(3, step, f'/x/checkpoint_3_{step}', str(tmp_path / 'ckpt_3'),
                               restore=lambda: None)

  evaluate.check_same_checkpoint(ckpt(150000))
  evaluate.check_same_checkpoint(ckpt(150000))
  with pytest.raises(ValueError, match=r'results of step 150000 .*now step 150005'):
    evaluate.check_same_checkpoint(ckpt(150005))


def test_waits_for_a_checkpoint_that_arrives(tmp_path, monkeypatch):
  """Checkpoint 7 is not there (nor is the checkpoints folder); while the job waits, an import
  of an original checkpoint_7 arrives, and is number 7 by its name, not by its step."""
  workdir = tmp_path / 'wait'
  index = evaluate.CheckpointIndex(str(workdir), snapshot_freq=1000)
  sleeps = []

  def arrive(seconds):
    sleeps.append(seconds)
    shutil.copy(CHECKPOINT, tmp_path / 'checkpoint_7')
    imported_workdir(workdir, tmp_path / 'checkpoint_7')

  monkeypatch.setattr(checkpoint_index.time, 'sleep', arrive)
  try:
    assert index.numbers() == {}
    assert index.wait_for(7) == (50000, str(tmp_path / 'checkpoint_7'))
    assert sleeps == [checkpoint_index.WAIT_SECONDS]
  finally:
    index.close()


def test_a_damaged_checkpoint_is_left_out_and_named(tmp_path, caplog):
  """Steps 3 and 5 (numbers 3 and 5); a changed byte in step 5's meta: number 5 is an error
  naming the step and file (evaluate() skips it with a warning), number 3 is evaluated."""
  manager = checkpoints.checkpoint_manager(tmp_path, writer=True)
  for step in (3, 5):
    tree = {'w': np.full((2,), step, np.float32)}
    checkpoints.save_items(manager, step, {'params': tree, 'params_ema': tree},
                           {'source': 'sde-jax train'})
  manager.close()
  meta = tmp_path / 'checkpoints' / '5' / 'meta' / 'metadata'
  meta.write_text(meta.read_text().replace('train', 'trair'))
  index = evaluate.CheckpointIndex(str(tmp_path), snapshot_freq=1)
  try:
    with caplog.at_level('WARNING'):
      assert index.numbers() == {3: (3, 'sde-jax train')}
    assert 'checkpoints/5 is damaged: meta/metadata: sha256' in caplog.text
    with pytest.raises(checkpoints.DamagedCheckpointError, match='5 is damaged: meta/metadata'):
      index.wait_for(5)
    assert index.wait_for(3) == (3, 'sde-jax train')
  finally:
    index.close()


# --------------------------------------------------------------------------------------------
# Settings and errors.


def test_bpd_repeats_follow_the_original(files):
  config = parse_flags(files['flags'])
  config.eval.bpd_num_repeats = None
  assert evaluate.EvalSettings.from_config(config).bpd_repeats == 5
  config.eval.bpd_dataset = 'train'
  assert evaluate.EvalSettings.from_config(config).bpd_repeats == 1
  config.eval.bpd_dataset = 'valid'
  with pytest.raises(ValueError, match="bpd_dataset='valid'; expected 'train' or 'test'"):
    evaluate.EvalSettings.from_config(config)


def test_missing_weights_and_statistics_are_clear_errors(tmp_path, files):
  """Found by the start-up check (sde_jax/jobs/config_check.py), before anything is written."""
  config = parse_flags(files['flags'])
  config.eval.inception_weights = None
  with pytest.raises(ValueError, match='eval.inception_weights=None.*pt_inception-2015-12-05'):
    eval_job.evaluate(config, str(tmp_path))
  config = parse_flags(files['flags'])
  config.eval.stats_path = None
  with pytest.raises(ValueError,
                     match='eval.stats_path=None.*sde-jax fid-stats.*cifar10_stats.npz'):
    eval_job.evaluate(config, str(tmp_path))
  config.eval.stats_path = str(tmp_path / 'nope.npz')
  with pytest.raises(ValueError, match="eval.stats_path='.*nope.npz'; expected an existing file"):
    eval_job.evaluate(config, str(tmp_path))
  assert not (tmp_path / 'eval').exists()


# --------------------------------------------------------------------------------------------
# Paper vs measured.


def test_compare_command(tmp_path, reference):
  report = json.loads((reference['workdir'] / 'eval' / 'report.json').read_text())
  (tmp_path / 've' / 'eval').mkdir(parents=True)
  (tmp_path / 've' / 'eval' / 'report.json').write_text(json.dumps(report))
  ode = {**report, 'config_name': 'configs/vp/cifar10_ddpmpp_continuous.py'}
  ode['checkpoints'] = [{**report['checkpoints'][0], 'ckpt': 26, 'sampling_method': 'ode',
                         'sampler': 'ode (rtol 1e-05, atol 1e-05)'}]
  (tmp_path / 'vp' / 'eval').mkdir(parents=True)
  (tmp_path / 'vp' / 'eval' / 'report.json').write_text(json.dumps(ode))
  result = subprocess.run([sys.executable, '-m', 'sde_jax.cli', 'compare',
                           f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  row = reference['row']
  ve = next(line for line in result.stdout.splitlines() if 'NCSN++ cont. (VE)' in line)
  assert ve.split(' | ')[2:8] == ['5', 'pc (reverse_diffusion + langevin, snr 0.16)', '20',
                                  '2.38', f'{row["fid"]:.2f}', '9.83']
  vp = next(line for line in result.stdout.splitlines() if 'DDPM++ cont. (VP)' in line)
  # The ODE sampler is compared with FID (ODE); bits/dim with the paper's test-set NLL.
  assert vp.split(' | ')[2:11] == [
      '26', 'ode (rtol 1e-05, atol 1e-05)', '20', '3.93', f'{row["fid"]:.2f}', '-',
      f'{row["inception_score"]:.2f}', '3.16', f'{row["bpd"]:.2f}']
  assert (tmp_path / 'comparison.md').read_text() == result.stdout.rstrip('\n') + '\n'
  assert reproduce.config_key('/abs/configs/subvp/cifar10_ddpmpp_deep_continuous.py') == (
      'subvp/cifar10_ddpmpp_deep_continuous')


# --------------------------------------------------------------------------------------------
# The subprocesses' worker.


def _block_at_round_1():
  save_npz = workdir_lib.save_npz

  def blocking(path, **arrays):
    if os.path.basename(path) == 'samples_1.npz':
      with open(os.fspath(path) + '.tmp', 'wb') as f:
        f.write(b'PK partial')
      print('BLOCKED', flush=True)
      time.sleep(3600)
    save_npz(path, **arrays)

  workdir_lib.save_npz = blocking


def _worker(mode, argv):
  from sde_jax import cli
  if mode == 'block':
    _block_at_round_1()
  with mock_data():
    sys.argv = ['sde-jax', *argv]
    cli.main()


if __name__ == '__main__':
  _worker(sys.argv[1], sys.argv[2:])
