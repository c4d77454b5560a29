"""Import of the original checkpoints: strictness, clear errors, parameter counts."""

import json
import pathlib
import pickle
import sys
import zipfile

import chex
import jax
import ml_collections
import numpy as np
import pytest

from sde_jax import checkpoints, models
from tests import helpers
from tests.helpers import load_config

DATA = pathlib.Path(__file__).parent / 'data'
PTH = DATA / 've_ncsnpp_continuous_tiny.pth'
FLAX = DATA / 'jax_ve_ncsnpp_continuous_tiny_checkpoint_5'


def fixture_config():
  """The config stored with the fixture checkpoints (not a shrink of a config file: it must match
  the stored network)."""
  return ml_collections.ConfigDict(
      json.loads((DATA / 've_ncsnpp_continuous_tiny.json').read_text())['config'])


@pytest.mark.parametrize('path', [PTH, FLAX])
def test_truncated_file_is_a_clear_error(tmp_path, path):
  bad = tmp_path / path.name
  bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(checkpoints.CheckpointError, match=f'cannot read.*{bad.name}'):
    checkpoints.import_original(bad, fixture_config())


def test_garbage_file_is_a_clear_error(tmp_path):
  bad = tmp_path / 'checkpoint_3'
  bad.write_bytes(b'\x00not a checkpoint' * 10)
  with pytest.raises(checkpoints.CheckpointError, match='checkpoint_3'):
    checkpoints.import_original(bad, fixture_config())


def test_missing_file():
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    checkpoints.import_original('nope.pth', fixture_config())


@pytest.mark.parametrize('path', [PTH, FLAX])
def test_shape_mismatch_names_parameter_shapes_and_fields(path):
  config = fixture_config()
  config.model.nf = 32
  with pytest.raises(checkpoints.CheckpointError) as info:
    checkpoints.import_original(path, config)
  message = str(info.value)
  # Names the parameter, the shape found, the shape expected and the likely config field.
  assert 'AttnBlockpp_0/GroupNorm_0/bias has shape (32,)' in message
  assert 'expects (64,)' in message and 'model.nf' in message


@pytest.mark.parametrize('path', [PTH, FLAX])
def test_structure_mismatch_is_refused(path):
  config = fixture_config()
  config.model.num_res_blocks = 2
  with pytest.raises(checkpoints.CheckpointError, match='num_res_blocks'):
    checkpoints.import_original(path, config)


def test_unsafe_pickle_is_refused(tmp_path, capsys):
  """A .pth whose pickle would run code (here print) is refused, and nothing of it runs."""
  class Evil:
    def __reduce__(self):
      return (print, ('pwned',))

  bad = tmp_path / 'evil.pth'
  with zipfile.ZipFile(bad, 'w') as archive:  # the zip format of torch.save, made without torch
    archive.writestr('archive/data.pkl',
                     pickle.dumps({'model': Evil(), 'ema': {}, 'step': 1}, protocol=2))
  with pytest.raises(checkpoints.CheckpointError,
                     match='cannot read PyTorch checkpoint .*evil.pth: refuses global '
                           'builtins.print'):
    checkpoints.import_original(bad, fixture_config())
  assert 'pwned' not in capsys.readouterr().out


def test_import_job_passes_the_pth_budget(tmp_path):
  """``sde-jax import --max_pth_bytes`` reaches the .pth reader (the default budget, 4 times
  the file's size, reads it: the other tests)."""
  from sde_jax.jobs import import_checkpoint
  with pytest.raises(checkpoints.CheckpointError, match=r'budget of 1000 bytes \(max_bytes\)'):
    import_checkpoint.import_to_workdir(fixture_config(), str(PTH), str(tmp_path),
                                        max_pth_bytes=1000)
  assert not (tmp_path / 'checkpoints').exists()


def test_pytorch_checkpoints_import_without_torch(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  state = checkpoints.import_original(PTH, fixture_config())
  assert state.step == json.loads((DATA / 've_ncsnpp_continuous_tiny.json').read_text())['step']


def test_ncsnv2_torch_checkpoint_needs_pytorch_flavour():
  config = ml_collections.ConfigDict(
      json.loads((DATA / 'torch_ncsnv2_64.json').read_text())['config'])
  with pytest.raises(checkpoints.CheckpointError, match='flavour=pytorch'):
    checkpoints.import_original(DATA / 'torch_ncsnv2_64.pth', config)


@pytest.mark.parametrize('relative, millions', [
    ('ve/cifar10_ncsnpp_continuous.py', 62.76),
    ('ve/cifar10_ncsnpp_deep_continuous.py', 107.59),
    ('ve/cifar10_ncsnpp.py', 62.69),
    ('vp/cifar10_ddpmpp_continuous.py', 61.80),
    ('vp/cifar10_ddpmpp_deep_continuous.py', 106.63),
    ('vp/ddpm/cifar10.py', 35.22),
    ('ve/ncsnv2/cifar10.py', 33.97),
    ('ve/celebahq_256_ncsnpp_continuous.py', 65.57),
    ('ve/ffhq_ncsnpp_continuous.py', 105.79),
])
def test_parameter_counts_of_the_full_configs(relative, millions):
  """The paper's model sizes, counted from shapes alone (jax.eval_shape, nothing allocated)."""
  config = load_config(relative)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  template, _ = checkpoints.param_template(models.get_model(config), shape)
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(template))
  assert round(count / 1e6, 2) == millions


