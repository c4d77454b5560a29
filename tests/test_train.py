"""Training and sampling jobs: resumption, preemption, non-finite values, retracing, start-up
checks, sample files; one end-to-end step under ``tfds.testing.mock_data``.

Most tests train a tiny DDPM++ (8 channels, one resolution, 8x8) on the embedded digits over the
8 fake devices of conftest.py. Identical programs are compiled once: a persistent compilation
cache, shared with the subprocess of the kill test, serves the later jobs.

Run as ``python -m tests.test_train WORKDIR N_ITERS BLOCK_AT``, this module is the worker of the
kill test: it trains the tiny config and hangs when asked for train batch ``BLOCK_AT``.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import optax
import pytest

from sde_jax import checkpoints, parallel, sampling, train
from sde_jax import data as data_lib
from sde_jax.score_model import ScoreModel
from sde_jax.jobs import import_checkpoint
from sde_jax.jobs import sample as sample_job
from sde_jax.jobs import train as train_job
from sde_jax.train import state as train_state
from tests import helpers
from tests.helpers import subprocess_env

ROOT = pathlib.Path(__file__).parent.parent
PTH = pathlib.Path(__file__).parent / 'data' / 've_ncsnpp_continuous_tiny.pth'


def tiny_config(**training):
  """The digits DDPM++ shrunk by the test recipe (tests.helpers.tiny_config), at the recipe's
  25 noise scales; ``training`` overrides.

  By default: 12 steps of 8 images, 1 per compiled call, a checkpoint every 2 steps (the last
  one kept) plus every 8th kept for good; no warm-up, so the parameters move from step 1.
  (At 8 scales the VP chain's beta_N = 20 / 8 >= 1 made the reverse-diffusion + Langevin
  snapshots NaN; the start-up check now refuses it.)
  """
  return helpers.tiny_config('digits/ddpmpp_continuous.py', training=training)


def patch_train_batches(monkeypatch, on_batch):
  """Calls ``on_batch(index, batch)`` on each train batch the job reads (index counts from the
  job's start step); its return value replaces the batch. (The trainer reads its batches through
  ``data.pipeline.get_dataset``.)"""
  get_dataset = data_lib.pipeline.get_dataset

  def wrapped(config, split, **kwargs):
    batches = get_dataset(config, split, **kwargs)
    if split != 'train':
      return batches
    start = kwargs.get('start_step', 0)
    return (on_batch(start + i, batch) for i, batch in enumerate(batches))

  monkeypatch.setattr(data_lib.pipeline, 'get_dataset', wrapped)


def hang_at_train_batch(block_at: int) -> None:
  """Makes this process's training hang (printing ``BLOCKED``) when it asks for train batch
  ``block_at``: the worker of a kill test, which the test kills with SIGKILL."""
  def block(index, batch):
    if index == block_at:
      print('BLOCKED', flush=True)
      time.sleep(3600)
    return batch

  patch_train_batches(pytest.MonkeyPatch(), block)


def steps_on_disk(workdir):
  manager = checkpoints.checkpoint_manager(workdir)
  steps = list(manager.all_steps())
  manager.close()
  return sorted(steps)


def restore_trained(workdir, step=None):
  """params, params_ema, opt_state and loop of a checkpoint that ``train`` wrote, as saved."""
  manager = checkpoints.checkpoint_manager(workdir, item_names=checkpoints.TRAIN_ITEMS)
  step = checkpoints.latest_step(manager, step)
  out = checkpoints.restore_items(manager, step, {
      name: None for name in ('params', 'params_ema', 'opt_state', 'loop')})
  manager.close()
  return out


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 12-step run with snapshot samples. The train step it builds may be traced
  once (``chex.assert_max_traces``): a retrace fails the run."""
  workdir = tmp_path_factory.mktemp('reference')
  built = []
  make_train_step = train_state.make_train_step

  def checked(*args, **kwargs):
    built.append(1)
    return chex.assert_max_traces(make_train_step(*args, **kwargs), 1)

  snapshots = []
  to_uint8 = train_job.images_lib.to_uint8

  def recorded(images):  # the snapshot samples as the sampler returned them, before uint8
    snapshots.append(np.asarray(images))
    return to_uint8(images)

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(train_state, 'make_train_step', checked)
    monkeypatch.setattr(train_job.images_lib, 'to_uint8', recorded)
    chex.clear_trace_counter()
    state = train_job.train_and_evaluate(tiny_config(snapshot_sampling=True), str(workdir))
  return {'workdir': workdir, 'state': state, 'steps_built': len(built), 'snapshots': snapshots}


