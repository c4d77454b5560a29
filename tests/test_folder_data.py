"""``data.dataset='folder'``: a folder of one's own images, generated here with PIL.

Expected values come from the generated pixels themselves (images saved at the config's size in
lossless formats decode to exactly what was written), never from the pipeline.
"""

import hashlib
import itertools
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import chex
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from sde_jax import data
from sde_jax.jobs import config_check, fid_stats
from sde_jax.jobs import train as train_job
from sde_jax.data import folder_source, preprocess
from tests import gcs_emulator, helpers

# config_flags loads config files with importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

ROOT = pathlib.Path(__file__).parent.parent
SIZE = 8
CLASSES = ('bird', 'cat', 'dog')


def _unit(pixels):
  """uint8 -> float32 in [0, 1], as the pipeline divides (in float32)."""
  return np.asarray(pixels).astype(np.float32) / np.float32(255)


def _pixels(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(path, pixels, fmt=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  image.save(path, fmt, **({'lossless': True} if path.suffix == '.webp' else {}))
  return pixels


def _make_folder(root, per_class=5, channels=3):
  """Lossless images at SIZE x SIZE in class folders (some nested), in three formats; returns
  relative path -> pixels."""
  written = {}
  for c, name in enumerate(CLASSES):
    for i in range(per_class):
      ext = ('png', 'webp', 'PNG')[i % 3]
      rel = f'{name}/{"deep/er/" if i == 4 else ""}{i}.{ext}'
      written[rel] = _write(root / rel, _pixels(100 * c + i, (SIZE, SIZE, channels)))
  return written


def _config(root, **fields):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict({
      'dataset': 'folder', 'path': str(root), 'image_size': SIZE, 'num_channels': 3,
      'random_flip': False, 'uniform_dequantization': False, **fields})
  return config


def _batches(config, split, n=None, **kwargs):
  kwargs = {'batch_size': 4, 'process_index': 0, 'process_count': 1, **kwargs}
  it = data.get_dataset(config, split, **kwargs)
  return list(it) if n is None else list(itertools.islice(it, n))


def _real(batches):
  return np.concatenate([b['image'][b['mask']] for b in batches])


def _real_labels(batches):
  return np.concatenate([b['label'][b['mask']] for b in batches])


def _rows(images):
  return sorted(x.tobytes() for x in np.asarray(images))


@pytest.fixture(name='folder')
def _folder(tmp_path):
  root = tmp_path / 'images'
  return root, _make_folder(root)


# --- Reading ------------------------------------------------------------------------------------

def test_eval_reads_every_image_in_order_with_folder_labels(folder):
  root, written = folder
  evals = _batches(_config(root, labels_from_folders=True), 'eval')
  assert len(evals) == 4 and [int(b['mask'].sum()) for b in evals] == [4, 4, 4, 3]
  order = sorted(written)  # relative paths, sorted
  np.testing.assert_array_equal(_real(evals), _unit(np.stack([written[r] for r in order])))
  np.testing.assert_array_equal(_real_labels(evals),
                                [CLASSES.index(r.split('/')[0]) for r in order])
  for batch in evals:
    chex.assert_type([batch['image'], batch['label']], [np.float32, np.int32])
  without = _batches(_config(root), 'eval')
  assert not _real_labels(without).any()


def test_train_epochs_cover_the_folder_and_are_reshuffled(folder):
  root, written = folder
  config = _config(root, random_flip=True)
  train = _batches(config, 'train', n=6, batch_size=5, seed=3)  # 15 images: 3 batches an epoch
  for batch in train:
    chex.assert_shape(batch['image'], (5, SIZE, SIZE, 3))
  pixels = _unit(np.stack(list(written.values())))
  original = {x.tobytes(): i for i, x in enumerate(pixels)}
  mirrored = {x[:, ::-1].tobytes(): i for i, x in enumerate(pixels)}
  for epoch in (train[:3], train[3:]):
    rows = [x.tobytes() for b in epoch for x in b['image']]
    flipped = [r not in original for r in rows]
    assert sorted(original.get(r, mirrored.get(r)) for r in rows) == list(range(15))
    assert 0 < sum(flipped) < 15  # random flips: some of each
  assert _rows(train[0]['image']) != _rows(train[3]['image'])


def test_grayscale_and_jpeg(tmp_path):
  root = tmp_path / 'gray'
  gray = _write(root / 'a.png', _pixels(1, (SIZE, SIZE, 1)))
  _write(root / 'b.jpg', np.full((SIZE, SIZE, 3), 200, np.uint8), 'JPEG')
  with pytest.raises(ValueError, match=r'different channel counts: 1 with 1 \(e\.g\. a\.png\); '
                                       r'1 with 3 \(e\.g\. b\.jpg\)'):
    data.folder_splits(_config(root, num_channels=1).data)
  (root / 'b.jpg').unlink()
  _write(root / 'c.jpeg', np.full((SIZE, SIZE), 200, np.uint8)[..., None], 'JPEG')
  evals = _batches(_config(root, num_channels=1), 'eval')
  images = _real(evals)
  chex.assert_shape(images, (2, SIZE, SIZE, 1))
  np.testing.assert_array_equal(images[0], _unit(gray))
  np.testing.assert_allclose(images[1], 200 / 255, atol=2 / 255)  # JPEG is lossy
  with pytest.raises(ValueError, match='1 channel.*data.num_channels=3'):
    data.folder_splits(_config(root).data)


@pytest.mark.parametrize('hw', [(40, 60), (60, 40)])
def test_central_square_then_resize(tmp_path, hw):
  """Non-square photos: the central square (white here, black margins) at image_size."""
  side, (h, w) = min(hw), hw
  pixels = np.zeros((*hw, 3), np.uint8)
  pixels[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2] = 255
  _write(tmp_path / 'x' / 'wide.png', pixels)
  out = _real(_batches(_config(tmp_path / 'x', image_size=16), 'eval'))
  chex.assert_shape(out, (1, 16, 16, 3))
  np.testing.assert_array_equal(out, 1.0)
  sized = _pixels(5, (16, 16, 3))  # at image_size already: the resize is the identity
  np.testing.assert_array_equal(preprocess.square_resize(sized, 16).numpy(), _unit(sized))


def test_small_images_are_refused_unless_upsampling_is_asked(folder):
  root, _ = folder
  _write(root / 'cat' / 'tiny.png', _pixels(9, (6, 12, 3)))
  with pytest.raises(ValueError, match=r'1 image\(s\).*smaller than data.image_size=8.*'
                                       r'cat/tiny.png \(12x6\).*upsample_small'):
    data.folder_splits(_config(root).data)
  evals = _batches(_config(root, upsample_small=True), 'eval')
  assert sum(int(b['mask'].sum()) for b in evals) == 16


# --- Splits -------------------------------------------------------------------------------------

def _held_out_names(written, fraction):
  """The held-out files, computed here from the documented rule: the first round(f * n) files
  by sha256 of the relative path."""
  ranked = sorted(written, key=lambda r: hashlib.sha256(r.encode()).digest())
  return set(ranked[:round(fraction * len(written))])


def test_held_out_fraction(folder):
  root, written = folder
  config = _config(root, eval_fraction=0.2, labels_from_folders=True)
  splits = data.folder_splits(config.data)
  prefix = str(root) + '/'
  held = {p[len(prefix):] for p in splits.eval}
  assert held == _held_out_names(written, 0.2) and len(held) == 3
  assert {p[len(prefix):] for p in splits.train} == set(written) - held
  evals = _batches(config, 'eval')
  assert _rows(_real(evals)) == _rows(_unit(np.stack([written[r] for r in held])))
  train = _batches(config, 'train', n=3, batch_size=4)  # 12 training images: one epoch
  assert _rows(np.concatenate([b['image'] for b in train])) == _rows(
      _unit(np.stack([written[r] for r in set(written) - held])))
  # A new image moves at most one old file across (the count grows by at most one).
  _write(root / 'dog' / 'new.png', _pixels(77, (SIZE, SIZE, 3)))
  folder_source.scan_folder.cache_clear()
  grown = {p[len(prefix):] for p in data.folder_splits(config.data).eval}
  assert len((grown - {'dog/new.png'}) ^ held) <= 1


def test_a_second_folder_for_eval(folder, tmp_path):
  root, _ = folder
  other = tmp_path / 'held'
  held = {f'{name}/h.png': _write(other / name / 'h.png', _pixels(500 + i, (SIZE, SIZE, 3)))
          for i, name in enumerate(CLASSES[1:])}
  config = _config(root, eval_path=str(other), labels_from_folders=True)
  evals = _batches(config, 'eval')
  np.testing.assert_array_equal(_real(evals), _unit(np.stack([held[r] for r in sorted(held)])))
  np.testing.assert_array_equal(_real_labels(evals), [1, 2])  # the training folder's numbering
  _write(other / 'horse' / 'h.png', _pixels(600, (SIZE, SIZE, 3)))
  folder_source.scan_folder.cache_clear()
  with pytest.raises(ValueError, match="horse/h.png is in class folder 'horse'.*bird"):
    data.folder_splits(config.data)


def test_two_processes_partition_both_splits(folder):
  root, written = folder
  config = _config(root, eval_fraction=0.4)
  whole = _real(_batches(config, 'eval', batch_size=2))
  shards = [_batches(config, 'eval', batch_size=2, process_index=p, process_count=2)
            for p in (0, 1)]
  assert len(shards[0]) == len(shards[1]) == 2  # 6 held out: 3 each, in 2 padded batches
  assert _rows(np.concatenate([_real(s) for s in shards])) == _rows(whole)
  assert not set(_rows(_real(shards[0]))) & set(_rows(_real(shards[1])))
  train = [np.concatenate([b['image'] for b in _batches(
      config, 'train', n=1, batch_size=4, process_index=p, process_count=2, seed=1)])
           for p in (0, 1)]  # 9 training images: 5 and 4, one batch of 4 an epoch
  assert not set(_rows(train[0])) & set(_rows(train[1]))
  assert set(_rows(np.concatenate(train))) <= set(_rows(_unit(np.stack(list(written.values())))))


def test_start_step_continues_the_same_stream(folder):
  """start_step=K gives batches K, K+1, ... of a fresh iterator, across epoch boundaries."""
  root, _ = folder
  config = _config(root, random_flip=True, uniform_dequantization=True)
  fresh = _batches(config, 'train', n=7, batch_size=6, seed=7)  # 2 batches an epoch
  for k in (1, 2, 3, 5):
    resumed = _batches(config, 'train', n=7 - k, batch_size=6, seed=7, start_step=k)
    assert len(resumed) == len(fresh[k:])
    for a, b in zip(resumed, fresh[k:]):
      chex.assert_trees_all_equal(a, b)
  assert _rows(fresh[0]['image']) != _rows(fresh[2]['image'])


# --- Bad input ----------------------------------------------------------------------------------

def test_files_that_are_not_images(folder):
  root, _ = folder
  (root / 'cat' / 'notes.txt').write_text('not an image')
  (root / 'dog' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  _write(root / 'dog' / 'anim.gif', _pixels(3, (SIZE, SIZE, 3)), 'GIF')
  (root / '.DS_Store').write_bytes(b'\0\1\2')  # hidden: left out and counted, never an error
  (root / 'bird' / '.ipynb_checkpoints').mkdir()
  (root / 'bird' / '.ipynb_checkpoints' / 'x.png').write_bytes(b'junk')
  with pytest.raises(ValueError, match=r'3 of the 18 files.*cat/notes.txt \(Unidentified.*'
                                       r'dog/anim.gif \(a GIF image.*dog/broken.png.*'
                                       r'skip_bad_files=True'):
    data.folder_splits(_config(root).data)
  scan = data.scan_folder(str(root), skip_bad_files=True)
  assert len(scan.images) == 15 and len(scan.skipped) == 3 and scan.hidden == 2
  assert len(_real(_batches(_config(root, skip_bad_files=True), 'eval'))) == 15


def _png_header(width, height):
  """A PNG of its signature and IHDR alone (45 bytes), declaring a ``width`` x ``height`` RGB
  image: what PIL's header read sees of a decompression bomb."""
  ihdr = b'IHDR' + struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr
          + struct.pack('>I', zlib.crc32(ihdr)) + struct.pack('>I', 0) + b'IDAT'
          + struct.pack('>I', zlib.crc32(b'IDAT')))


def test_an_image_too_large_to_decode(tmp_path, caplog):
  """A header that declares 20000 x 20000 pixels (PIL's DecompressionBombError): named in the
  error, or left out and named in the log with data.skip_bad_files."""
  root = tmp_path / 'images'
  _write(root / 'a.png', _pixels(0, (SIZE, SIZE, 3)))
  (root / 'bomb.png').write_bytes(_png_header(20000, 20000))
  with pytest.raises(ValueError, match=r'1 of the 2 files.*bomb.png \(too large to decode: '
                                       r'Image size \(400000000 pixels\).*skip_bad_files=True'):
    data.scan_folder(str(root))
  with caplog.at_level('WARNING'):
    scan = data.scan_folder(str(root), skip_bad_files=True)
  assert [f.relative for f in scan.images] == ['a.png'] and len(scan.skipped) == 1
  assert 'left out 1 file(s)' in caplog.text and 'bomb.png (too large to decode' in caplog.text


@pytest.mark.parametrize('fields, message', [
    (dict(path=''), r"data.path=''; expected the folder"),
    (dict(path='/nonexistent/images'), 'is not a folder'),
    (dict(eval_fraction=1.0), r'eval_fraction=1.0; expected a number in \[0, 1\)'),
    (dict(eval_fraction=0.01), r'holds out 0; expected at least one image in each split'),
    (dict(eval_fraction=0.2, eval_path='/elsewhere'), 'both set'),
    (dict(num_channels=2), r'num_channels=2; expected 1, 3 or 4'),
])
def test_bad_options(folder, fields, message):
  root, _ = folder
  config = _config(root)
  config.data.update(fields)
  with pytest.raises(ValueError, match=message):
    data.get_dataset(config, 'train', batch_size=2)


def test_empty_folder_and_loose_files_with_class_labels(tmp_path):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  with pytest.raises(ValueError, match=r'holds no PNG, JPEG or WebP image \(found 0 file'):
    data.folder_splits(_config(tmp_path / 'empty').data)
  _write(tmp_path / 'loose' / 'a.png', _pixels(0, (SIZE, SIZE, 3)))
  with pytest.raises(ValueError, match='a.png is not in a class folder'):
    data.folder_splits(_config(tmp_path / 'loose', labels_from_folders=True).data)


def test_config_check_scans_before_a_job_starts(folder, tmp_path):
  """The commands that read the data refuse a bad folder up front; classifier classes must be
  the class folders; sampling never reads the folder."""
  root, _ = folder
  config = helpers.tiny_config('folder_ncsnpp_continuous.py',
                               data=dict(path=str(root), image_size=SIZE))
  config_check.check(config, 'train')
  config.data.path = str(tmp_path / 'missing')
  for command in ('train', 'eval', 'fid-stats'):
    with pytest.raises(ValueError, match=f'(?s)sde-jax {command}.*missing.*is not a folder'):
      config_check.check(config, command)
  config_check.check(config, 'sample')
  classifier = helpers.tiny_config('digits/classifier.py')
  classifier.data = ml_collections.ConfigDict(_config(root).data.to_dict())
  with pytest.raises(ValueError, match='data.labels_from_folders=False; expected True'):
    config_check.check(classifier, 'train-classifier')
  classifier.data.labels_from_folders = True
  with pytest.raises(ValueError, match=r'classifier.num_classes=10; expected 3, the class '
                                       r'folders under data.path \(bird, cat, dog\)'):
    config_check.check(classifier, 'train-classifier')
  classifier.classifier.num_classes = 3
  config_check.check(classifier, 'train-classifier')


# --- From the command line, and in a bucket -----------------------------------------------------

def test_train_and_fid_stats_from_command_line_flags(folder, tmp_path):
  """The jobs of ``sde-jax train`` (two steps) and ``sde-jax fid-stats`` on a folder, their
  config parsed from command-line flags as the CLI does (in this process: the CLI's own dispatch
  is tested in test_cli); fid-stats of a bad folder fails before its workdir exists."""
  from sde_jax.metrics import fid, inception  # pylint: disable=g-import-not-at-top
  root, written = folder
  weights = tmp_path / 'tiny_inception.npz'
  model = inception.InceptionV3(**helpers.tiny_inception_options())
  params = inception.init_params(jax.random.key(0), model)
  np.savez(weights, **inception.state_dict_from_params(params))
  flags = helpers.tiny_flags(
      'folder_ncsnpp_continuous.py', data=dict(path=str(root), image_size=SIZE),
      training=dict(n_iters=2, snapshot_freq=2, eval_freq=2, log_freq=2, snapshot_sampling=False),
      eval=dict(inception_weights=str(weights)))
  config = helpers.parse_flags(flags)
  workdir = str(tmp_path / 'run')
  state = train_job.train_and_evaluate(config, workdir)
  assert int(state.step) == 2 and (tmp_path / 'run' / 'checkpoints' / '2').is_dir()
  path = fid_stats.dataset_stats(config, workdir)
  assert path.endswith(fid.stats_filename('folder', SIZE))
  stats = fid.load_stats(path)['pool_3']
  images = np.stack([written[r] for r in sorted(written)])
  expected = jax.jit(model.apply)({'params': params}, images)['pool_3']
  np.testing.assert_allclose(_rows_sorted(stats), _rows_sorted(expected), rtol=1e-4, atol=1e-5)
  config = helpers.parse_flags(flags + [f'--config.data.path={tmp_path / "nothing"}'])
  with pytest.raises(ValueError, match='is not a folder'):
    fid_stats.dataset_stats(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def _rows_sorted(features):
  features = np.asarray(features, np.float64)
  return features[np.lexsort(features.T[::-1])]


def _bucket_worker(url):
  """Prints the eval images of the folder at ``url`` as one line of hex."""
  config = _config(url, labels_from_folders=True)
  evals = list(data.get_dataset(config, 'eval', batch_size=4, process_index=0, process_count=1))
  print('RESULT', np.round(_real(evals) * 255).astype(np.uint8).tobytes().hex(),
        _real_labels(evals).tolist())


def test_a_folder_in_a_bucket(tmp_path):
  """The same images read from gs:// (a real GCS API on 127.0.0.1) as written."""
  written = _make_folder(tmp_path / 'local', per_class=2)
  with gcs_emulator.running() as gcs:
    for rel in written:
      gcs.write(f'images/{rel}', (tmp_path / 'local' / rel).read_bytes())
    env = {**os.environ, **gcs.environment(), 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
    proc = subprocess.run([sys.executable, '-m', 'tests.test_folder_data',
                           f'gs://{gcs.bucket}/images'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  hex_pixels, labels = proc.stdout.split('RESULT ', 1)[1].split(' ', 1)
  order = sorted(written)
  assert bytes.fromhex(hex_pixels) == np.stack([written[r] for r in order]).tobytes()
  assert labels.strip() == str([CLASSES.index(r.split('/')[0]) for r in order])


if __name__ == '__main__':
  _bucket_worker(sys.argv[1])
