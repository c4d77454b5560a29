"""Hostile ``.pth`` files (issue 26): the reader must never crash, read outside a buffer,
allocate without bound or format a message without bound. Files that could crash the reader or
take much memory are read in a child process under an address-space limit
(tests/pth_child.py), so that a crash fails the test instead of killing pytest; the fuzz test
(tests/pth_fuzz.py) reads mutations of valid files there too.
"""

import collections
import io
import re
import zipfile

import numpy as np
import pytest

from sde_jax.checkpoints import CheckpointError, pth_bounds, read_torch, torch_pickle
from tests import pth_fuzz
from tests.pth_child import load_in_child, run
from tests.pth_files import (call, get, op_global, program, put, repeated_tensors, resize_entry,
                             storage, tensor, tuple_dag, tuple_of, value, zip_file)

GIB = 1 << 30


def _budget(data: bytes) -> int:
  return pth_bounds.BYTES_PER_FILE_BYTE * len(data) + pth_bounds.BUDGET_SLACK


# --------------------------------------------------------------------------------------------
# Short zip entries: the bytes read, not the sizes declared.


def _short_entry(numel: int, held: int) -> bytes:
  """A float32 tensor of ``numel`` elements whose stored entry declares ``4 * numel`` bytes
  and holds ``held`` (with the CRC of those)."""
  pkl = program(tensor(storage(numel=numel), size=(numel,), stride=(1,)))
  data = zip_file(pkl, {'0': bytes(range(256)) * (held // 256) + bytes(range(held % 256))})
  return resize_entry(data, 'archive/data/0', 4 * numel)


def _bzip2_bomb() -> bytes:
  """A storage entry of 8 MiB of zeros in bzip2 (40 bytes), declaring 24 (400 MiB took 337
  bytes; 8 MiB are quicker to compress here)."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as archive:
    archive.writestr('archive/data.pkl', program(tensor(storage())))
    archive.writestr('archive/data/0', bytes(8 << 20), compress_type=zipfile.ZIP_BZIP2)
  return resize_entry(buf.getvalue(), 'archive/data/0', 24)


def _dags() -> dict[str, bytes]:
  """A tuple of depth 40 whose levels hold the one below twice through the memo (2**40 items
  from 300 bytes), where an error message would show it or a dict or set would hash it."""
  dag = tuple_dag(40)
  by_dup = b')' + b'2\x86' * 40  # DUP, TUPLE2: (x, x) from x, two bytes a level
  by_mark = b')' + (put(0) + b'0' + b'(' + b'(0' + get(0) + get(0) + b't') * 40  # POP drops a MARK
  return {'persistent id': dag + b'Q',
          'tensor size': tensor(storage(), size=(), stride=()).replace(value(()), dag, 1),
          'parameter': call(op_global('torch._utils._rebuild_parameter'), dag),
          'dict key': b'}' + dag + value(1) + b's',
          'dict key (DUP)': b'}' + by_dup + value(1) + b's',
          'set item (MARK)': b'\x8f(' + by_mark + b'\x90'}


@pytest.fixture(scope='module')
def read(tmp_path_factory) -> dict[str, tuple[bytes, dict]]:
  """Each hostile file, and the outcome of reading it in a child process (tests/pth_child.py):
  all in one child, started once for the module."""
  big = _short_entry(16 << 20, 64 << 10)
  files = {'4000 over 16': (_short_entry(1000, 16), None), '64 MiB trusted': (big, GIB),
           '64 MiB': (big, None), 'bzip2': (_bzip2_bomb(), None),
           **{f'{count} GiB': (zip_file(repeated_tensors(count, GIB // 4)), None)
              for count in (3, 10_000)},
           **{f'dag: {site}': (zip_file(program(body)), None) for site, body in _dags().items()}}
  outs = load_in_child(list(files.values()), tmp_path_factory.mktemp('hostile'), timeout=60)
  return {name: (data, out) for (name, (data, _)), out in zip(files.items(), outs)}


def test_entries_are_read_within_their_bytes(read):
  """4,000 bytes declared, 16 held: it loaded, the tensor filled with heap bytes; 64 MiB over
  64 KiB crashed the process. Now refused: the first, and the second with a budget raised to
  allow it, by the bytes read; the second by the budget by default. A bzip2 entry (which
  zipfile inflates whole) declaring 24 bytes took 880 MiB (400 MiB of zeros from a 714-byte
  file) before its CRC failed: refused."""
  outs = {name: read[name][1] for name in ('4000 over 16', '64 MiB trusted', '64 MiB', 'bzip2')}
  assert {out['outcome'] for out in outs.values()} == {'CheckpointError'}, outs
  assert 'declares 4000 bytes for archive/data/0, which holds 16 (its directory claims 4000)' \
      in outs['4000 over 16']['detail']
  assert 'which holds 65536 (its directory claims 67108864)' in outs['64 MiB trusted']['detail']
  assert 'budget' in outs['64 MiB']['detail']
  assert 'compressed with method 12' in outs['bzip2']['detail']
  assert max(out['max_rss'] for out in outs.values()) < 300 << 20, outs


# --------------------------------------------------------------------------------------------
# The memory budget of the whole file.


def test_repeated_tensors_are_refused_before_allocating(read):
  """REDUCE of a memoised rebuild and arguments, each a 1 GiB stride-0 tensor: 3 GiB from a
  file of 625 bytes, 10 TiB from 50 KB. Refused at once, with the bound and how to raise it."""
  assert [len(read[name][0]) // 100 for name in ('3 GiB', '10000 GiB')] == [6, 506]
  for data, out in (read['3 GiB'], read['10000 GiB']):
    assert out['outcome'] == 'CheckpointError', out
    assert f'more than its budget of {_budget(data)} bytes (4 times the file\'s {len(data)} ' \
           'bytes plus 16 MiB)' in out['detail']
    assert 'read_torch(path, max_bytes=N)' in out['detail'] and '--max_pth_bytes' in out['detail']
    assert out['seconds'] < 1 and out['max_rss'] < 300 << 20, out


def test_budget_is_of_the_whole_file(tmp_path):
  """Eight tensors of 4 MiB (each far below a per-tensor cap) from a 700-byte file: 32 MiB in
  all, past the budget; ``max_bytes`` (read_torch's too) raises it for a file one trusts."""
  data = zip_file(repeated_tensors(8, 1 << 20))
  with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the entries read are charged too
    entries = sum(info.file_size for info in archive.infolist() if 'version' not in info.filename)
  with pytest.raises(CheckpointError, match=re.escape(  # at the fifth tensor
      f'a tensor of size (1048576,) and stride (0,) brings its arrays to {(5 << 22) + entries} '
      f'bytes, more than its budget of {_budget(data)} bytes')):
    torch_pickle.load(data, 'eight.pth')
  out = torch_pickle.load(data, 'eight.pth', max_bytes=40 << 20)
  assert len(out) == 8 and all(a.shape == (1 << 20,) and not a.any() for a in out)
  path = tmp_path / 'eight.pth'
  path.write_bytes(data)
  with pytest.raises(CheckpointError, match=r'budget of 1000 bytes \(max_bytes\)'):
    read_torch(path, max_bytes=1000)
  assert len(read_torch(path, max_bytes=40 << 20)) == 8


def test_copies_by_allowed_functions_are_charged():
  """``set`` of a memoised list, called again and again: each copy charged like a tensor."""
  items = value(list(range(1000)))
  pkl = program(b']' + b'(' + op_global('builtins.set') + put(0) + tuple_of(items) + put(1) +
                b'R' + (get(0) + get(1) + b'R') * 2000 + b'e')
  with pytest.raises(CheckpointError, match=r'a set brings its arrays to \d+ bytes'):
    torch_pickle.load(zip_file(pkl), 'sets.pth')


# --------------------------------------------------------------------------------------------
# Messages: bounded reprs, one prefix.


def test_tuple_dag_is_refused_fast(read):
  """The tuple DAGs of :func:`_dags`, where an error message would show one (its repr took
  minutes and gigabytes) or a dict or set would hash it (which would not end): refused by the
  scan, before the pickle runs."""
  for site in _dags():
    out = read[f'dag: {site}'][1]
    assert out['outcome'] == 'CheckpointError', (site, out)
    assert 'tuples that hold one another through the memo' in out['detail'], (site, out)
    assert out['seconds'] < 1 and len(out['detail']) < 400, (site, out)


def test_legitimate_repeats_pass_the_scan():
  """Tuples repeated through the memo up to a million items are read (a shared size tuple,
  a storage met by many tensors): only their blow-up is refused."""
  out = torch_pickle.load(zip_file(program(b']' + b'(' + tuple_dag(19) + b'e')), 'dag.pth')
  assert len(out) == 1 and len(out[0]) == 2


def test_brief_bounds_what_repr_would_not():
  assert pth_bounds.brief('x' * 10**6) == "'" + 'x' * 76 + '...'
  assert pth_bounds.brief(10**5000) == '<int of 16610 bits>'
  assert pth_bounds.brief(collections.OrderedDict(a=[1, (2,)])) == "{'a': [1, (2,)]}"
  nested = ()
  for _ in range(100):
    nested = (nested, nested)
  assert len(pth_bounds.brief(nested, 50)) == 50


@pytest.mark.parametrize('body', [
    op_global('os.system'),  # GLOBAL, refused by the scan
    b'\x8c\x02os\x94\x8c\x06system\x94\x93',  # STACK_GLOBAL, refused by find_class
])
def test_refused_global_has_one_prefix(body):
  """The scan's handler of damaged pickles (a ValueError) let a refused global through with a
  second prefix: 'truncated or damaged pickle: cannot read PyTorch checkpoint ...'."""
  with pytest.raises(CheckpointError) as info:
    torch_pickle.load(zip_file(b'\x80\x04' + body + b'.'), 'evil.pth')
  assert str(info.value) == (
      'cannot read PyTorch checkpoint evil.pth: refuses global os.system (a checkpoint may hold '
      'only tensors and plain containers, and nothing in it is run).')


# --------------------------------------------------------------------------------------------
# Fuzz: mutations of valid files read as the original or refused, nothing else.


def test_fuzz():
  """About 500 mutations (a few seconds): bytes flipped, files cut, entries resized or declared
  other sizes, opcodes swapped, integer arguments changed; bench/fuzz_pth.py runs more."""
  rc, lines = run(['fuzz', '--seed', '26', '--n', '500', '--seconds', '4'], timeout=120)
  done = [line for line in lines if 'outcome' in line]
  assert rc == 0 and len(done) >= 100, (rc, lines[-3:])
  assert not pth_fuzz.failures(done), pth_fuzz.failures(done)[:5]
  assert {line['kind'].split()[1] for line in done} == set(pth_fuzz.KINDS)
  assert max(line['max_rss'] for line in done) < 500 << 20
  assert np.median([line['seconds'] for line in done]) < 0.05
