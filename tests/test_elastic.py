"""The global example order (issue 27): the examples of global step s, with their flips and
dequantization noise, are the same at any layout (processes x devices per process, FSDP degree),
compared exactly by example id and pixel; a resumed stream continues exactly, at another layout
too; eval batches are global the same way.

Layouts are simulated in one process: process p of n holds fake devices [p d, (p + 1) d) of a
(data, fsdp) mesh over 4 devices and reads, with ``process_index=p, process_count=n``, the rows
of each global batch that its devices hold (``global_batches.sharded_rows``, as the trainer
does); the global batch is put together from every process's rows.
"""

import glob
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default_cifar10_configs
from sde_jax import data, parallel
from sde_jax.data import global_batches
from tests.helpers import write_progressive_gan_records

# (processes, devices per process, fsdp), over 4 devices.
LAYOUTS = [(1, 4, 1), (2, 2, 1), (4, 1, 1), (1, 4, 2), (2, 2, 2)]
GLOBAL_BATCH = 8
STEPS = 4
SEED = 5


def _config(**fields):
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(fields)
  return config


def _process_rows(layout):
  """Each simulated process's rows of a global batch, from the mesh's batch sharding."""
  n, d, fsdp = layout
  devices = jax.devices()[:n * d]
  sharding = parallel.batch_sharding(parallel.make_mesh(fsdp, devices))
  return [global_batches.sharded_rows(sharding, (GLOBAL_BATCH,), 0, devices[p * d:(p + 1) * d])
          for p in range(n)]


def _global(config, layout, split='train', steps=STEPS, start_step=0):
  """The global batches of ``steps`` steps from ``start_step`` at ``layout``."""
  n = layout[0]
  out = [{} for _ in range(steps)]
  for p, rows in enumerate(_process_rows(layout)):
    it = data.get_dataset(config, split, batch_size=GLOBAL_BATCH // n, seed=SEED,
                          start_step=start_step, process_index=p, process_count=n, rows=rows)
    for step, batch in zip(range(steps), it):
      for key, value in batch.items():
        out[step].setdefault(key, np.zeros((GLOBAL_BATCH, *value.shape[1:]), value.dtype))
        out[step][key][rows] = value
  return out


def _assert_same_everywhere(config, split='train', steps=STEPS):
  reference = _global(config, LAYOUTS[0], split, steps)
  for layout in LAYOUTS[1:]:
    for step, (a, b) in enumerate(zip(reference, _global(config, layout, split, steps))):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'{layout} step {step} {key}')
  return reference


