"""PyTorch ``.pth`` files read without PyTorch: what ``torch.save`` stored, with every tensor as a
numpy array.

Two formats (the facts are PyTorch's ``torch/serialization.py``'s; none of its code is used):

* zip (``torch.save`` since PyTorch 1.6): entries under one folder ``<archive>/``: ``data.pkl``,
  the pickled objects; ``data/<key>``, the raw bytes of each storage; ``byteorder`` (``little``
  when absent). In the pickle a tensor is ``torch._utils._rebuild_tensor_v2(storage, offset,
  size, stride, ...)`` and a storage the persistent id ``('storage', torch.FloatStorage, key,
  location, numel)``.
* legacy (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): pickles one after the
  other: the magic number, the protocol version 1001, a dict of system info, the objects (their
  storage ids add a sixth field, ``view_metadata``), the list of storage keys; then, for each key
  in that order, the element count (8 bytes) and the bytes of the storage, both little-endian
  whatever the writer's byte order. The tar format of the earliest PyTorch releases is refused.

The files are untrusted input and nothing in them is run. Each pickle is first scanned without
running it, and refused if it names a global outside :data:`ALLOWED`, the globals that PyTorch's
``weights_only`` loader needs for dense tensors and plain containers; then a
:class:`pickle.Unpickler` whose ``find_class`` knows only those runs it (and so also checks the
names that protocols 4 and 5 build on the stack), each global an inert stand-in of this module
(a pickle cannot change one). Every size a file declares is checked against the bytes it holds
before anything is allocated; the ``version`` record is not read.

Unlike ``torch.load(weights_only=True)``: tensors and parameters are numpy arrays, each a copy of
its own (tensors that share a storage no longer share memory; one tensor met twice is one array
twice); bfloat16 and float8 tensors have ``ml_dtypes`` types; a ``torch.device`` becomes its string
(``'cuda:0'``), a ``torch.Size`` a tuple, a dtype a numpy dtype, any other allowed global met as a
value its dotted name; Python attributes set on a tensor are dropped; quantized, sparse, nested
and meta tensors are refused.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import sys
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

from sde_jax.checkpoints.errors import CheckpointError

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# A view whose elements overlap (a stride of 0, as ``expand`` makes) holds more elements than its
# storage; copying one is refused past this size, so that a few bytes cannot ask for terabytes.
MAX_REPEATED_BYTES = 1 << 30
# Deflate expands at most about 1032-fold (PyTorch stores its entries uncompressed): an entry
# that claims more is damaged or hostile.
_MAX_ZIP_RATIO = 1100
_MODULE_ALIASES = {'__builtin__': 'builtins'}  # Python 2's name, kept by pickle protocol 2

_DTYPES = {  # torch dtype name -> numpy dtype
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_, 'complex64': np.complex64,
    'complex128': np.complex128, 'uint16': np.uint16, 'uint32': np.uint32, 'uint64': np.uint64,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn, 'float8_e5m2': ml_dtypes.float8_e5m2,
    'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz, 'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
    'float8_e8m0fnu': ml_dtypes.float8_e8m0fnu,
}
_STORAGES = {  # legacy storage class -> torch dtype name
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
    'BoolStorage': 'bool', 'ComplexFloatStorage': 'complex64',
    'ComplexDoubleStorage': 'complex128',
}
_NO_NUMPY_DTYPES = ('complex32', 'bcomplex32', 'qint8', 'quint8', 'qint32', 'quint4x2',
                    'quint2x4', 'bits1x8', 'bits2x4', 'bits4x2', 'bits8', 'bits16',
                    'float4_e2m1fn_x2', *(f'{u}int{n}' for u in ('', 'u') for n in range(1, 8)))


def _unreadable(source: str, detail: str) -> CheckpointError:
  """The error for the file ``source`` that cannot be read, and why."""
  return CheckpointError(f'cannot read PyTorch checkpoint {source}: {detail}')


class _Inert:
  """Base of the stand-ins a pickle gets: its BUILD opcode cannot set their state."""
  __slots__ = ()

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f'the pickle sets the state of {self!r}')


class _Global(_Inert):
  """An allowed global that is only a marker (``torch.Tensor``)."""
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return self.name


class _Function(_Global):
  """An allowed global that REDUCE may call: ``fn`` stands in for it."""
  __slots__ = ('fn',)

  def __init__(self, name: str, fn: Callable[..., Any]):
    super().__init__(name)
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


class _Dtype(_Global):
  """A torch dtype, with its numpy dtype."""
  __slots__ = ('dtype',)

  def __init__(self, name: str, dtype):
    super().__init__(name)
    self.dtype = np.dtype(dtype)


class _StorageClass(_Dtype):
  """A torch storage class (``torch.FloatStorage``), with the numpy dtype of its elements."""
  __slots__ = ()


class _Storage(_Inert):
  """``nbytes`` bytes of the file, from byte ``start`` of storage ``root`` (itself if None)."""
  __slots__ = ('key', 'dtype', 'nbytes', 'byteorder', 'root', 'start', 'data')

  def __init__(self, key: str, dtype: np.dtype, nbytes: int, byteorder: str = 'little',
               root: _Storage | None = None, start: int = 0):
    self.key, self.dtype, self.nbytes, self.byteorder = key, dtype, nbytes, byteorder
    self.root, self.start = root, start
    self.data: memoryview | None = None  # set once read (legacy files hold it after the pickle)

  def __repr__(self):
    return f'storage {self.key!r}'

  def buffer(self) -> memoryview:
    data = (self.root or self).data
    return data[self.start:self.start + self.nbytes]

  def array(self) -> np.ndarray:
    """The storage's elements, as a 1-D array of its dtype."""
    out = np.frombuffer(self.buffer(), self.dtype, self.nbytes // self.dtype.itemsize).copy()
    return out.byteswap() if self.byteorder != sys.byteorder else out


class _Tensor(_Inert):
  """A dense tensor: a strided view into a storage, checked to lie within it."""
  __slots__ = ('storage', 'dtype', 'offset', 'size', 'stride', 'conj', 'neg')

  def __init__(self, storage: _Storage, dtype: np.dtype, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...], conj: bool = False, neg: bool = False):
    self.storage, self.dtype, self.offset = storage, dtype, offset
    self.size, self.stride, self.conj, self.neg = size, stride, conj, neg

  def __repr__(self):
    return f'tensor of size {self.size} in {self.storage!r}'

  def array(self) -> np.ndarray:
    """The tensor's values: C-contiguous, writable, in native byte order."""
    if not math.prod(self.size):
      return np.zeros(self.size, self.dtype)
    raw, itemsize = self.storage.buffer(), self.dtype.itemsize
    # Strided as opaque items: as_strided loses dtypes that numpy's array interface lacks (float8).
    flat = np.frombuffer(raw, np.dtype((np.void, itemsize)), len(raw) // itemsize)
    out = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.size, tuple(s * itemsize for s in self.stride),
        writeable=False).copy().view(self.dtype)
    if self.storage.byteorder != sys.byteorder:
      out = out.byteswap()
    if self.neg:
      out = np.negative(out)
    return np.conj(out) if self.conj else out


