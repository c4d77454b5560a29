"""Seeded mutations of valid ``.pth`` files, zip and legacy, for the fuzz test of the reader
(tests/test_torch_pickle_fuzz.py, and the longer run of bench/fuzz_pth.py).

Each mutation is one of :data:`KINDS`:

* ``flip``: one to four bytes anywhere xor-ed with a random byte;
* ``truncate``: the file cut at a random length;
* ``resize_entry`` (zip): an entry's bytes cut or lengthened, the archive rewritten (so its CRC
  matches); a cut entry may go on declaring its former size;
* ``declare_size`` (zip): the sizes that the central directory declares for an entry changed,
  its bytes and CRC left alone;
* ``swap_opcode``: one opcode of the objects' pickle replaced by another, or two exchanged;
* ``change_arg``: the argument bytes of an integer opcode of that pickle (a size, a stride, an
  offset, a memo index...) replaced by random ones.

A zip's entries are covered by their CRC, so a flipped, cut or resized zip either reads as the
original did or is refused; only the pickle mutations (written back with a matching CRC) and any
mutation of a legacy file (which has no checksum) may read as other values: :func:`may_change`.
"""

from __future__ import annotations

import io
import pathlib
import pickletools
import random
import zipfile
from typing import Iterator

import numpy as np

from tests import pth_files

FORMATS = pathlib.Path(__file__).parent / 'data' / 'pth_formats'
KINDS = ('flip', 'truncate', 'resize_entry', 'declare_size', 'swap_opcode', 'change_arg')
_ZIP_ONLY = ('resize_entry', 'declare_size')
_INT_OPCODES = {'BININT': 4, 'BININT1': 1, 'BININT2': 2, 'BINPUT': 1, 'BINGET': 1,
                'LONG_BINPUT': 4, 'LONG_BINGET': 4, 'LONG1': 1, 'BINUNICODE': 4,
                'SHORT_BINUNICODE': 1, 'SHORT_BINBYTES': 1, 'BINBYTES': 4}
_OPCODES = [op.code.encode('latin-1') for op in pickletools.opcodes]


def originals() -> list[tuple[str, bytes]]:
  """The valid files mutated: the two format fixtures (written by PyTorch: views, shared
  storages, every dtype) and small hand-made ones of each format."""
  state = {'w': np.arange(12, dtype=np.float32).reshape(3, 4), 'step': np.array(3)}
  legacy = pth_files.legacy_file(pth_files.program(pth_files.dict_of(
      w=pth_files.tensor(pth_files.storage(legacy_view=pth_files.LEGACY)))))
  return [('zip', (FORMATS / 'zip.pth').read_bytes()),
          ('legacy', (FORMATS / 'legacy.pth').read_bytes()),
          ('zip', pth_files.state_dict_file(state)), ('legacy', legacy)]


def may_change(fmt: str, kind: str) -> bool:
  """Whether a mutation of this kind may read as other arrays (see the module docstring)."""
  return fmt == 'legacy' and kind != 'truncate' or kind in ('swap_opcode', 'change_arg')


def failures(outcomes: list[dict]) -> list[dict]:
  """The JSON lines of tests/pth_child.py whose outcome is not allowed for their mutation: any
  other than ``same`` or ``CheckpointError``, or ``changed`` where :func:`may_change` is false."""
  return [line for line in outcomes if line['outcome'] not in ('same', 'CheckpointError') and not (
      line['outcome'] == 'changed' and may_change(*line['kind'].split()))]


def mutations(files: list[tuple[str, bytes]], seed: int,
              n: int) -> Iterator[tuple[int, str, bytes]]:
  """``n`` mutated files: (index of the original in ``files``, ``'<format> <kind>'``, bytes)."""
  rng = random.Random(seed)
  for _ in range(n):
    which = rng.randrange(len(files))
    fmt, data = files[which]
    kind = rng.choice([k for k in KINDS if fmt == 'zip' or k not in _ZIP_ONLY])
    yield which, f'{fmt} {kind}', _MUTATE[kind](fmt, data, rng)


def _flip(fmt, data: bytes, rng: random.Random) -> bytes:
  del fmt
  out = bytearray(data)
  for _ in range(rng.randint(1, 4)):
    out[rng.randrange(len(out))] ^= rng.randint(1, 255)
  return bytes(out)