# --------------------------------------------------------------------------------------------
# An uninterrupted run.


def test_run_writes_checkpoints_events_and_snapshots(reference):
  workdir = reference['workdir']
  assert int(reference['state'].step) == 12
  # Saved every 2 steps; the last one kept, and every 8th for good.
  assert steps_on_disk(workdir) == [8, 12]
  assert set(checkpoints.TRAIN_ITEMS) <= set(os.listdir(workdir / 'checkpoints' / '12'))
  assert sorted(os.listdir(workdir / 'samples')) == ['quality.md', 'step_12.png', 'step_8.png']
  # Two grids of 8 finite samples in [0, 1] (NaN samples would make black grids).
  assert [x.shape for x in reference['snapshots']] == [(8, 8, 8, 1)] * 2
  assert all(np.all(np.isfinite(x)) for x in reference['snapshots'])
  rows = (workdir / 'samples' / 'quality.md').read_text().splitlines()[-2:]
  assert [row.split('|')[1:3] for row in rows] == [[' 8 ', ' 8 '], [' 12 ', ' 8 ']]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'tensorboard'))
  saved = restore_trained(workdir)
  chex.assert_trees_all_equal(saved['params'], jax.device_get(reference['state'].params))
  assert int(saved['loop']['step']) == 12 and saved['meta']['source'] == 'sde-jax train'


def test_train_step_is_traced_once(reference):
  """Logging, evaluation, checkpoints and snapshots between steps never retrace the step: the
  one train step the run built is wrapped in ``chex.assert_max_traces(step, 1)``, so a second
  trace would have failed the ``reference`` run itself."""
  assert reference['steps_built'] == 1


def test_params_moved_and_ema_lags(reference, tmp_path):
  """The parameters moved from their initial values; the EMA (rate 0.999) moved far less."""
  state = jax.device_get(reference['state'])
  config = tiny_config()
  manager = checkpoints.checkpoint_manager(tmp_path, item_names=checkpoints.TRAIN_ITEMS)
  model = ScoreModel.from_config(config)
  init = train.state_initializer(model.model, train.make_optimizer(config.optim),
                                 model.image_shape)
  start, _, step = train.restore_or_init(manager, init, parallel.make_mesh(), config.seed)
  manager.close()
  assert step == 0

  def distance(tree):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(start.params)))

  assert distance(state.params) > 0
  assert 0 < distance(state.params_ema) < 0.1 * distance(state.params)


# --------------------------------------------------------------------------------------------
# FSDP: the same training with parameters and optimizer state sharded.


def _ways_split(leaf) -> int:
  """Into how many parts ``leaf`` is split: its size over the size of one device's shard."""
  return leaf.size // leaf.addressable_shards[0].data.size


