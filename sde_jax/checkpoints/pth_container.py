"""The two containers of ``torch.save`` files, zip and legacy (see :mod:`torch_pickle`): where
the pickles and the bytes of each storage lie, every size checked against the bytes the file
actually holds before any array is made from them."""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

from sde_jax.checkpoints.pth_bounds import Budget, brief, unreadable
from sde_jax.checkpoints.pth_tensors import Storage
from sde_jax.checkpoints.pth_unpickler import storage_id, text, unpickle

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# Deflate expands at most about 1032-fold (PyTorch stores its entries uncompressed): an entry
# that claims more is damaged or hostile.
_MAX_ZIP_RATIO = 1100


def _entry(archive: zipfile.ZipFile, name: str, budget: Budget, nbytes: int = 0) -> bytes:
  """The bytes of entry ``name`` (found by name in the archive's directory, never on disk),
  checked to hold at least ``nbytes``.

  The size the directory declares is charged to the budget before reading, and bounds what is
  read (and decompressed: zipfile inflates deflate in pieces of at most the size asked, but
  bzip2 and LZMA entries whole, so those are refused); the check is on the bytes actually read,
  since a stored entry may declare more than it holds, with a CRC that matches what it holds.
  """
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise unreadable(budget.source, f'the archive has no entry {name[:200]}.') from None
  name = name[:200]  # for messages: it holds a key of the pickle
  if info.file_size < nbytes:
    raise unreadable(budget.source, f'the pickle declares {nbytes} bytes for {name}, which '
                                    f'holds {info.file_size}.')
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise unreadable(budget.source, f'entry {name} is compressed with method '
                                    f'{info.compress_type}; torch.save stores its entries, and '
                                    'only stored or deflated ones are read.')
  if info.file_size > _MAX_ZIP_RATIO * info.compress_size + 1024:
    raise unreadable(budget.source, f'entry {name} claims {info.file_size} bytes from '
                                    f'{info.compress_size} (damaged?).')
  budget.charge(info.file_size, f'entry {name}')
  with archive.open(info) as f:
    raw = f.read(info.file_size)  # read() would decompress in one piece, whatever the size
  if len(raw) < nbytes:
    raise unreadable(budget.source, f'the pickle declares {nbytes} bytes for {name}, which '
                                    f'holds {len(raw)} (its directory claims {info.file_size}).')
  return raw


def _has(archive: zipfile.ZipFile, name: str) -> bool:
  try:
    archive.getinfo(name)
  except KeyError:
    return False
  return True


def _byteorder(archive: zipfile.ZipFile, prefix: str, budget: Budget) -> str:
  if not _has(archive, f'{prefix}/byteorder'):
    return 'little'  # PyTorch's default for files without the record
  order = _entry(archive, f'{prefix}/byteorder', budget).decode('ascii', 'replace')
  if order not in ('little', 'big'):
    raise unreadable(budget.source, f'byteorder {brief(order, 20)}.')
  return order


def _archive_prefix(archive: zipfile.ZipFile, source: str) -> str:
  """The folder that holds the archive's records (PyTorch takes the first entry's)."""
  names = archive.namelist()
  prefix = names[0].partition('/')[0][:200] if names else ''
  if _has(archive, f'{prefix}/constants.pkl'):
    raise unreadable(source, 'a TorchScript archive (torch.jit.save); only torch.save files '
                             'are read.')
  if not _has(archive, f'{prefix}/data.pkl'):
    raise unreadable(source, f'a zip archive without {prefix}/data.pkl, so not a torch.save '
                             'file.')
  return prefix


def load_zip(data: bytes, budget: Budget) -> Any:
  """The unpickled objects of a zip-format file, its storages read (not yet arrays)."""
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    prefix = _archive_prefix(archive, budget.source)
    order = _byteorder(archive, prefix, budget)
    storages: dict[str, Storage] = {}

    def storage(fields: tuple) -> Storage:
      kind, key, numel = storage_id(fields, 4)
      if key not in storages:  # PyTorch too keeps the first storage of a key
        nbytes = numel * kind.dtype.itemsize
        raw = _entry(archive, f'{prefix}/data/{key}', budget, nbytes)
        storages[key] = Storage(key, kind.dtype, nbytes, order)
        storages[key].data = memoryview(raw)[:nbytes]
      return storages[key]

    pkl = _entry(archive, f'{prefix}/data.pkl', budget)
    return unpickle(io.BytesIO(pkl), budget, storage)