def _truncate(fmt, data: bytes, rng: random.Random) -> bytes:
  del fmt
  return data[:rng.randrange(len(data))]


def _entries(data: bytes) -> list[tuple[str, bytes]]:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _rezip(entries: list[tuple[str, bytes]]) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as archive:
    for name, raw in entries:
      archive.writestr(name, raw)
  return buf.getvalue()


def _resize_entry(fmt, data: bytes, rng: random.Random) -> bytes:
  del fmt
  entries = _entries(data)
  at = rng.randrange(len(entries))
  name, raw = entries[at]
  cut = rng.randrange(len(raw) + 1)
  longer = rng.random() < 0.3
  entries[at] = (name, raw + rng.randbytes(cut + 1) if longer else raw[:cut])
  out = _rezip(entries)
  # A cut entry may still declare its old size: the hostile case, what a reader must not trust.
  return out if longer or rng.random() < 0.5 else pth_files.resize_entry(out, name, len(raw))


def _declare_size(fmt, data: bytes, rng: random.Random) -> bytes:
  del fmt
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    info = rng.choice(archive.infolist())
  sizes = [min(max(size, 0), 2**32 - 1) for size in (
      0, info.file_size // 2, info.file_size - 1, info.file_size + 1, info.file_size * 2,
      info.file_size * 1000, 1 << 26, 2**32 - 1)]
  compress = rng.choice([None, *sizes])
  return pth_files.resize_entry(data, info.filename, rng.choice(sizes), compress)


def _objects_pickle(fmt: str, data: bytes) -> tuple[int, int]:
  """(start, end) of the pickle of the objects: ``data.pkl`` of a zip (then ``data`` is that
  entry), the fourth pickle of a legacy file."""
  if fmt == 'zip':
    return 0, len(data)
  stream = io.BytesIO(data)
  for _ in range(3):
    for _ in pickletools.genops(stream):
      pass
  start = stream.tell()
  for _ in pickletools.genops(stream):
    pass
  return start, stream.tell()


def _in_pickle(mutate):
  """``mutate(pickle bytes, opcode positions, rng)`` applied to the objects' pickle of the file
  (a zip is written again with the new ``data.pkl``, and a CRC that matches it)."""
  def apply(fmt: str, data: bytes, rng: random.Random) -> bytes:
    entries = _entries(data) if fmt == 'zip' else None
    at = next(i for i, (name, _) in enumerate(entries) if name.endswith('/data.pkl')) \
        if entries else None
    whole = entries[at][1] if entries else data
    start, end = _objects_pickle(fmt, whole)
    pkl = whole[start:end]
    ops = [(op, pos) for op, _, pos in pickletools.genops(pkl)]
    pkl = mutate(pkl, ops, rng)
    if entries is None:
      return data[:start] + pkl + data[end:]
    entries[at] = (entries[at][0], pkl)
    return _rezip(entries)
  return apply


@_in_pickle
def _swap_opcode(pkl: bytes, ops, rng: random.Random) -> bytes:
  out = bytearray(pkl)
  (_, a), (_, b) = rng.choice(ops), rng.choice(ops)
  if rng.random() < 0.5:
    out[a], out[b] = out[b], out[a]
  else:
    out[a:a + 1] = rng.choice(_OPCODES)
  return bytes(out)


@_in_pickle
def _change_arg(pkl: bytes, ops, rng: random.Random) -> bytes:
  ints = [(op, pos) for op, pos in ops if op.name in _INT_OPCODES]
  if not ints:
    return pkl
  op, pos = rng.choice(ints)
  width = _INT_OPCODES[op.name]
  value = rng.choice([0, 1, 2, 7, 255, 2**(8 * width) - 1, rng.getrandbits(8 * width)])
  raw = (value % 2**(8 * width)).to_bytes(width, 'little')
  return pkl[:pos + 1] + raw + pkl[pos + 1 + width:]


_MUTATE = {'flip': _flip, 'truncate': _truncate, 'resize_entry': _resize_entry,
           'declare_size': _declare_size, 'swap_opcode': _swap_opcode, 'change_arg': _change_arg}