def test_fsdp_trains_like_data_parallelism(reference, tmp_path):
  """8 steps on a (2, 4) mesh (fsdp 4) give the reference's losses and checkpoint of step 8
  (fsdp 1), to float rounding: the sharded program sums the gradient in another order
  (reduce-scatter, then all-gather, instead of one all-reduce), measured 1.2e-7 relative on the
  logged values. Every array of at least the recipe's ``fsdp_min_size`` (256) values, in the
  parameters, their EMA and Adam's moments, is split fsdp ways (each has an axis of 8, 16 or
  32); every smaller one is whole on every device. (fsdp 2 against fsdp 1 is
  tests/test_multihost.py's job, over two processes.)"""
  fsdp = 4
  config = tiny_config(n_iters=8)
  config.parallel.fsdp = fsdp
  state = train_job.train_and_evaluate(config, str(tmp_path))
  for tree in (state.params, state.params_ema, state.opt_state):
    leaves = jax.tree_util.tree_leaves(tree)
    assert [_ways_split(x) for x in leaves] == [fsdp if x.size >= 256 else 1 for x in leaves]
  assert sum(x.size >= 256 for x in jax.tree_util.tree_leaves(state.params)) == 17
  for tag in ('train/loss', 'train/grad_norm', 'eval/loss'):
    got, expected = helpers.workdir_scalars(tmp_path, tag), helpers.workdir_scalars(reference['workdir'], tag)
    steps = sorted(got)
    assert steps == ([4, 8] if tag == 'eval/loss' else [2, 4, 6, 8])
    np.testing.assert_allclose([got[s] for s in steps], [expected[s] for s in steps], rtol=1e-5,
                               err_msg=tag)
  expected = restore_trained(reference['workdir'], 8)  # opt_state as saved: dicts and lists
  for field in ('params', 'params_ema', 'opt_state'):
    chex.assert_trees_all_close(jax.tree_util.tree_leaves(jax.device_get(getattr(state, field))),
                                jax.tree_util.tree_leaves(expected[field]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Faults.


def _worker(workdir, n_iters, block_at):
  """The kill test's training process: hangs when asked for train batch ``block_at``."""
  hang_at_train_batch(block_at)
  train_job.train_and_evaluate(tiny_config(n_iters=n_iters), workdir)


def _wait_for_checkpoint(proc, workdir, step, timeout=240):
  path = workdir / 'checkpoints' / str(step)
  deadline = time.monotonic() + timeout
  while not (path / 'commit_success.txt').exists():
    assert proc.poll() is None, f'worker exited with {proc.returncode}'
    assert time.monotonic() < deadline, f'no checkpoint {step} after {timeout} s'
    time.sleep(0.1)


def test_killed_job_resumes_with_the_same_data_and_randomness(tmp_path, reference,
                                                             compilation_cache):
  """kill -9 after the checkpoint of step 8 and a restart give exactly the reference's step 12."""
  workdir = tmp_path / 'killed'
  env = subprocess_env(compilation_cache, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.Popen([sys.executable, '-m', 'tests.test_train', str(workdir), '12', '9'],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    _wait_for_checkpoint(proc, workdir, 8)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert max(steps_on_disk(workdir)) == 8  # older ones may await deletion
  state = train_job.train_and_evaluate(tiny_config(), str(workdir))
  expected = reference['state']
  assert int(state.step) == 12
  for field in ('params', 'params_ema', 'opt_state'):
    chex.assert_trees_all_equal(jax.device_get(getattr(state, field)),
                                jax.device_get(getattr(expected, field)))
  np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(expected.key))


def test_sigterm_saves_the_current_step_and_stops(tmp_path, monkeypatch):
  """SIGTERM while step 5's batch is read, at 2 steps per compiled call: steps 5-6 finish, step 6
  is saved (off the cadence of 4), the job returns, and the previous SIGTERM handler is back."""
  def sigterm_at_step_5(index, batch):
    if index == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  patch_train_batches(monkeypatch, sigterm_at_step_5)
  before = signal.getsignal(signal.SIGTERM)
  config = tiny_config(n_iters=16, n_jitted_steps=2, snapshot_freq_for_preemption=4, keep_last=2,
                       snapshot_freq=16)
  state = train_job.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert steps_on_disk(tmp_path) == [4, 6]
  saved = restore_trained(tmp_path)
  chex.assert_trees_all_equal(saved['params'], jax.device_get(state.params))
  assert signal.getsignal(signal.SIGTERM) is before


def test_preemption_passes_one_more_per_compiled_call(monkeypatch, tmp_path):
  """JAX's preemption sync manager (several processes) stops at one more than the largest value
  any host has passed it, and only for that exact value: Preemption passes 1, 2, 3, ..., one
  per compiled call whatever the steps per call, and the job's checkpoint manager never asks
  the sync manager itself (orbax's would pass the checkpoint's step, 10 here, from ``save`` and
  from its finalize thread)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from sde_jax.train.preemption import Preemption  # pylint: disable=g-import-not-at-top
  passed, sync_point = [], []

  def reached_sync_point(value):  # PreemptionSyncManagerImpl::ReachedSyncPoint's rule
    passed.append(value)
    return value in sync_point

  monkeypatch.setattr(multihost_utils, 'reached_preemption_sync_point', reached_sync_point)
  preemption = Preemption()
  assert not preemption.reached() and not preemption.reached()
  sync_point.append(max(passed) + 1)  # a notice: the hosts agree on the next value
  assert preemption.reached()
  assert passed == [1, 2, 3]
  manager = checkpoints.checkpoint_manager(str(tmp_path), item_names=('params', 'meta'), writer=True)
  try:
    assert manager.reached_preemption(10) is False
    checkpoints.save_items(manager, 10, {'params': {'w': np.zeros(3, np.float32)}}, {})
    manager.wait_until_finished()
  finally:
    manager.close()
  assert passed == [1, 2, 3] and manager.all_steps() == [10]


def test_nan_stops_training_and_is_never_saved(tmp_path, monkeypatch):
  """A NaN image at step 10 makes the loss NaN; only logged every 16 steps, it is caught
  before the checkpoint of step 12, and the checkpoint of step 8 stays the last, finite."""
  def nan_at_step_10(index, batch):
    if index == 9:
      batch = {**batch, 'image': np.full_like(batch['image'], np.nan)}
    return batch

  patch_train_batches(monkeypatch, nan_at_step_10)
  config = tiny_config(n_iters=16, log_freq=16, eval_freq=16, snapshot_freq=16,
                       snapshot_freq_for_preemption=4, keep_last=2)
  with pytest.raises(FloatingPointError, match='Non-finite loss nan at step 10'):
    train_job.train_and_evaluate(config, str(tmp_path))
  assert steps_on_disk(tmp_path) == [4, 8]
  saved = restore_trained(tmp_path)
  for item in ('params', 'params_ema', 'opt_state'):
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(saved[item])), item


def test_non_finite_parameters_are_refused(tmp_path):
  params = {'dense': {'kernel': np.ones((2, 2), np.float32)}}
  state = train.TrainState(np.int32(3), params, (), {'dense': {'kernel': np.float32(
      [[1, 2], [np.inf, 4]])}}, jax.random.key(0))
  manager = checkpoints.checkpoint_manager(tmp_path, item_names=checkpoints.TRAIN_ITEMS)
  with pytest.raises(FloatingPointError, match='Non-finite parameters at step 3; not saved'):
    train.save_state(manager, state, 3, {})
  manager.close()
  assert steps_on_disk(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Start-up checks.


def test_batch_size_not_divisible_by_devices_is_a_start_up_error(tmp_path):
  with pytest.raises(ValueError, match='batch_size=12 is not divisible by the number of '
                                       'devices, 8'):
    train_job.train_and_evaluate(tiny_config(batch_size=12), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_fsdp_must_divide_the_device_count(tmp_path):
  config = tiny_config()
  config.parallel.fsdp = 3
  with pytest.raises(ValueError, match='parallel.fsdp=3 must be a positive divisor of the number '
                                       'of devices, 8'):
    train_job.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_periods_must_be_multiples_of_n_jitted_steps(tmp_path):
  with pytest.raises(ValueError, match='training.log_freq=3; expected a positive multiple of '
                                       'training.n_jitted_steps=2'):
    train_job.train_and_evaluate(tiny_config(n_jitted_steps=2, log_freq=3), str(tmp_path))


def test_imported_checkpoint_cannot_be_resumed(tmp_path):
  config = import_config()
  import_checkpoint.import_to_workdir(config, str(PTH), str(tmp_path))
  with pytest.raises(ValueError, match='holds no optimizer state'):
    train_job.train_and_evaluate(config, str(tmp_path))


# --------------------------------------------------------------------------------------------
# Optimizer: the original's rules.


def test_optimizer_warmup_clipping_and_decay():
  config = tiny_config()
  config.optim.update(lr=0.1, warmup=4, grad_clip=1.0, weight_decay=0.5)
  schedule = train.learning_rate_schedule(config.optim)
  np.testing.assert_allclose([schedule(s) for s in (0, 2, 4, 9)], [0, 0.05, 0.1, 0.1], rtol=1e-6)
  config.optim.warmup = 0
  assert float(train.learning_rate_schedule(config.optim)(0)) == pytest.approx(0.1)
  optimizer = train.make_optimizer(config.optim)
  params = {'w': np.float32([1.0, 3.0])}
  grads = {'w': np.float32([30.0, 40.0])}  # global norm 50
  updates, state = optimizer.update(grads, optimizer.init(params), params)
  # First Adam step: m / (sqrt(v) + eps) = sign(g); decay adds weight_decay * p; times -lr.
  np.testing.assert_allclose(updates['w'], -0.1 * (np.sign(grads['w']) + 0.5 * params['w']),
                             rtol=1e-5)
  # The first moment saw the gradient clipped to norm 1: (1 - beta1) (0.6, 0.8).
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, 'mu')['w'], [0.06, 0.08],
                             rtol=1e-5)
  config.optim.grad_clip = -1.0  # negative: no clipping
  unclipped = train.make_optimizer(config.optim)
  _, state = unclipped.update(grads, unclipped.init(params), params)
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, 'mu')['w'], [3.0, 4.0], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Sampling.


def test_sample_writes_npz_and_grid_and_does_not_depend_on_batch_size(reference):
  workdir = reference['workdir']
  config = tiny_config()
  path = sample_job.sample(config, str(workdir), 5)
  first = np.load(path)['samples']
  assert first.dtype == np.uint8 and first.shape == (5, 8, 8, 1)
  assert (workdir / 'samples' / 'grid.png').stat().st_size > 0
  config.eval.batch_size = 16
  second = np.load(sample_job.sample(config, str(workdir), 5))['samples']
  # Sample i comes from fold_in(key, i): the same images in batches of 8 or of 16.
  assert np.max(np.abs(first.astype(int) - second)) <= 1
  previous = [d for d in os.listdir(workdir / 'samples') if d.startswith('previous-')]
  assert len(previous) == 1
  np.testing.assert_array_equal(
      np.load(workdir / 'samples' / previous[0] / 'samples.npz')['samples'], first)


# The CIFAR-10 NCSN++ config with the network of the tiny reference checkpoint (see
# test_reference), sampled in 4 steps.
IMPORT_OVERRIDES = dict(model=dict(num_scales=4))


def import_config():
  return helpers.reference_config(**IMPORT_OVERRIDES)


def test_samplers_are_described_by_their_options():
  config = import_config()
  assert sampling.describe_from_config(config) == 'pc (reverse_diffusion + langevin, snr 0.16)'
  config.sampling.update(method='heun', nfe=3, churn=0.5)
  assert sampling.describe_from_config(config) == 'heun (nfe 3, churn 0.5)'


def test_sample_command_reads_an_imported_checkpoint(tmp_path, compilation_cache):
  """``sde-jax sample`` with a sampler other than the config's, from its flags. (The default PC
  sampler reads the checkpoints of the tests above in this process.)"""
  sampler = ['--config.sampling.method=heun', '--config.sampling.nfe=3',
             '--config.sampling.churn=0.5']
  described = 'heun (nfe 3, churn 0.5)'
  import_checkpoint.import_to_workdir(import_config(), str(PTH), str(tmp_path))
  cmd = [sys.executable, '-m', 'sde_jax.cli', 'sample',
         *helpers.reference_flags(**IMPORT_OVERRIDES), '--workdir', str(tmp_path),
         '--num_samples', '3', *sampler]
  env = subprocess_env(compilation_cache)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  samples = np.load(tmp_path / 'samples' / 'samples.npz')['samples']
  assert samples.dtype == np.uint8 and samples.shape == (3, 16, 16, 3)
  assert (tmp_path / 'samples' / 'grid.png').stat().st_size > 0
  assert 'from checkpoint 1234' in proc.stderr
  assert f'with {described}' in proc.stderr


# --------------------------------------------------------------------------------------------
# One end-to-end step on the TFDS pipelines (mock data).


def test_one_step_under_tfds_mock_data(tmp_path):
  """Train and eval pipelines, one step, its checkpoint and log; one resolution of 8 channels
  at 8x8 (snapshots are tested above: here they would only add compile time). The other TFDS
  sets' preprocessing (LSUN's crop, CelebA's) is tests/test_data.py's, under mock data too."""
  relative = 've/cifar10_ncsnpp_continuous.py'
  import tensorflow_datasets as tfds
  config = helpers.tiny_config(
      relative, model=dict(attn_resolutions=(8,), num_scales=4),
      training=dict(n_iters=1, n_jitted_steps=1, log_freq=1, eval_freq=1, snapshot_freq=1,
                    snapshot_freq_for_preemption=1))
  with tfds.testing.mock_data(num_examples=16):
    state = train_job.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1 and steps_on_disk(tmp_path) == [1]
  assert os.listdir(tmp_path / 'tensorboard')


if __name__ == '__main__':
  _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))


def test_digits_snapshots_are_judged_and_other_data_sets_are_not(tmp_path):
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  (tmp_path / 'samples').mkdir()
  real = load_digits().images[-64:] / 16.0
  real = (np.repeat(np.repeat(real, 2, axis=1), 2, axis=2)[..., None] * 255).astype(np.uint8)
  noise = np.random.default_rng(0).integers(0, 256, real.shape).astype(np.uint8)
  config = tiny_config()
  good = train_job.judge_samples(config, real, str(tmp_path), 100)
  bad = train_job.judge_samples(config, noise, str(tmp_path), 200)
  table = (tmp_path / 'samples' / 'quality.md').read_text().splitlines()
  assert table[-2:] == [good, bad]
  confident = [float(row.split('|')[3].strip().rstrip('%')) for row in (good, bad)]
  assert confident[0] > 60 and confident[1] < 10
  assert good.split('|')[5].strip() == '10/10'
  config.data.dataset = 'CIFAR10'
  assert train_job.judge_samples(config, real, str(tmp_path), 300) is None


# --------------------------------------------------------------------------------------------
# Resume guards: damaged checkpoints and a changed config (restore-level: a 12-parameter state,
# no network, nothing compiled but its init).


def _small_state_init(key):
  params = {'w': jax.numpy.zeros((4, 3))}
  return train.TrainState(jax.numpy.int32(0), params, optax.adam(1e-3).init(params), params, key)


def _config_json(config):
  return json.loads(config.to_json_best_effort())


@pytest.fixture
def small_run(tmp_path):
  """A workdir with train checkpoints 2 and 4 of the small state, saved with tiny_config()."""
  manager = checkpoints.checkpoint_manager(tmp_path, item_names=checkpoints.TRAIN_ITEMS,
                                           writer=True)
  state = _small_state_init(jax.random.key(0))
  for step in (2, 4):
    state = state.replace(step=jax.numpy.int32(step), params={'w': state.params['w'] + 1})
    train.save_state(manager, state, step, {'config': _config_json(tiny_config())})
  manager.close()
  return tmp_path


def _resume(workdir, config=None, allow=()):
  manager = checkpoints.checkpoint_manager(workdir, item_names=checkpoints.TRAIN_ITEMS,
                                           writer=True)
  try:
    state, _, step = train.restore_or_init(
        manager, _small_state_init, parallel.make_mesh(), 0,
        config=_config_json(config or tiny_config()), allow_config_change=allow)
    return state, step, manager.all_steps()
  finally:
    manager.close()


def test_resume_moves_a_damaged_newest_step_aside_and_rewrites_it(small_run, caplog):
  chunks = max((p for p in (small_run / 'checkpoints' / '4' / 'params').rglob('*')
                if p.is_file()), key=lambda p: p.stat().st_size)
  chunks.write_bytes(chunks.read_bytes()[:-1] + b'\x00')
  with caplog.at_level('WARNING'):
    state, step, steps = _resume(small_run)
  assert step == 2 and list(steps) == [2]
  np.testing.assert_array_equal(state.params['w'], np.ones((4, 3)))
  aside = [p.name for p in (small_run / 'checkpoints').iterdir() if p.name.startswith('damaged-')]
  assert len(aside) == 1 and aside[0].startswith('damaged-4-')
  assert 'checkpoints/4 is damaged: params/' in caplog.text and aside[0] in caplog.text
  # Step 4 can be written again (save_items refuses existing steps), and keep_last counts it.
  manager = checkpoints.checkpoint_manager(small_run, item_names=checkpoints.TRAIN_ITEMS)
  train.save_state(manager, state.replace(step=jax.numpy.int32(4)), 4, {})
  manager.close()
  assert steps_on_disk(small_run) == [2, 4]


@pytest.mark.parametrize('field, value', [
    ('optim.lr', 0.5), ('training.sde', 'vesde'), ('model.sigma_min', 0.02),
    ('model.nf', 16), ('data.image_size', 16), ('seed', 7)])
def test_resume_with_a_changed_run_is_refused_naming_field_old_and_new(small_run, field, value):
  config = tiny_config()
  section, name = field.rsplit('.', 1) if '.' in field else ('', field)
  old = (config[section] if section else config)[name]
  (config[section] if section else config)[name] = value
  with pytest.raises(train.ConfigChangeError) as info:
    _resume(small_run, config)
  assert f'{field}: {old!r} (saved) -> {value!r} (now)' in str(info.value)
  assert f'--allow_config_change={field} ' in str(info.value)
  assert steps_on_disk(small_run) == [2, 4]


def test_resume_with_a_changed_schedule_continues(small_run, caplog):
  config = tiny_config(n_iters=40, log_freq=4, keep_last=3, snapshot_sampling=True)
  config.eval.num_samples = 3
  with caplog.at_level('INFO'):
    _, step, _ = _resume(small_run, config)
  assert step == 4
  assert 'training.n_iters: 12 -> 40 (schedule only)' in caplog.text


def test_allowed_config_change_continues_and_is_logged(small_run, caplog):
  config = tiny_config()
  config.optim.lr = 0.5
  config.model.sigma_min = 0.02
  with caplog.at_level('WARNING'):
    _, step, _ = _resume(small_run, config, allow=('optim.lr', 'model'))
  assert step == 4
  assert 'changed optim.lr: 0.001 (saved) -> 0.5 (now), allowed' in caplog.text
  assert 'changed model.sigma_min: 0.01 (saved) -> 0.02 (now)' in caplog.text
  with caplog.at_level('WARNING'):
    _, step, _ = _resume(small_run, config, allow=('all',))
  assert step == 4


def test_train_command_refuses_a_changed_run_before_compiling(small_run, compilation_cache):
  """`sde-jax train` in a workdir trained with another lr: stops at start-up naming the field;
  the flag reaches the guard (a field it allows that did not change is reported)."""
  cmd = [sys.executable, '-m', 'sde_jax.cli', 'train',
         *helpers.tiny_flags('digits/ddpmpp_continuous.py', model=dict(num_scales=8)),
         '--config.optim.lr=0.5', '--workdir', str(small_run), '--allow_config_change=model.nf']
  proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(compilation_cache),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'ConfigChangeError' in proc.stderr
  assert 'optim.lr: 0.001 (saved) -> 0.5 (now)' in proc.stderr
  assert "--allow_config_change names ['model.nf'], which did not change" in proc.stderr
  assert steps_on_disk(small_run) == [2, 4] and not (small_run / 'tensorboard').exists()