def _legacy_storage(roots: dict[str, Storage], views: dict[str, Storage], fields: tuple):
  """The storage of a legacy id ``(class, root key, location, numel, view_metadata)``: a root
  storage (its bytes come after the pickle), or a view ``(key, offset, numel)`` into one."""
  kind, key, numel = storage_id(fields, 5)
  if key not in roots:
    roots[key] = Storage(key, kind.dtype, numel * kind.dtype.itemsize)
  root, view = roots[key], fields[4]
  if view is None:
    return root
  if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0
                                                             for v in view[1:])):
    raise pickle.UnpicklingError(f'invalid storage view {brief(view)}')
  view_key, offset, size = text(view[0], 'key'), view[1] * kind.dtype.itemsize, view[2]
  if view_key not in views:
    if offset + size * kind.dtype.itemsize > root.nbytes:
      raise pickle.UnpicklingError(f'a view of {size} elements at {view[1]} passes the end of '
                                   f'{root!r}')
    views[view_key] = Storage(view_key, kind.dtype, size * kind.dtype.itemsize, root=root,
                              start=offset)
  return views[view_key]


def _read_legacy_storages(data: memoryview, start: int, keys: Any,
                          roots: dict[str, Storage], source: str) -> None:
  """Fills ``roots`` from the bytes after the pickles: per key, a count, then the elements."""
  if not isinstance(keys, list):
    raise pickle.UnpicklingError(f'the storage keys must be a list, got {brief(keys)}')
  at = start
  for key in keys:
    root = roots.get(key) if isinstance(key, str) else None
    if root is None:
      raise unreadable(source, f'storage {brief(key, 40)} is listed but no tensor uses it.')
    count = int.from_bytes(data[at:at + 8], 'little', signed=True)
    if at + 8 <= len(data) and count * root.dtype.itemsize != root.nbytes:
      raise unreadable(source, f'{root!r} holds {count} elements, its tensors declare '
                               f'{root.nbytes // root.dtype.itemsize}.')
    if at + 8 + root.nbytes > len(data):
      raise unreadable(source, f'the file ends inside {root!r} (truncated).')
    root.data, at = data[at + 8:at + 8 + root.nbytes], at + 8 + root.nbytes
  unread = [k for k, s in roots.items() if s.data is None]
  if unread:
    raise unreadable(source, f'no data for storages {brief(unread[:5])}.')


def load_legacy(data: bytes, budget: Budget) -> Any:
  """The unpickled objects of a legacy-format file, each storage over its bytes in ``data``."""
  stream, source = io.BytesIO(data), budget.source
  try:
    magic = unpickle(stream, budget)
  except pickle.UnpicklingError as e:
    raise unreadable(source, 'not a torch.save file (neither a zip archive nor a '
                             f'pickle): {e}') from e
  if type(magic) is not int or magic != MAGIC_NUMBER:
    raise unreadable(source, 'a pickle, but not a torch.save file (no magic number).')
  version = unpickle(stream, budget)
  if type(version) is not int or version != LEGACY_PROTOCOL:
    raise unreadable(source, f'legacy protocol version {brief(version, 40)}, only '
                             f'{LEGACY_PROTOCOL} is known.')
  unpickle(stream, budget)  # the writer's system info; the data is little-endian regardless
  roots: dict[str, Storage] = {}
  views: dict[str, Storage] = {}
  tree = unpickle(stream, budget, lambda fields: _legacy_storage(roots, views, fields))
  keys = unpickle(stream, budget)
  _read_legacy_storages(memoryview(data), stream.tell(), keys, roots, source)
  return tree
