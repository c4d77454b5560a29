"""The PyTorch-free ``.pth`` reader: equal to ``torch.load(weights_only=True)`` on every test
``.pth``, and safe on hostile files.

The references in ``data/pth_reference`` (and the format fixtures ``data/pth_formats``) are made
by ``tools/make_pth_reference.py``, which needs torch; these tests need none. The hostile files
are built here byte by byte, with the small pickle assembler below.
"""

import collections
import gzip
import hashlib
import io
import json
import pathlib
import pickle
import re
import struct
import sys
import tarfile
import zipfile

import ml_dtypes
import numpy as np
import pytest

from sde_jax.checkpoints import CheckpointError, read_torch, torch_pickle
from tests.pth_files import (LEGACY, call, dict_of, legacy_file, op_global, program, state_dict_file,
                             storage, tensor, tuple_of, value, zip_file)

DATA = pathlib.Path(__file__).parent / 'data'
REFERENCE = DATA / 'pth_reference'
FORMATS = DATA / 'pth_formats'
PTH_FILES = sorted(DATA.rglob('*.pth'))


def reference_name(path: pathlib.Path) -> str:
  """The rule of tools/make_pth_reference.py: ``pth_formats/zip.pth`` -> ``pth_formats__zip``."""
  return path.relative_to(DATA).with_suffix('').as_posix().replace('/', '__')


# --------------------------------------------------------------------------------------------
# Equality with torch.load(weights_only=True), from the stored references.


def _dtype(name: str) -> np.dtype:
  return np.dtype(getattr(ml_dtypes, name, name))


def _plain(node: dict):
  """The Python value of a reference's plain (non-tensor) node."""
  (kind, body), = node.items()
  decode = {'none': lambda b: None, 'bytes': bytes.fromhex, 'bytearray': bytearray.fromhex,
            'complex': lambda b: complex(*b), 'device': str, 'dtype': _dtype,
            'tuple': lambda b: tuple(map(_plain, b)), 'set': lambda b: set(map(_plain, b))}
  return decode[kind](body) if kind in decode else body


def _compare_tensor(value, node, arrays, where) -> int:
  assert isinstance(value, np.ndarray), (where, type(value))
  assert (value.dtype, value.shape) == (_dtype(node['dtype']), tuple(node['shape'])), where
  assert value.flags.c_contiguous and value.flags.writeable, where
  assert hashlib.sha256(value.tobytes()).hexdigest() == node['sha256'], where
  if node['tensor'] in arrays:
    ref = arrays[node['tensor']]
    assert ref.shape == value.shape and ref.tobytes() == value.tobytes(), where
  return int(node['tensor'] in arrays)


def _compare(value, node, arrays, where='') -> int:
  """Asserts that ``value`` is what the reference ``node`` records; the number of tensors
  compared with the stored arrays (the others by their hash)."""
  if 'tensor' in node:
    return _compare_tensor(value, node, arrays, where)
  (kind, body), = node.items()
  if kind in ('dict', 'OrderedDict', 'Counter'):
    assert type(value).__name__ == kind, (where, type(value))
    assert list(value) == [_plain(k) for k, _ in body], where
    return sum(_compare(value[_plain(k)], v, arrays, f'{where}/{_plain(k)}') for k, v in body)
  if kind in ('list', 'tuple'):
    assert type(value).__name__ == kind and len(value) == len(body), (where, value)
    return sum(_compare(v, n, arrays, f'{where}/{i}') for i, (v, n) in enumerate(zip(value, body)))
  expected = _plain(node)
  assert type(value) is type(expected) and value == expected, (where, value, expected)
  return 0


def _reference(path: pathlib.Path):
  name = reference_name(path)
  record = json.loads(gzip.decompress((REFERENCE / f'{name}.json.gz').read_bytes()))
  with np.load(REFERENCE / f'{name}.npz') as arrays:
    return record, {k: arrays[k] for k in arrays.files}


def test_every_pth_has_a_reference_and_every_reference_a_pth():
  names = {reference_name(p) for p in PTH_FILES}
  assert {'pth_formats__zip', 'pth_formats__legacy'} <= names
  have = {p.name.removesuffix('.json.gz') for p in REFERENCE.glob('*.json.gz')}
  arrays = {p.stem for p in REFERENCE.glob('*.npz')}
  assert names <= have & arrays, (f'no reference for {sorted(names - (have & arrays))}: run '
                                  f'python tools/make_pth_reference.py --no_formats (needs torch)')
  assert have | arrays <= names, f'references of no .pth: {sorted((have | arrays) - names)}'


