"""Tensors and storages of a ``.pth`` file: the stand-ins that its pickle gets for PyTorch's
globals, the tensor rebuilds (each view checked to lie in its storage, and its bytes charged to
the file's :class:`~sde_jax.checkpoints.pth_bounds.Budget` before anything is allocated), and
:func:`finish`, which turns the unpickled tree into numpy arrays."""

from __future__ import annotations

import math
import pickle
import sys
from typing import Any, Callable

import ml_dtypes
import numpy as np

from sde_jax.checkpoints.pth_bounds import Budget, ShortRepr, brief

DTYPES = {  # torch dtype name -> numpy dtype
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_, 'complex64': np.complex64,
    'complex128': np.complex128, 'uint16': np.uint16, 'uint32': np.uint32, 'uint64': np.uint64,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn, 'float8_e5m2': ml_dtypes.float8_e5m2,
    'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz, 'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
    'float8_e8m0fnu': ml_dtypes.float8_e8m0fnu,
}
STORAGES = {  # legacy storage class -> torch dtype name
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
    'BoolStorage': 'bool', 'ComplexFloatStorage': 'complex64',
    'ComplexDoubleStorage': 'complex128',
}
NO_NUMPY_DTYPES = ('complex32', 'bcomplex32', 'qint8', 'quint8', 'qint32', 'quint4x2',
                   'quint2x4', 'bits1x8', 'bits2x4', 'bits4x2', 'bits8', 'bits16',
                   'float4_e2m1fn_x2', *(f'{u}int{n}' for u in ('', 'u') for n in range(1, 8)))
TENSOR_TYPES = ('torch.Tensor', 'torch.nn.parameter.Parameter')
_MAX_INT = 1 << 63  # torch's sizes, strides and offsets are int64


class Inert(ShortRepr):
  """Base of the stand-ins a pickle gets: its BUILD opcode cannot set their state."""
  __slots__ = ()

  def __setstate__(self, state):
    raise pickle.UnpicklingError(f'the pickle sets the state of {self!r}')


class Global(Inert):
  """An allowed global that is only a marker (``torch.Tensor``)."""
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return self.name


class Function(Global):
  """An allowed global that REDUCE may call: ``fn`` stands in for it."""
  __slots__ = ('fn',)

  def __init__(self, name: str, fn: Callable[..., Any]):
    super().__init__(name)
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


class Dtype(Global):
  """A torch dtype, with its numpy dtype."""
  __slots__ = ('dtype',)

  def __init__(self, name: str, dtype):
    super().__init__(name)
    self.dtype = np.dtype(dtype)


class StorageClass(Dtype):
  """A torch storage class (``torch.FloatStorage``), with the numpy dtype of its elements."""
  __slots__ = ()


class Storage(Inert):
  """``nbytes`` bytes of the file, from byte ``start`` of storage ``root`` (itself if None)."""
  __slots__ = ('key', 'dtype', 'nbytes', 'byteorder', 'root', 'start', 'data')

  def __init__(self, key: str, dtype: np.dtype, nbytes: int, byteorder: str = 'little',
               root: Storage | None = None, start: int = 0):
    self.key, self.dtype, self.nbytes, self.byteorder = key, dtype, nbytes, byteorder
    self.root, self.start = root, start
    self.data: memoryview | None = None  # set once read (legacy files hold it after the pickle)

  def __repr__(self):
    return f'storage {brief(self.key, 40)}'

  def buffer(self) -> memoryview:
    """The storage's bytes, checked to be all there: no array is ever made over fewer."""
    data = (self.root or self).data
    out = data[self.start:self.start + self.nbytes]
    if len(out) != self.nbytes:
      raise pickle.UnpicklingError(f'{self!r} holds {len(out)} bytes, not {self.nbytes}')
    return out

  def array(self) -> np.ndarray:
    """The storage's elements, as a 1-D array of its dtype."""
    out = np.frombuffer(self.buffer(), self.dtype, self.nbytes // self.dtype.itemsize).copy()
    return out.byteswap(inplace=True) if self.byteorder != sys.byteorder else out


class Tensor(Inert):
  """A dense tensor: a strided view into a storage, checked to lie within it."""
  __slots__ = ('storage', 'dtype', 'offset', 'size', 'stride', 'conj', 'neg')

  def __init__(self, storage: Storage, dtype: np.dtype, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...], conj: bool = False, neg: bool = False):
    self.storage, self.dtype, self.offset = storage, dtype, offset
    self.size, self.stride, self.conj, self.neg = size, stride, conj, neg

  def __repr__(self):
    return f'tensor of size {brief(self.size, 40)} in {self.storage!r}'

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
      out.byteswap(inplace=True)
    if self.neg:
      np.negative(out, out=out)
    return np.conj(out, out=out) if self.conj else out


def ints(value: Any, what: str) -> tuple[int, ...]:
  """``value``, a tuple or list of ints that fit int64 and are not negative, as a tuple."""
  if not isinstance(value, (tuple, list)) or any(type(v) is not int or not 0 <= v < _MAX_INT
                                                 for v in value):
    raise pickle.UnpicklingError(f'a tensor {what} must be non-negative ints, got {brief(value)}')
  return tuple(value)


