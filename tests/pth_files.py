"""A ``.pth`` assembler for tests: the pickle opcodes and zip / legacy layouts that
``torch.save`` writes, put together by hand, so that tests need no torch."""

import io
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from sde_jax.checkpoints import torch_pickle


def op_global(dotted: str) -> bytes:
  module, name = dotted.rsplit('.', 1)
  return b'c' + f'{module}\n{name}\n'.encode()


def value(x) -> bytes:
  """Opcodes that push ``x`` (a plain value), without the protocol header and STOP, nor memo
  PUTs (so that the slots of :func:`put` keep what a test put there)."""
  return pickletools.optimize(pickle.dumps(x, protocol=2))[2:-1]


def tuple_of(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'


def call(func: bytes, *args: bytes) -> bytes:
  return func + tuple_of(*args) + b'R'


def dict_of(**items: bytes) -> bytes:
  return b'}(' + b''.join(value(k) + v for k, v in items.items()) + b'u'


def program(body: bytes) -> bytes:
  return b'\x80\x02' + body + b'.'


def storage(key='0', numel=6, kind='FloatStorage', legacy_view=()) -> bytes:
  """A persistent storage id; ``legacy_view`` (None or a view tuple) makes it a legacy one."""
  fields = [value('storage'), op_global(f'torch.{kind}'), value(key), value('cuda:0'),
            value(numel)]
  return tuple_of(*fields, *([value(legacy_view[0])] if legacy_view else [])) + b'Q'


def tensor(store: bytes, offset=0, size=(2, 3), stride=(3, 1),
           rebuild='torch._utils._rebuild_tensor_v2') -> bytes:
  args = [store, value(offset), value(tuple(size)), value(tuple(stride))]
  if rebuild.endswith('v2'):
    args += [value(False), call(op_global('collections.OrderedDict'))]
  return call(op_global(rebuild), *args)


def zip_file(pkl: bytes, storages=None, byteorder: bytes | None = b'little', prefix='archive',
             extra=()) -> bytes:
  """The zip format: ``data.pkl``, ``byteorder``, ``data/<key>`` and ``version`` (then the
  ``extra`` names, empty) under ``prefix/``."""
  storages = {'0': np.arange(6, dtype='<f4').tobytes()} if storages is None else storages
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as archive:
    archive.writestr(f'{prefix}/data.pkl', pkl)
    if byteorder is not None:
      archive.writestr(f'{prefix}/byteorder', byteorder)
    for key, raw in storages.items():
      archive.writestr(f'{prefix}/data/{key}', raw)
    for name in ('version', *extra):
      archive.writestr(f'{prefix}/{name}', b'3\n' if name == 'version' else b'')
  return buf.getvalue()


def legacy_file(pkl: bytes, storages=None) -> bytes:
  """The legacy format: header pickles, the object pickle, the keys, then counts and bytes."""
  storages = {'0': (6, np.arange(6, dtype='<f4').tobytes())} if storages is None else storages
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  head = b''.join(pickle.dumps(x, protocol=2) for x in (torch_pickle.MAGIC_NUMBER, 1001,
                                                        sys_info))
  body = b''.join(struct.pack('<q', count) + raw for count, raw in storages.values())
  return head + pkl + pickle.dumps(list(storages), protocol=2) + body


LEGACY = (None,)  # the view_metadata field of a legacy storage id without a view
_STORAGE_CLASSES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
                    np.dtype(np.int64): 'LongStorage', np.dtype(np.uint8): 'ByteStorage'}


def state_dict_file(state: dict) -> bytes:
  """A zip-format ``.pth`` of a state dict (an OrderedDict of float32 / float64 / int64 / uint8
  arrays), as ``torch.save`` lays it out: for tests that need a ``.pth`` but not torch."""
  items, storages = [], {}
  for key, (name, array) in enumerate(state.items()):
    array = np.asarray(array).copy(order='C')
    stride = tuple(s // array.itemsize for s in array.strides)
    storages[str(key)] = array.astype(array.dtype.newbyteorder('<')).tobytes()
    store = storage(str(key), array.size, _STORAGE_CLASSES[array.dtype])
    items.append(value(name) + tensor(store, 0, array.shape, stride))
  return zip_file(program(call(op_global('collections.OrderedDict')) + b'(' + b''.join(items) +
                          b'u'), storages)


def resize_entry(data: bytes, name: str, file_size: int, compress_size: int | None = None) -> bytes:
  """``data`` with the sizes that its central directory declares for entry ``name`` replaced
  (the entry's bytes and CRC stay as they are): what a damaged or hostile zip declares."""
  out = bytearray(data)
  at = out.find(b'PK\x01\x02')
  while at >= 0:
    length = struct.unpack_from('<H', out, at + 28)[0]
    if out[at + 46:at + 46 + length] == name.encode():
      size = struct.unpack_from('<I', out, at + 20)[0] if compress_size is None else compress_size
      struct.pack_into('<II', out, at + 20, size, file_size)
      return bytes(out)
    at = out.find(b'PK\x01\x02', at + 4)
  raise KeyError(name)


def put(index: int) -> bytes:
  """BINPUT: the top of the stack into memo slot ``index`` (< 256)."""
  return b'q' + bytes([index])


def get(index: int) -> bytes:
  """BINGET: memo slot ``index`` (< 256) onto the stack."""
  return b'h' + bytes([index])


def repeated_tensors(count: int, numel: int) -> bytes:
  """A pickle of a list of ``count`` tensors, each ``numel`` float32 repeating one element
  (stride 0), made by REDUCE on a memoised function and arguments: 5 bytes a tensor."""
  args = tuple_of(storage(), value(0), value((numel,)), value((0,)), value(False),
                  call(op_global('collections.OrderedDict')))
  first = op_global('torch._utils._rebuild_tensor_v2') + put(0) + args + put(1) + b'R'
  return program(b']' + b'(' + first + (get(0) + get(1) + b'R') * (count - 1) + b'e')


def tuple_dag(depth: int) -> bytes:
  """Opcodes that push a tuple of depth ``depth`` whose each level holds the one below twice
  (through the memo): a few bytes a level, ``2 ** depth`` leaves when written out in full."""
  out = b')' + put(0)
  for level in range(1, depth + 1):  # POP the level below, then the tuple of it twice
    out += b'0' + get(level - 1) + get(level - 1) + b'\x86' + put(level)
  return out