@pytest.mark.parametrize('path', PTH_FILES, ids=reference_name)
def test_equals_torch_load(path):
  """dtype, shape and bits of every tensor; every container and plain value."""
  record, arrays = _reference(path)
  assert record['file'] == path.relative_to(DATA).as_posix()
  full = _compare(torch_pickle.load(path.read_bytes(), str(path)), record['tree'], arrays)
  assert full == len(arrays)
  if path.parent == FORMATS:  # these references hold every tensor, not only hashes
    assert full == record_tensors(record['tree']) > 20


def record_tensors(node) -> int:
  if isinstance(node, dict):
    return 'tensor' in node or sum(record_tensors(v) for v in node.values())
  return sum(record_tensors(v) for v in node) if isinstance(node, list) else 0


def test_format_fixtures_hold_views_and_shared_storages():
  """What the equality test covers: views of 'base', and values numpy can hold that torch's
  ``.numpy()`` would not (bfloat16, conj and neg views)."""
  for name in ('zip', 'legacy'):
    tree = torch_pickle.load((FORMATS / f'{name}.pth').read_bytes(), name)
    base = tree['base']
    np.testing.assert_array_equal(tree['transposed'], base.T)
    np.testing.assert_array_equal(tree['sliced'], base[1:, 2:5])
    np.testing.assert_array_equal(np.stack(tree['rows']), base[[0, 2]])
    np.testing.assert_array_equal(tree['expanded'], np.full((3, 2), 7, np.float32))
    tree['rows'][0][:] = 0  # a copy of its own
    assert base[0].any()
    assert tree['bfloat16'].dtype == ml_dtypes.bfloat16 and tree['scalar'].shape == ()
    np.testing.assert_array_equal(tree['complex64_conj'], np.array([1 - 2j, -3.5 + 4j]))
    np.testing.assert_array_equal(tree['negative_view'], np.array([-1.5, 2.0], np.float32))
    assert tree['torch_values'] == {'device': 'cuda:0', 'cpu': 'cpu',
                                    'dtype': np.dtype(np.float16), 'size': (2, 3)}
    assert tree['plain']['step'] == 12 and isinstance(tree['ordered'], collections.OrderedDict)