def _check_extent(storage: Storage, dtype: np.dtype, offset: int, size, stride) -> None:
  """Raises unless every element of the view lies in ``storage``."""
  if not math.prod(size):
    return
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if (last + 1) * dtype.itemsize > storage.nbytes:
    raise pickle.UnpicklingError(
        f'a tensor of size {size}, stride {stride} and offset {offset} reaches element {last} '
        f'of {storage!r}, which holds {storage.nbytes // dtype.itemsize} {dtype} elements')


def _tensor(budget: Budget, storage, offset, size, stride, dtype=None, metadata=None) -> Tensor:
  """The tensor ``torch._utils._rebuild_tensor*`` would make, bounds-checked and charged."""
  if not isinstance(storage, Storage):
    raise pickle.UnpicklingError(f'a tensor needs a storage, got {brief(storage)}')
  dtype = storage.dtype if dtype is None else dtype
  size, stride = ints(size, 'size'), ints(stride, 'stride')
  if type(offset) is not int or not 0 <= offset < _MAX_INT or len(size) != len(stride) or \
      len(size) > 64:
    raise pickle.UnpicklingError(f'invalid tensor: offset {brief(offset, 40)}, size '
                                 f'{brief(size, 40)}, stride {brief(stride, 40)}')
  _check_extent(storage, dtype, offset, size, stride)
  flags = metadata or {}
  if not isinstance(flags, dict) or any(v and k not in ('conj', 'neg') for k, v in flags.items()):
    raise pickle.UnpicklingError(f'unsupported tensor metadata {brief(flags)}')
  budget.charge(math.prod(size) * dtype.itemsize, f'a tensor of size {size} and stride {stride}')
  return Tensor(storage, dtype, offset, size, stride, bool(flags.get('conj')),
                bool(flags.get('neg')))


def _rebuild_tensor(budget, storage, offset, size, stride):
  return _tensor(budget, storage, offset, size, stride)


def _rebuild_tensor_v2(budget, storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks  # numpy arrays hold neither
  return _tensor(budget, storage, offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(budget, storage, offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  """The rebuild of tensors in an untyped storage (PyTorch's newer dtypes: uint16, float8...)."""
  del requires_grad, backward_hooks
  if not isinstance(dtype, Dtype) or isinstance(dtype, StorageClass):
    raise pickle.UnpicklingError(f'a tensor dtype must be a torch dtype, got {brief(dtype)}')
  return _tensor(budget, storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(budget, data, requires_grad=True, backward_hooks=None, state=None):
  """``nn.Parameter`` (its state, Python attributes, is dropped): the tensor itself."""
  del budget, requires_grad, backward_hooks, state
  if not isinstance(data, Tensor):
    raise pickle.UnpicklingError(f'a parameter holds a tensor, got {brief(data)}')
  return data


def _rebuild_from_type_v2(budget, func, new_type, args, state):
  """A tensor with Python attributes (dropped); tensor subclasses are refused."""
  del budget, state
  if not (isinstance(func, Function) and func.name in TENSOR_REBUILDS
          and isinstance(new_type, Global) and new_type.name in TENSOR_TYPES
          and isinstance(args, tuple)):
    raise pickle.UnpicklingError(f'unsupported tensor type rebuild: {brief(func, 60)}, '
                                 f'{brief(new_type, 60)}')
  return func(*args)


# The tensor rebuilds a pickle may call, each taking the file's budget first.
TENSOR_REBUILDS = {
    'torch._utils._rebuild_tensor': _rebuild_tensor,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
}
REBUILDS = {**TENSOR_REBUILDS, 'torch._tensor._rebuild_from_type_v2': _rebuild_from_type_v2}


def markers() -> dict[str, Global]:
  """The allowed globals that are values, not functions: tensor types, dtypes, storages."""
  out = {name: Global(name) for name in TENSOR_TYPES}
  out.update({f'torch.{name}': Dtype(f'torch.{name}', dtype) for name, dtype in DTYPES.items()})
  for module in ('torch', 'torch.cuda'):
    out.update({f'{module}.{name}': StorageClass(f'{module}.{name}', DTYPES[dtype])
                for name, dtype in STORAGES.items()})
  out['torch.storage.UntypedStorage'] = StorageClass('torch.storage.UntypedStorage', np.uint8)
  return out


_PENDING = object()


def finish(tree: Any, budget: Budget) -> Any:
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
    if isinstance(x, Storage):  # tensors were charged when made, a storage only now
      budget.charge(x.nbytes, f'{x!r} as a value')
    if isinstance(x, (Tensor, Storage)):
      return x.array()
    if isinstance(x, Dtype) and not isinstance(x, StorageClass):
      return x.dtype
    if isinstance(x, Global):
      return x.name
    if isinstance(x, dict):
      for key in list(x):
        if walk(key) is not key:
          raise pickle.UnpicklingError(f'a dict key that is not a plain value: {brief(key)}')
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
      raise pickle.UnpicklingError(f'a set of values that are not plain: {brief(x)}')
    return x

  return walk(tree)