def _ints(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or any(type(v) is not int or v < 0 for v in value):
    raise pickle.UnpicklingError(f'a tensor {what} must be non-negative ints, got {value!r:.80}')
  return tuple(value)


def _check_extent(storage: _Storage, dtype: np.dtype, offset: int, size, stride) -> None:
  """Raises unless every element of the view lies in ``storage`` and a copy stays small."""
  numel = math.prod(size)
  if not numel:
    return
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if (last + 1) * dtype.itemsize > storage.nbytes:
    raise pickle.UnpicklingError(
        f'a tensor of size {size}, stride {stride} and offset {offset} reaches element {last} '
        f'of {storage!r}, which holds {storage.nbytes // dtype.itemsize} {dtype} elements')
  if numel * dtype.itemsize > max(storage.nbytes, MAX_REPEATED_BYTES):
    raise pickle.UnpicklingError(
        f'a tensor of size {size} and stride {stride} repeats the elements of {storage!r} '
        f'into {numel * dtype.itemsize} bytes (more than {MAX_REPEATED_BYTES})')


def _tensor(storage, offset, size, stride, dtype=None, metadata=None) -> _Tensor:
  """The tensor ``torch._utils._rebuild_tensor*`` would make, bounds-checked."""
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'a tensor needs a storage, got {storage!r:.80}')
  dtype = storage.dtype if dtype is None else dtype
  size, stride = _ints(size, 'size'), _ints(stride, 'stride')
  if type(offset) is not int or offset < 0 or len(size) != len(stride) or len(size) > 64:
    raise pickle.UnpicklingError(f'invalid tensor: offset {offset!r:.40}, size {size}, '
                                 f'stride {stride}')
  _check_extent(storage, dtype, offset, size, stride)
  flags = metadata or {}
  if not isinstance(flags, dict) or any(v and k not in ('conj', 'neg') for k, v in flags.items()):
    raise pickle.UnpicklingError(f'unsupported tensor metadata {flags!r:.80}')
  return _Tensor(storage, dtype, offset, size, stride, bool(flags.get('conj')),
                 bool(flags.get('neg')))