def test_import_cli_writes_a_restorable_orbax_checkpoint(tmp_path):
  import subprocess
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'sde_jax.cli', 'import', *helpers.reference_flags(),
         '--checkpoint', str(PTH), '--workdir', str(workdir), '--max_pth_bytes=100000000']
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'step 1234' in result.stdout
  restored, meta = checkpoints.restore(workdir)
  expected = checkpoints.import_original(PTH, fixture_config())
  assert restored.step == 1234 and meta['source'] == str(PTH)
  for a, b in zip(jax.tree_util.tree_leaves(restored.params_ema),
                  jax.tree_util.tree_leaves(expected.params_ema)):
    np.testing.assert_array_equal(a, b)
  # A second import into the same workdir must not overwrite what is there.
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert again.returncode != 0 and 'never overwritten' in again.stderr


def test_restore_reads_a_checkpoint_saved_with_another_device_layout(tmp_path):
  """Saved sharded over the 8 test devices, read back by a process that has only one."""
  import subprocess
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()), ('fsdp',))
  value = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  sharded = jax.device_put(value, NamedSharding(mesh, PartitionSpec('fsdp')))
  manager = checkpoints.checkpoint_manager(tmp_path)
  checkpoints.save_items(manager, 7, {'params': {'w': sharded}, 'params_ema': {'w': 2 * sharded}},
                         {'source': 'test'})
  manager.wait_until_finished()
  manager.close()
  code = ('import numpy as np; from sde_jax import checkpoints; '
          f's, meta = checkpoints.restore({str(tmp_path)!r}); '
          'np.save("out.npy", np.asarray(s.params_ema["w"])); print(s.step, meta["source"])')
  env = {**__import__('os').environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['7', 'test']
  np.testing.assert_array_equal(np.load(tmp_path / 'out.npy'), 2 * value)


def test_first_save_of_small_replicated_arrays_compiles_nothing(tmp_path):
  """A first save of many small arrays replicated over the 8 test devices compiles no program
  (orbax would cut each array into one slice per replica, a compiled operation per shape: 9 s
  for a network's 150 arrays, at the first checkpoint, often a preemption's); the values
  restore exactly."""
  from jax._src import monitoring  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((8,), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  rng = np.random.default_rng(0)
  shapes = [(3, 3, 8, 16), (3, 3, 16, 16), (16,), (8, 32), (3, 3, 16, 8), (64,)]
  tree = {f'a{i}': jax.device_put(rng.normal(size=shapes[i % 6]).astype(np.float32), replicated)
          for i in range(24)}
  compiled = []

  def on_duration(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiled.append(event)

  manager = checkpoints.checkpoint_manager(tmp_path, item_names=('params', 'meta'), writer=True)
  monitoring.register_event_duration_secs_listener(on_duration)
  try:
    checkpoints.save_items(manager, 1, {'params': tree}, {})
    manager.wait_until_finished()
  finally:
    monitoring.unregister_event_duration_listener(on_duration)
    manager.close()
  assert not compiled, f'{len(compiled)} programs compiled while saving'
  manager = checkpoints.checkpoint_manager(tmp_path, item_names=('params', 'meta'))
  restored = checkpoints.restore_items(manager, 1, {'params': None})['params']
  manager.close()
  chex.assert_trees_all_equal(restored, jax.device_get(tree))


# --------------------------------------------------------------------------------------------
# Integrity: each step's manifest of hashes, checked before a restore.


def _tree(value):
  """Random values (which do not compress away: the array's chunk file is the largest one)."""
  rng = np.random.default_rng(value)
  return {'w': rng.normal(size=(64, 32)).astype(np.float32), 'b': np.arange(3.0) + value}


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory):
  """A workdir with steps 3 and 5 (params = EMA = step value), written by save_items."""
  workdir = tmp_path_factory.mktemp('two_steps')
  manager = checkpoints.checkpoint_manager(workdir, writer=True)
  for step in (3, 5):
    checkpoints.save_items(manager, step, {'params': _tree(step), 'params_ema': _tree(step)},
                           {'source': 'test'})
  manager.close()
  return workdir


@pytest.fixture
def workdir(two_steps, tmp_path):
  import shutil
  shutil.copytree(two_steps, tmp_path / 'run')
  return tmp_path / 'run'


def _array_file(step_dir):
  """The largest file under params/: the chunks of ``w`` (a changed byte there restores
  silently with a wrong value of ``w`` when nothing checks it)."""
  return max((p for p in (step_dir / 'params').rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)


def test_manifest_lists_every_file_and_an_intact_step_restores(workdir):
  from sde_jax.checkpoints import integrity
  step_dir = workdir / 'checkpoints' / '5'
  listed = set(json.loads((step_dir / 'manifest.json').read_text())['files'])
  on_disk = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob('*') if p.is_file()}
  assert listed == {f for f in on_disk if f != 'manifest.json'
                    and pathlib.PurePath(f).name not in integrity.UNHASHED}
  assert {'meta/metadata', 'params/_METADATA', 'params_ema/manifest.ocdbt'} <= listed
  state, meta = checkpoints.restore(workdir)
  assert state.step == 5 and meta['integrity'] == integrity.META_VALUE
  chex.assert_trees_all_equal(jax.device_get(state.params_ema), _tree(5))


def _flip_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _list_no_files(step_dir):
  """The manifest as written, but with an empty file list (nothing left to check)."""
  path = step_dir / 'manifest.json'
  path.write_text(json.dumps({**json.loads(path.read_text()), 'files': {}}))


@pytest.mark.parametrize('damage, file, problem', [
    (lambda d: _flip_byte(_array_file(d)), None, 'sha256'),
    (lambda d: _truncate(d / 'meta' / 'metadata'), 'meta/metadata', 'bytes, the manifest says'),
    (lambda d: _flip_byte(d / 'params' / '_METADATA'), 'params/_METADATA', 'sha256'),
    (lambda d: _array_file(d).unlink(), None, 'missing'),
    (lambda d: _truncate(d / 'manifest.json'), 'manifest.json', 'unreadable'),
    (lambda d: (d / 'manifest.json').unlink(), 'manifest.json', 'missing'),
    (_list_no_files, 'manifest.json', 'lists no files'),
])
def test_damaged_step_falls_back_to_the_newest_intact_one(workdir, caplog, damage, file,
                                                           problem):
  step_dir = workdir / 'checkpoints' / '5'
  file = file or _array_file(step_dir).relative_to(step_dir).as_posix()
  damage(step_dir)
  with caplog.at_level('WARNING'):
    state, _ = checkpoints.restore(workdir)
  assert state.step == 3
  chex.assert_trees_all_equal(jax.device_get(state.params), _tree(3))
  assert f'{step_dir} is damaged: {file}: ' in caplog.text and problem in caplog.text
  # Asked for by number, the damaged step is an error naming it, not a silent fallback.
  with pytest.raises(checkpoints.DamagedCheckpointError, match=f'{step_dir} is damaged'):
    checkpoints.restore_params(workdir, None, step=5)


def test_every_step_damaged_is_a_clear_error(workdir):
  for step in (3, 5):
    _flip_byte(_array_file(workdir / 'checkpoints' / str(step)))
  with pytest.raises(checkpoints.CheckpointError, match=r'every checkpoint under .* is damaged '
                     r'\(2 steps: 5: params/.*: sha256 .*; 3: params/.*\); nothing to restore'):
    checkpoints.restore(workdir)


def test_no_manifest_is_written_for_a_step_without_files(tmp_path):
  from sde_jax.checkpoints import integrity
  with pytest.raises(FileNotFoundError, match=f'{tmp_path} holds no file to list'):
    integrity.write_manifest(tmp_path, 7)
  assert not list(tmp_path.iterdir())


def test_a_step_without_manifest_restores_unverified(workdir, caplog):
  """As written before manifests: no manifest.json and no 'integrity' in meta."""
  step_dir = workdir / 'checkpoints' / '5'
  (step_dir / 'manifest.json').unlink()
  meta = json.loads((step_dir / 'meta' / 'metadata').read_text())
  del meta['integrity']
  (step_dir / 'meta' / 'metadata').write_text(json.dumps(meta))
  with caplog.at_level('WARNING'):
    state, _ = checkpoints.restore(workdir)
  assert state.step == 5 and 'restoring it unverified' in caplog.text