def _assert_resumes_at_other_layouts(config, reference):
  """A stream started at step 2, at each layout, is the reference's steps 2, 3."""
  for layout in (LAYOUTS[2], LAYOUTS[4]):
    resumed = _global(config, layout, steps=2, start_step=2)
    for a, b in zip(reference[2:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'{layout} {key}')


def _ids(batches):
  return np.stack([b['index'] for b in batches])


def test_digits_steps_are_the_same_at_every_layout():
  config = _config(dataset='digits', random_flip=True, uniform_dequantization=True)
  reference = _assert_same_everywhere(config)
  ids = _ids(reference)
  assert len(set(ids.ravel())) == ids.size  # 32 distinct examples of one epoch of 1438
  _assert_resumes_at_other_layouts(config, reference)
  evals = _assert_same_everywhere(config, 'eval', steps=45)  # 359 examples: 45 batches of 8
  assert _ids(evals)[:-1].ravel().tolist() == list(range(352))
  assert _ids(evals)[-1].tolist() == [352, 353, 354, 355, 356, 357, 358, -1]


def test_tfds_mock_set_steps_are_the_same_at_every_layout():
  """CIFAR-10 under mock data (TFDS's data source, as for ArrayRecord): 10 examples, so the
  four steps of 8 run through four epochs."""
  config = default_cifar10_configs.get_default_configs()
  config.data.uniform_dequantization = True
  with tfds.testing.mock_data(num_examples=10):
    reference = _assert_same_everywhere(config)
    _assert_resumes_at_other_layouts(config, reference)
  stream = _ids(reference).ravel()
  for epoch in range(3):  # each epoch is a permutation of the 10, reshuffled
    assert sorted(stream[10 * epoch:10 * epoch + 10]) == list(range(10))
  assert stream[:10].tolist() != stream[10:20].tolist()


@pytest.fixture(name='folder')
def _folder(tmp_path):
  """Ten 8x8 PNGs whose top row is their number; returns the config."""
  for i in range(10):
    pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels[0] = i
    Image.fromarray(pixels).save(tmp_path / f'{i:02d}.png')
  return _config(dataset='folder', path=str(tmp_path), image_size=8, num_channels=3,
                 random_flip=True)


def test_image_folder_steps_are_the_same_at_every_layout(folder):
  reference = _assert_same_everywhere(folder)
  _assert_resumes_at_other_layouts(folder, reference)
  for batch in reference:  # ids name the files, whose top rows say their number
    np.testing.assert_array_equal(np.round(batch['image'][:, 0, 0, 0] * 255), batch['index'])
  originals = [np.asarray(Image.open(f'{folder.data.path}/{i:02d}.png')) / np.float32(255)
               for i in range(10)]
  mirrored = [np.allclose(image, originals[i][:, ::-1], atol=1e-6) for b in reference
              for image, i in zip(b['image'], b['index'])]
  same = [np.allclose(image, originals[i], atol=1e-6) for b in reference
          for image, i in zip(b['image'], b['index'])]
  assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_toy_steps_are_the_same_at_every_layout():
  reference = _assert_same_everywhere(_config(dataset='rings'))
  assert not np.array_equal(reference[0]['image'], reference[1]['image'])


def test_rows_must_be_this_process_batch():
  config = _config(dataset='digits')
  with pytest.raises(ValueError, match=r'rows=\[0, 9\].*batch_size=2 distinct rows in \[0, 4\)'):
    data.get_dataset(config, 'train', batch_size=2, process_index=0, process_count=2,
                     rows=[0, 9])


def _cli(*args):
  """``sde-jax args`` in this process (absl's app.run exits: status 0 expected)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from sde_jax import cli  # pylint: disable=g-import-not-at-top
  argv = sys.argv
  sys.argv = ['sde-jax', *args]
  try:
    with pytest.raises(SystemExit) as exited:
      cli.main()
    assert not exited.value.code, exited.value.code
  finally:
    sys.argv = argv
    flags.FLAGS.unparse_flags()


def test_convert_arrayrecord_round_trip_and_elastic_read(tmp_path):
  """``sde-jax convert-arrayrecord``: every record of two TFRecord files, byte for byte and in
  order, in ArrayRecord files, which FFHQ then reads elastically."""
  import grain  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
  write_progressive_gan_records(tmp_path / 'a-r03.tfrecords', images[:6])
  write_progressive_gan_records(tmp_path / 'b-r03.tfrecords', images[6:])
  _cli('convert-arrayrecord', f'--records={tmp_path}/*.tfrecords', f'--out={tmp_path}/ar')
  written = sorted(glob.glob(f'{tmp_path}/ar/*'))
  assert written == [f'{tmp_path}/ar/a-r03.array_record', f'{tmp_path}/ar/b-r03.array_record']
  for name in ('a', 'b'):
    source = grain.sources.ArrayRecordDataSource([f'{tmp_path}/ar/{name}-r03.array_record'])
    records = list(tf.data.TFRecordDataset(str(tmp_path / f'{name}-r03.tfrecords'))
                   .as_numpy_iterator())
    assert [source[i] for i in range(len(source))] == records
  with pytest.raises(FileExistsError, match='a-r03.array_record'):  # never overwritten
    _cli('convert-arrayrecord', f'--records={tmp_path}/a*.tfrecords', f'--out={tmp_path}/ar')
  config = _config(dataset='FFHQ', image_size=8, tfrecords_path=f'{tmp_path}/ar/*.array_record',
                   random_flip=True)
  evals = _assert_same_everywhere(config, 'eval', steps=2)
  real = np.concatenate([b['image'][b['mask']] for b in evals])
  np.testing.assert_allclose(real, images / 255, atol=1e-6)
  assert _ids(evals).ravel().tolist() == list(range(13)) + [-1, -1, -1]
  _assert_same_everywhere(config)


def test_draws_depend_on_the_counter_only():
  """Flips and noise of a position, drawn for a whole batch, equal those drawn alone (runs of
  consecutive counters are one call); each epoch's order is a fresh permutation."""
  from sde_jax.data import elastic  # pylint: disable=g-import-not-at-top
  counters = np.array([3, 4, 5, 9, 2])
  batch = elastic.uniform_noise(11, counters, (2, 3, 1))
  alone = np.concatenate([elastic.uniform_noise(11, counters[k:k + 1], (2, 3, 1))
                          for k in range(5)])
  np.testing.assert_array_equal(batch, alone)
  assert batch.dtype == np.float32 and 0 <= batch.min() and batch.max() < 1
  assert len({b.tobytes() for b in batch}) == 5
  first, second = (elastic.epoch_permutation(11, e, 10) for e in (0, 1))
  assert sorted(first) == sorted(second) == list(range(10)) and list(first) != list(second)
  positions = np.array([8, 9, 10, 11])  # the end of epoch 0, the start of epoch 1
  np.testing.assert_array_equal(elastic.stream_indices(11, positions, 10),
                                [first[8], first[9], second[0], second[1]])


def test_array_record_batch_is_one_read(tmp_path, monkeypatch):
  """A process's rows of a step are read with one ``__getitems__`` call, never record by
  record."""
  import grain  # pylint: disable=g-import-not-at-top
  from sde_jax.data import elastic  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import convert_arrayrecord  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
  write_progressive_gan_records(tmp_path / 'a.tfrecords', images)
  (path,) = convert_arrayrecord.convert_records(f'{tmp_path}/a.tfrecords', f'{tmp_path}/ar')
  monkeypatch.setattr(elastic, 'READ_THREADS', 0)
  it = data.get_dataset(_config(dataset='FFHQ', image_size=8, tfrecords_path=path), 'train',
                        batch_size=4, seed=SEED, process_index=1, process_count=2)
  source, calls = grain.sources.ArrayRecordDataSource, []
  getitems = source.__getitems__
  monkeypatch.setattr(source, '__getitem__', lambda self, key: calls.append('one'))
  monkeypatch.setattr(source, '__getitems__',
                      lambda self, keys: calls.append(len(keys)) or getitems(self, keys))
  batches = [next(it) for _ in range(3)]
  assert calls == [4, 4, 4]
  for batch in batches:
    np.testing.assert_allclose(batch['image'], images[batch['index']] / 255, atol=1e-6)