def _rebuild_tensor(storage, offset, size, stride):
  return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks  # numpy arrays hold neither
  return _tensor(storage, offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  """The rebuild of tensors in an untyped storage (PyTorch's newer dtypes: uint16, float8...)."""
  del requires_grad, backward_hooks
  if not isinstance(dtype, _Dtype) or isinstance(dtype, _StorageClass):
    raise pickle.UnpicklingError(f'a tensor dtype must be a torch dtype, got {dtype!r:.80}')
  return _tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
  """``nn.Parameter`` (its state, Python attributes, is dropped): the tensor itself."""
  del requires_grad, backward_hooks, state
  if not isinstance(data, _Tensor):
    raise pickle.UnpicklingError(f'a parameter holds a tensor, got {data!r:.80}')
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor with Python attributes (dropped); tensor subclasses are refused."""
  del state
  if not (isinstance(func, _Function) and func.name in _TENSOR_REBUILDS
          and isinstance(new_type, _Global) and new_type.name in _TENSOR_TYPES
          and isinstance(args, tuple)):
    raise pickle.UnpicklingError(f'unsupported tensor type rebuild: {func!r:.60}, '
                                 f'{new_type!r:.60}')
  return func(*args)


def _device(kind, index=None) -> str:
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise pickle.UnpicklingError(f'invalid torch.device({kind!r:.40}, {index!r:.40})')
  return kind if index is None else f'{kind}:{index}'


def _size(dims=()) -> tuple[int, ...]:
  return _ints(dims, 'torch.Size')


def _encode(text, encoding):
  """``_codecs.encode`` as pickle protocol 2 uses it for ``bytes``: latin-1 text only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'_codecs.encode is allowed for latin-1 text only, got '
                                 f'{encoding!r:.40}')
  return text.encode('latin-1')


def _bytearray(*args):
  if args and not isinstance(args[0], (str, bytes)):  # bytearray(n) would allocate n bytes
    raise pickle.UnpicklingError('bytearray is allowed from bytes or text only')
  return bytearray(*args)


_TENSOR_REBUILDS = {
    'torch._utils._rebuild_tensor': _rebuild_tensor,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
}
_TENSOR_TYPES = ('torch.Tensor', 'torch.nn.parameter.Parameter')