def test_reads_without_torch(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  for path in sorted(FORMATS.glob('*.pth')):
    assert read_torch(str(path))['plain']['decay'] == 0.999


def test_hand_made_files_load():
  """The assembler's files are valid (so the hostile variants below fail for their reason)."""
  expected = np.arange(6, dtype=np.float32).reshape(2, 3)
  cases = {
      'zip': zip_file(program(dict_of(w=tensor(storage())))),
      'legacy': legacy_file(program(dict_of(w=tensor(storage(legacy_view=LEGACY))))),
      'big-endian': zip_file(program(dict_of(w=tensor(storage()))),
                             {'0': np.arange(6, dtype='>f4').tobytes()}, b'big'),
      'no byteorder record': zip_file(program(dict_of(w=tensor(storage()))), byteorder=None),
      'other prefix': zip_file(program(dict_of(w=tensor(storage()))), prefix='my_model'),
      '_rebuild_tensor': zip_file(program(dict_of(w=tensor(
          storage(), rebuild='torch._utils._rebuild_tensor')))),
      'parameter with state': zip_file(program(dict_of(w=call(
          op_global('torch._utils._rebuild_parameter_with_state'), tensor(storage()),
          value(True), call(op_global('collections.OrderedDict')), value({'tag': 1}))))),
      'tensor with attributes': zip_file(program(dict_of(w=call(
          op_global('torch._tensor._rebuild_from_type_v2'),
          op_global('torch._utils._rebuild_tensor_v2'), op_global('torch.Tensor'),
          tuple_of(storage(), value(0), value((2, 3)), value((3, 1)), value(False),
                   call(op_global('collections.OrderedDict'))), value({'note': 'x'}))))),
  }
  for name, data in cases.items():
    out = torch_pickle.load(data, name)['w']
    assert out.dtype == np.float32 and out.dtype.isnative, name
    np.testing.assert_array_equal(out, expected, err_msg=name)


def test_state_dict_file():
  state = {'conv.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
           'bn.num_batches_tracked': np.array(7), 'mask': np.array([1, 0], np.uint8)}
  out = torch_pickle.load(state_dict_file(state), 'state.pth')
  assert isinstance(out, collections.OrderedDict) and list(out) == list(state)
  for key, array in state.items():
    assert out[key].dtype == array.dtype
    np.testing.assert_array_equal(out[key], array)


def test_legacy_storage_views():
  """Legacy ids may name a view ``(key, offset, numel)`` of a root storage."""
  view = storage(legacy_view=(('v', 2, 3),))
  out = torch_pickle.load(legacy_file(program(dict_of(w=tensor(view, size=(3,), stride=(1,))))),
                          'views')['w']
  np.testing.assert_array_equal(out, np.array([2, 3, 4], np.float32))
  beyond = storage(legacy_view=(('v', 4, 3),))
  with pytest.raises(CheckpointError, match='passes the end'):
    torch_pickle.load(legacy_file(program(tensor(beyond, size=(3,), stride=(1,)))), 'beyond')


# --------------------------------------------------------------------------------------------
# Hostile files.


def _touch(path):  # what a hostile pickle would call: it must never run
  pathlib.Path(path).write_text('ran')


def _as(fmt: str, pkl: bytes) -> bytes:
  return zip_file(pkl) if fmt == 'zip' else legacy_file(pkl)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('dotted, arg', [
    ('os.system', 'touch {marker}'),
    ('posix.system', 'touch {marker}'),
    ('builtins.eval', "open({marker!r}, 'w')"),
    ('builtins.exec', "open({marker!r}, 'w')"),
    ('subprocess.call', 'touch {marker}'),
    (f'{__name__}._touch', '{marker}'),
    ('torch.load', '{marker}'),
])
def test_refuses_globals_and_runs_nothing(tmp_path, fmt, dotted, arg):
  marker = tmp_path / 'marker'
  evil = call(op_global(dotted), value(arg.format(marker=str(marker))))
  pkl = program(dict_of(w=tensor(storage(legacy_view=() if fmt == 'zip' else LEGACY)),
                        step=evil))
  with pytest.raises(CheckpointError, match=rf'evil\.pth: refuses global {re.escape(dotted)}'):
    torch_pickle.load(_as(fmt, pkl), 'evil.pth')
  assert not marker.exists()


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (_touch, (self.marker,))


@pytest.mark.parametrize('protocol', range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_refuses_what_pickle_makes_of_a_callable(tmp_path, protocol):
  """Any protocol (4 and 5 name globals with STACK_GLOBAL, checked by find_class)."""
  marker = tmp_path / 'marker'
  pkl = pickle.dumps({'model': {'w': _Evil(str(marker))}}, protocol=protocol)
  for data in (zip_file(pkl), legacy_file(pkl)):
    with pytest.raises(CheckpointError, match=re.escape(f'refuses global {__name__}._touch')):
      torch_pickle.load(data, 'evil.pth')
  assert not marker.exists()


def test_build_cannot_change_the_allowed_globals():
  """BUILD (``__setstate__``) on a stand-in is refused: a file cannot patch collections.Counter
  or the tensor rebuild for the next file."""
  most_common = collections.Counter.most_common
  for target in ('collections.Counter', 'torch._utils._rebuild_tensor_v2', 'torch.FloatStorage'):
    state = value((None, {'most_common': None, 'fn': None}))
    with pytest.raises(CheckpointError, match='sets the state'):
      torch_pickle.load(zip_file(program(op_global(target) + state + b'b')), 'build.pth')
  assert collections.Counter.most_common is most_common
  assert torch_pickle.load(zip_file(program(dict_of(w=tensor(storage())))), 'ok')['w'].size == 6


@pytest.mark.parametrize('key', ['7', '../../etc/passwd', '/etc/passwd', 'data.pkl'])
def test_storage_key_without_its_entry(key):
  data = zip_file(program(dict_of(w=tensor(storage(key)))))
  with pytest.raises(CheckpointError, match=re.escape(f'no entry archive/data/{key}')):
    torch_pickle.load(data, 'keys.pth')


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_truncated_file(fmt):
  data = (FORMATS / f'{fmt}.pth').read_bytes()
  for cut in (len(data) // 2, len(data) - 3, 40):
    with pytest.raises(CheckpointError, match=f'cannot read PyTorch checkpoint {fmt}.pth'):
      torch_pickle.load(data[:cut], f'{fmt}.pth')


def test_corrupted_byte_fails_the_crc():
  data = bytearray((FORMATS / 'zip.pth').read_bytes())
  with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
    entry = max(archive.infolist(), key=lambda info: info.file_size)
    content = archive.read(entry)
  at = data.find(content) + len(content) // 2
  data[at] ^= 0x10
  with pytest.raises(CheckpointError, match='damaged zip archive: Bad CRC-32'):
    torch_pickle.load(bytes(data), 'zip.pth')


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_huge_declared_storage(fmt):
  """A numel of 10**12 is refused from the file's sizes, before any allocation, even with a
  budget that would allow it (by default the budget refuses it first: tests/test_pth_hostile.py)."""
  store = storage(numel=10**12, legacy_view=() if fmt == 'zip' else LEGACY)
  with pytest.raises(CheckpointError, match='declares 4000000000000 bytes|holds 6 elements'):
    torch_pickle.load(_as(fmt, program(tensor(store, size=(10**6, 10**6), stride=(10**6, 1)))),
                      'huge.pth', max_bytes=1 << 62)


@pytest.mark.parametrize('offset, size, stride, match', [
    (0, (10**6, 10**6), (10**6, 1), 'reaches element'),
    (0, (10**6, 10**6), (0, 0), r'stride \(0, 0\) brings its arrays to \d+ bytes, more than its '
                                'budget'),
    (6, (), (), 'reaches element 6'),
    (4, (3,), (1,), 'reaches element 6'),
    (0, (2, 3), (3, 2), 'reaches element 7'),
    (0, (2, 3), (3, -1), 'non-negative'),
    (-1, (2,), (1,), 'invalid tensor'),
    (0, (2, 3), (1,), 'invalid tensor'),
    (0, (1,) * 65, (1,) * 65, 'invalid tensor'),
    (0, (2.0,), (1,), 'non-negative ints'),
])
def test_views_outside_the_storage(offset, size, stride, match):
  for data in (zip_file(program(tensor(storage(), offset, size, stride))),
               legacy_file(program(tensor(storage(legacy_view=LEGACY), offset, size, stride)))):
    with pytest.raises(CheckpointError, match=match):
      torch_pickle.load(data, 'view.pth')


def test_empty_tensor_needs_no_storage_bytes():
  out = torch_pickle.load(zip_file(program(tensor(storage(numel=0), 0, (0, 3), (3, 1))),
                                   {'0': b''}), 'empty.pth')
  assert out.shape == (0, 3) and out.dtype == np.float32


def test_legacy_storage_counts_must_match():
  short = {'0': (5, np.arange(5, dtype='<f4').tobytes())}
  with pytest.raises(CheckpointError, match='holds 5 elements, its tensors declare 6'):
    torch_pickle.load(legacy_file(program(tensor(storage(legacy_view=LEGACY))), short), 'n.pth')
  extra = {'0': (6, bytes(24)), '9': (1, bytes(4))}
  with pytest.raises(CheckpointError, match="storage '9' is listed but no tensor uses it"):
    torch_pickle.load(legacy_file(program(tensor(storage(legacy_view=LEGACY))), extra), 'n.pth')


def test_storage_entry_smaller_than_declared():
  data = zip_file(program(tensor(storage(numel=7))))
  with pytest.raises(CheckpointError, match='declares 28 bytes for archive/data/0, which holds 24'):
    torch_pickle.load(data, 'small.pth')


def test_huge_memo_index_is_refused_before_running():
  """The C unpickler would size its memo by the index (2**32 entries: 32 GiB)."""
  pkl = program(b'N' + b'r' + struct.pack('<I', 2**32 - 1))
  with pytest.raises(CheckpointError, match='memo index'):
    torch_pickle.load(zip_file(pkl), 'memo.pth')


def _tar() -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
    info = tarfile.TarInfo('storages')
    info.size = 4
    tar.addfile(info, io.BytesIO(b'\x80\x02K\x00'))
  return buf.getvalue()


def _npz() -> bytes:
  buf = io.BytesIO()
  np.savez(buf, w=np.ones(3))
  return buf.getvalue()


@pytest.mark.parametrize('data, match', [
    (b'', 'not a torch.save file'),
    (b'hello, not a checkpoint\n' * 4, 'not a torch.save file'),
    (b'{"json": true}', 'not a torch.save file'),
    (pickle.dumps({'step': 1}, protocol=2), 'no magic number'),
    (pickle.dumps(torch_pickle.MAGIC_NUMBER, protocol=2) + pickle.dumps(1000), 'version 1000'),
    (_npz(), 'without w.npy/data.pkl'),
    (zip_file(program(value(1)), extra=['constants.pkl']), 'TorchScript'),
    (_tar(), 'tar format'),
    (zip_file(program(value(1)), byteorder=b'middle'), "byteorder 'middle'"),
])
def test_not_a_torch_save_file(data, match):
  with pytest.raises(CheckpointError, match=match):
    torch_pickle.load(data, 'other.bin')


def test_unsupported_tensor_kinds_say_so():
  sparse = call(op_global('torch._utils._rebuild_sparse_tensor'), value(1))
  with pytest.raises(CheckpointError, match='sparse tensors are not supported'):
    torch_pickle.load(zip_file(program(sparse)), 's.pth')
  with pytest.raises(CheckpointError, match=r'torch\.complex32 \(no numpy equivalent\)'):
    torch_pickle.load(zip_file(program(op_global('torch.complex32'))), 'c.pth')


def test_deep_nesting_is_a_clear_error():
  pkl = program(b']' * 100_000 + b'a' * 99_999)
  with pytest.raises(CheckpointError, match='nested too deeply'):
    torch_pickle.load(zip_file(pkl), 'deep.pth')