def _allowed_globals() -> dict[str, _Global]:
  functions = {
      **_TENSOR_REBUILDS, 'torch._tensor._rebuild_from_type_v2': _rebuild_from_type_v2,
      'collections.OrderedDict': collections.OrderedDict,
      'collections.Counter': collections.Counter, 'builtins.set': set,
      'builtins.complex': complex, 'builtins.bytearray': _bytearray, '_codecs.encode': _encode,
      'torch.device': _device, 'torch.Size': _size,
  }
  out: dict[str, _Global] = {name: _Function(name, fn) for name, fn in functions.items()}
  out.update({name: _Global(name) for name in _TENSOR_TYPES})
  out.update({f'torch.{name}': _Dtype(f'torch.{name}', dtype) for name, dtype in _DTYPES.items()})
  for module in ('torch', 'torch.cuda'):
    out.update({f'{module}.{name}': _StorageClass(f'{module}.{name}', _DTYPES[dtype])
                for name, dtype in _STORAGES.items()})
  out['torch.storage.UntypedStorage'] = _StorageClass('torch.storage.UntypedStorage', np.uint8)
  return out


# Every global a checkpoint may name, and what the pickle gets for it.
ALLOWED = _allowed_globals()
# Globals of PyTorch's weights_only loader that this reader refuses, and why.
_UNSUPPORTED = {
    'torch._utils._rebuild_qtensor': 'quantized tensors',
    'torch._utils._rebuild_sparse_tensor': 'sparse tensors',
    'torch.serialization._get_layout': 'sparse tensors',
    'torch._utils._rebuild_nested_tensor': 'nested tensors',
    'torch._utils._rebuild_meta_tensor_no_storage': 'meta tensors (they hold no data)',
    'torch._utils._rebuild_wrapper_subclass': 'tensor subclasses',
    'torch._utils._rebuild_device_tensor_from_numpy': 'tensors of XLA-like devices',
    'torch._utils._rebuild_device_tensor_from_cpu_tensor': 'tensors of XLA-like devices',
    **{f'torch.{s}': 'quantized tensors' for s in ('QInt8Storage', 'QUInt8Storage',
                                                   'QInt32Storage', 'QUInt4x2Storage',
                                                   'QUInt2x4Storage')},
    **{f'torch.{d}': f'tensors of dtype torch.{d} (no numpy equivalent)'
       for d in _NO_NUMPY_DTYPES},
}


def _allowed(module: str, name: str, source: str) -> _Global:
  """The stand-in for global ``module.name``; CheckpointError for any global not allowed."""
  dotted = f'{_MODULE_ALIASES.get(module, module)}.{name}'
  if dotted in ALLOWED:
    return ALLOWED[dotted]
  why = _UNSUPPORTED.get(dotted)
  detail = (f'{why} are not supported' if why else
            'a checkpoint may hold only tensors and plain containers, and nothing in it is run')
  raise _unreadable(source, f'refuses global {dotted} ({detail}).')


def _text(value: Any, what: str) -> str:
  """A key or a location of a storage id (Python 2 pickles may hold them as bytes)."""
  if isinstance(value, bytes):
    value = value.decode('ascii')
  if not isinstance(value, str):
    raise pickle.UnpicklingError(f'a storage {what} must be a string, got {value!r:.80}')
  return value


def _storage_id(fields: tuple, size: int) -> tuple[_StorageClass, str, int]:
  """(storage class, key, numel) of a storage id ``('storage', class, key, location, numel,
  ...)`` without its first field; ``size`` is the number of fields it must have."""
  if len(fields) != size:
    raise pickle.UnpicklingError(f'a storage id of this format has {size + 1} fields, got '
                                 f'{len(fields) + 1}')
  kind, key, location, numel = fields[:4]
  _text(location, 'location')  # 'cpu', 'cuda:0'...: everything is read to numpy
  if not isinstance(kind, _StorageClass):
    raise pickle.UnpicklingError(f'a storage class must be a torch storage, got {kind!r:.80}')
  if type(numel) is not int or numel < 0:
    raise pickle.UnpicklingError(f'a storage size must be a non-negative int, got {numel!r:.40}')
  return kind, _text(key, 'key'), numel


class _Unpickler(pickle.Unpickler):
  """Runs a scanned pickle: globals from :data:`ALLOWED`, persistent ids through ``storage``."""

  def __init__(self, stream, source: str, storage: Callable[[tuple], _Storage] | None):
    super().__init__(stream, encoding='utf-8')
    self._source, self._storage = source, storage

  def find_class(self, module, name):
    return _allowed(module, name, self._source)

  def persistent_load(self, pid):
    if type(pid) is not tuple or not pid or _text(pid[0], 'id') != 'storage' or not self._storage:
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r:.80}')
    return self._storage(pid[1:])


def _scan(stream: io.BytesIO, source: str) -> None:
  """Refuses, before any of it runs, a pickle that names a global outside :data:`ALLOWED`, or
  whose memo indices exceed its length (the C unpickler sizes its memo by the largest)."""
  try:
    for count, (op, arg, _) in enumerate(pickletools.genops(stream), 1):
      if op.name in ('GLOBAL', 'INST'):
        module, _, name = arg.partition(' ')
        _allowed(module, name, source)
      elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and arg > count:
        raise pickle.UnpicklingError(f'memo index {arg} in a pickle of {count} opcodes')
  except ValueError as e:  # what pickletools raises for bytes that are no (whole) pickle
    raise pickle.UnpicklingError(f'truncated or damaged pickle: {e}') from e


def _unpickle(stream: io.BytesIO, source: str,
              storage: Callable[[tuple], _Storage] | None = None) -> Any:
  """The next pickle of ``stream``, scanned then run; the stream is left right after it."""
  start = stream.tell()
  _scan(stream, source)
  stream.seek(start)
  return _Unpickler(stream, source, storage).load()


def _entry(archive: zipfile.ZipFile, name: str, source: str, nbytes: int = 0) -> bytes:
  """The bytes of entry ``name`` (found by name in the archive's directory, never on disk),
  after checking that it holds at least ``nbytes``."""
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise _unreadable(source, f'the archive has no entry {name}.') from None
  if info.file_size < nbytes:
    raise _unreadable(source, f'the pickle declares {nbytes} bytes for {name}, which holds '
                              f'{info.file_size}.')
  if info.file_size > _MAX_ZIP_RATIO * info.compress_size + 1024:
    raise _unreadable(source, f'entry {name} claims {info.file_size} bytes from '
                              f'{info.compress_size} (damaged?).')
  return archive.read(info)


def _has(archive: zipfile.ZipFile, name: str) -> bool:
  try:
    archive.getinfo(name)
  except KeyError:
    return False
  return True


def _byteorder(archive: zipfile.ZipFile, prefix: str, source: str) -> str:
  if not _has(archive, f'{prefix}/byteorder'):
    return 'little'  # PyTorch's default for files without the record
  order = _entry(archive, f'{prefix}/byteorder', source).decode('ascii', 'replace')
  if order not in ('little', 'big'):
    raise _unreadable(source, f'byteorder {order!r:.20}.')
  return order


def _archive_prefix(archive: zipfile.ZipFile, source: str) -> str:
  """The folder that holds the archive's records (PyTorch takes the first entry's)."""
  names = archive.namelist()
  prefix = names[0].partition('/')[0] if names else ''
  if _has(archive, f'{prefix}/constants.pkl'):
    raise _unreadable(source, 'a TorchScript archive (torch.jit.save); only torch.save files '
                              'are read.')
  if not _has(archive, f'{prefix}/data.pkl'):
    raise _unreadable(source, f'a zip archive without {prefix}/data.pkl, so not a torch.save file.')
  return prefix


def _load_zip(data: bytes, source: str) -> Any:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    prefix = _archive_prefix(archive, source)
    order = _byteorder(archive, prefix, source)
    storages: dict[str, _Storage] = {}

    def storage(fields: tuple) -> _Storage:
      kind, key, numel = _storage_id(fields, 4)
      if key not in storages:  # PyTorch too keeps the first storage of a key
        nbytes = numel * kind.dtype.itemsize
        raw = _entry(archive, f'{prefix}/data/{key}', source, nbytes)
        storages[key] = _Storage(key, kind.dtype, nbytes, order)
        storages[key].data = memoryview(raw)[:nbytes]
      return storages[key]

    return _unpickle(io.BytesIO(_entry(archive, f'{prefix}/data.pkl', source)), source, storage)


def _legacy_storage(roots: dict[str, _Storage], views: dict[str, _Storage], fields: tuple):
  """The storage of a legacy id ``(class, root key, location, numel, view_metadata)``: a root
  storage (its bytes come after the pickle), or a view ``(key, offset, numel)`` into one."""
  kind, key, numel = _storage_id(fields, 5)
  if key not in roots:
    roots[key] = _Storage(key, kind.dtype, numel * kind.dtype.itemsize)
  root, view = roots[key], fields[4]
  if view is None:
    return root
  if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0
                                                             for v in view[1:])):
    raise pickle.UnpicklingError(f'invalid storage view {view!r:.80}')
  view_key, offset, size = _text(view[0], 'key'), view[1] * kind.dtype.itemsize, view[2]
  if view_key not in views:
    if offset + size * kind.dtype.itemsize > root.nbytes:
      raise pickle.UnpicklingError(f'a view of {size} elements at {view[1]} passes the end of '
                                   f'{root!r}')
    views[view_key] = _Storage(view_key, kind.dtype, size * kind.dtype.itemsize, root=root,
                               start=offset)
  return views[view_key]


def _read_legacy_storages(data: memoryview, start: int, keys: Any,
                          roots: dict[str, _Storage], source: str) -> None:
  """Fills ``roots`` from the bytes after the pickles: per key, a count, then the elements."""
  if not isinstance(keys, list):
    raise pickle.UnpicklingError(f'the storage keys must be a list, got {keys!r:.80}')
  at = start
  for key in keys:
    root = roots.get(key) if isinstance(key, str) else None
    if root is None:
      raise _unreadable(source, f'storage {key!r:.40} is listed but no tensor uses it.')
    count = int.from_bytes(data[at:at + 8], 'little', signed=True)
    if at + 8 <= len(data) and count * root.dtype.itemsize != root.nbytes:
      raise _unreadable(source, f'storage {key!r} holds {count} elements, its tensors declare '
                                f'{root.nbytes // root.dtype.itemsize}.')
    if at + 8 + root.nbytes > len(data):
      raise _unreadable(source, f'the file ends inside storage {key!r} (truncated).')
    root.data, at = data[at + 8:at + 8 + root.nbytes], at + 8 + root.nbytes
  unread = [k for k, s in roots.items() if s.data is None]
  if unread:
    raise _unreadable(source, f'no data for storages {unread[:5]}.')


def _load_legacy(data: bytes, source: str) -> Any:
  stream = io.BytesIO(data)
  try:
    magic = _unpickle(stream, source)
  except pickle.UnpicklingError as e:
    raise _unreadable(source, 'not a torch.save file (neither a zip archive nor a '
                              f'pickle): {e}') from e
  if type(magic) is not int or magic != MAGIC_NUMBER:
    raise _unreadable(source, 'a pickle, but not a torch.save file (no magic number).')
  version = _unpickle(stream, source)
  if type(version) is not int or version != LEGACY_PROTOCOL:
    raise _unreadable(source, f'legacy protocol version {version!r:.40}, only '
                              f'{LEGACY_PROTOCOL} is known.')
  _unpickle(stream, source)  # the writer's system info; the data is little-endian regardless
  roots: dict[str, _Storage] = {}
  views: dict[str, _Storage] = {}
  tree = _unpickle(stream, source, lambda fields: _legacy_storage(roots, views, fields))
  keys = _unpickle(stream, source)
  _read_legacy_storages(memoryview(data), stream.tell(), keys, roots, source)
  return tree


_PENDING = object()


def _finish(tree: Any) -> Any:
  """``tree`` with tensors and storages as numpy arrays, dtypes as numpy dtypes and other
  globals as their names; containers are updated in place, shared objects stay shared."""
  done: dict[int, Any] = {}
  keep = []  # the originals, so that no id in ``done`` is reused

  def walk(x):
    if isinstance(x, (str, bytes, bytearray, int, float, complex, type(None))):
      return x
    if id(x) in done:
      if done[id(x)] is _PENDING:
        raise pickle.UnpicklingError('a tuple that contains itself')
      return done[id(x)]
    keep.append(x)
    done[id(x)] = x if isinstance(x, (dict, list)) else _PENDING
    done[id(x)] = out = convert(x)
    return out

  def convert(x):
    if isinstance(x, (_Tensor, _Storage)):
      return x.array()
    if isinstance(x, _Dtype) and not isinstance(x, _StorageClass):
      return x.dtype
    if isinstance(x, _Global):
      return x.name
    if isinstance(x, dict):
      for key in list(x):
        if walk(key) is not key:
          raise pickle.UnpicklingError(f'a dict key that is not a plain value: {key!r:.80}')
        x[key] = walk(x[key])
      for name, value in getattr(x, '__dict__', {}).items():  # OrderedDict._metadata
        x.__dict__[name] = walk(value)
      return x
    if isinstance(x, list):
      x[:] = [walk(v) for v in x]
      return x
    if isinstance(x, tuple):
      items = tuple(walk(v) for v in x)
      return x if all(a is b for a, b in zip(items, x)) else items
    if isinstance(x, (set, frozenset)) and any(walk(v) is not v for v in x):
      raise pickle.UnpicklingError(f'a set of values that are not plain: {x!r:.80}')
    return x

  return walk(tree)


def _is_tar(data: bytes) -> bool:
  return data[257:262] == b'ustar'


def load(data: bytes, source: str) -> Any:
  """The objects of a ``torch.save`` file, without PyTorch: tensors as numpy arrays.

  Args:
    data: the file's bytes (zip format, or the legacy format of PyTorch < 1.6).
    source: the file's name, for messages.

  Returns:
    The saved tree (dicts, OrderedDicts, lists, tuples, numbers, strings...) with every tensor
    and ``nn.Parameter`` as a numpy array (see the module docstring for the details).

  Raises:
    CheckpointError: a damaged or truncated file, one that names a global other than those of
      :data:`ALLOWED` (nothing in it is run), or sizes, strides or storage keys that do not fit
      the bytes it holds.
  """
  try:
    if data[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
      tree = _load_zip(data, source)
    elif _is_tar(data):
      raise _unreadable(source, 'the tar format of the earliest PyTorch releases is not '
                                'supported; load and save it again with PyTorch.')
    else:
      tree = _load_legacy(data, source)
    return _finish(tree)
  except (CheckpointError, MemoryError):
    raise
  except zipfile.BadZipFile as e:
    hint = (' (the file is damaged, or was saved with PyTorch\'s CRC-32 computation turned off)'
            if 'CRC' in str(e) else '')
    raise _unreadable(source, f'damaged zip archive: {e}{hint}.') from e
  except RecursionError as e:
    raise _unreadable(source, 'objects nested too deeply.') from e
  except pickle.UnpicklingError as e:
    raise _unreadable(source, f'{e}.') from e
  except Exception as e:  # a damaged pickle raises many types: EOFError, TypeError...
    raise _unreadable(source, f'{type(e).__name__}: {e}') from e
