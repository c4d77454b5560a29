"""The restricted unpickler of ``.pth`` files: each pickle is scanned without running it and
refused if it names a global outside :data:`ALLOWED`; then a :class:`pickle.Unpickler` whose
``find_class`` knows only those runs it, each global an inert stand-in (a pickle cannot change
one). The functions among them that copy what they are given (``set``, ``OrderedDict``,
``bytearray``...) charge the copy to the file's budget, as the tensor rebuilds charge theirs.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import pickletools
from typing import Any, Callable

from sde_jax.checkpoints.errors import CheckpointError
from sde_jax.checkpoints.pth_bounds import Budget, brief, unreadable
from sde_jax.checkpoints.pth_tensors import (NO_NUMPY_DTYPES, REBUILDS, Function, Global,
                                             Storage, StorageClass, ints, markers)

_MODULE_ALIASES = {'__builtin__': 'builtins'}  # Python 2's name, kept by pickle protocol 2
_ITEM_BYTES = 64  # what a set or dict entry costs, about: for the budget of their copies
# The items that values may visit beyond one an opcode, repeating tuples of the memo.
MAX_REPEATS = 1 << 20


def _device(budget, kind, index=None) -> str:
  del budget
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise pickle.UnpicklingError(f'invalid torch.device({brief(kind, 40)}, {brief(index, 40)})')
  return kind if index is None else f'{kind}:{index}'


def _size(budget, dims=()) -> tuple[int, ...]:
  budget.charge(8 * len(dims) if isinstance(dims, (tuple, list)) else 0, 'a torch.Size')
  return ints(dims, 'torch.Size')


def _encode(budget, text, encoding):
  """``_codecs.encode`` as pickle protocol 2 uses it for ``bytes``: latin-1 text only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'_codecs.encode is allowed for latin-1 text only, got '
                                 f'{brief(encoding, 40)}')
  budget.charge(len(text), 'a bytes object')
  return text.encode('latin-1')


def _bytearray(budget, *args):
  if args and not isinstance(args[0], (str, bytes)):  # bytearray(n) would allocate n bytes
    raise pickle.UnpicklingError('bytearray is allowed from bytes or text only')
  budget.charge(len(args[0]) if args else 0, 'a bytearray')
  return bytearray(*args)


def _copying(kind: Callable[..., Any]) -> Callable[..., Any]:
  """``kind`` (a set or dict type) made from at most one iterable, its copy charged."""
  def make(budget, *args):
    if len(args) > 1 or args and not isinstance(args[0], (tuple, list, dict, set, frozenset,
                                                           str, bytes)):
      raise pickle.UnpicklingError(f'{kind.__name__} is allowed from one container only')
    budget.charge(_ITEM_BYTES * len(args[0]) if args else 0, f'a {kind.__name__}')
    return kind(*args)
  return make


# The functions a pickle may call, each taking the file's budget first.
_FUNCTIONS = {
    **REBUILDS,
    'collections.OrderedDict': _copying(collections.OrderedDict),
    'collections.Counter': _copying(collections.Counter), 'builtins.set': _copying(set),
    'builtins.complex': lambda budget, *args: complex(*args),
    'builtins.bytearray': _bytearray, '_codecs.encode': _encode,
    'torch.device': _device, 'torch.Size': _size,
}
_MARKERS = markers()
# Every global a checkpoint may name: the globals that PyTorch's weights_only loader needs for
# dense tensors and plain containers.
ALLOWED = frozenset(_FUNCTIONS) | frozenset(_MARKERS)
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
       for d in NO_NUMPY_DTYPES},
}


def _stand_ins(budget: Budget) -> dict[str, Global]:
  """What the pickle of one file gets for each allowed global (its functions charge ``budget``)."""
  functions = {name: Function(name, functools.partial(fn, budget))
               for name, fn in _FUNCTIONS.items()}
  return {**_MARKERS, **functions}


def _check_global(module: str, name: str, source: str) -> str:
  """The dotted name of global ``module.name``; CheckpointError for any global not allowed."""
  dotted = f'{_MODULE_ALIASES.get(module, module)}.{name}'
  if dotted in ALLOWED:
    return dotted
  why = _UNSUPPORTED.get(dotted)
  detail = (f'{why} are not supported' if why else
            'a checkpoint may hold only tensors and plain containers, and nothing in it is run')
  raise unreadable(source, f'refuses global {dotted[:200]} ({detail}).')


def text(value: Any, what: str) -> str:
  """A key or a location of a storage id (Python 2 pickles may hold them as bytes)."""
  if isinstance(value, bytes):
    value = value.decode('ascii')
  if not isinstance(value, str):
    raise pickle.UnpicklingError(f'a storage {what} must be a string, got {brief(value)}')
  return value


def storage_id(fields: tuple, size: int) -> tuple[StorageClass, str, int]:
  """(storage class, key, numel) of a storage id ``('storage', class, key, location, numel,
  ...)`` without its first field; ``size`` is the number of fields it must have."""
  if len(fields) != size:
    raise pickle.UnpicklingError(f'a storage id of this format has {size + 1} fields, got '
                                 f'{len(fields) + 1}')
  kind, key, location, numel = fields[:4]
  text(location, 'location')  # 'cpu', 'cuda:0'...: everything is read to numpy
  if not isinstance(kind, StorageClass):
    raise pickle.UnpicklingError(f'a storage class must be a torch storage, got {brief(kind)}')
  if type(numel) is not int or not 0 <= numel < 1 << 63:
    raise pickle.UnpicklingError(f'a storage size must be a non-negative int, got '
                                 f'{brief(numel, 40)}')
  return kind, text(key, 'key'), numel


class _Unpickler(pickle.Unpickler):
  """Runs a scanned pickle: globals from :data:`ALLOWED`, persistent ids through ``storage``."""

  def __init__(self, stream, budget: Budget, storage: Callable[[tuple], Storage] | None):
    super().__init__(stream, encoding='utf-8')
    self._source, self._storage = budget.source, storage
    self._stand_ins = _stand_ins(budget)

  def find_class(self, module, name):
    return self._stand_ins[_check_global(module, name, self._source)]

  def persistent_load(self, pid):
    if type(pid) is not tuple or not pid or text(pid[0], 'id') != 'storage' or not self._storage:
      raise pickle.UnpicklingError(f'unexpected persistent id {brief(pid)}')
    return self._storage(pid[1:])


# Opcodes that push a list, dict or set: unhashable, so that hashing or comparing a value never
# goes through their items; and those that add items to one (it stays the same value).
_FRESH = frozenset({'EMPTY_LIST', 'LIST', 'EMPTY_DICT', 'DICT', 'EMPTY_SET'})
_ADD = frozenset({'APPEND', 'APPENDS', 'SETITEM', 'SETITEMS', 'ADDITEMS', 'DUP'})
_PUTS = frozenset({'PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'})
_GETS = frozenset({'GET', 'BINGET', 'LONG_BINGET'})
# Per opcode: whether it takes the items above the last mark, how many it takes (below the mark
# if so), how many it pushes.
_SHAPES = {op.name: (pickletools.markobject in op.stack_before,
                     op.stack_before.index(pickletools.markobject)
                     if pickletools.markobject in op.stack_before else len(op.stack_before),
                     len(op.stack_after)) for op in pickletools.opcodes}


class _Expansion:
  """The pickle's stack, simulated from its opcodes alone: for each value, how many items
  hashing or comparing it visits, every item of a tuple counted each time the memo repeats it.

  A tuple that holds the one before twice, ``n`` times over, takes ``3 n`` opcodes and visits
  ``2**n`` items: a dict key or a set item of it would hash forever. A pickle without repeats
  visits at most one item an opcode.
  """

  def __init__(self):
    self.stack: list[int] = []
    self.marks: list[int] = []
    self.memo: dict[int, int] = {}

  def step(self, name: str, arg) -> int:
    """Applies opcode ``name``; the weight of what it pushed (0 if nothing)."""
    stack = self.stack
    if name == 'MARK':
      self.marks.append(len(stack))
      return 0
    if name == 'POP' and self.marks and self.marks[-1] == len(stack):
      self.marks.pop()  # as the C unpickler does: POP right after a MARK drops the mark
      return 0
    if name in _PUTS:
      self.memo[len(self.memo) if name == 'MEMOIZE' else arg] = stack[-1] if stack else 1
      return 0
    marked, taken, pushed = _SHAPES[name]
    start = (self.marks.pop() if self.marks else 0) if marked else len(stack)
    start = max(start - taken, 0)
    popped = stack[start:]
    del stack[start:]
    if name in _GETS:
      weight = self.memo.get(arg, 1)
    elif name in _ADD:  # the container (or the value DUP repeats) as it was
      weight = popped[0] if popped else 1
    else:
      weight = 1 if name in _FRESH else 1 + sum(popped)
    stack.extend([weight] * pushed)
    return weight if pushed else 0


def _scan(stream: io.BytesIO, source: str) -> None:
  """Refuses, before any of it runs, a pickle that names a global outside :data:`ALLOWED`,
  whose memo indices exceed its length (the C unpickler sizes its memo by the largest), or whose
  values repeat tuples through its memo into more than ``MAX_REPEATS`` items over the opcodes."""
  expansion = _Expansion()
  try:
    for count, (op, arg, _) in enumerate(pickletools.genops(stream), 1):
      if op.name in ('GLOBAL', 'INST'):
        module, _, name = arg.partition(' ')
        _check_global(module, name, source)
      elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and arg > count:
        raise pickle.UnpicklingError(f'memo index {arg} in a pickle of {count} opcodes')
      if expansion.step(op.name, arg) > count + MAX_REPEATS:
        raise pickle.UnpicklingError(
            f'tuples that hold one another through the memo: after {count} opcodes, a value of '
            f'more than {count + MAX_REPEATS} items (hashing or comparing it would not end)')
  except CheckpointError:
    raise  # a refused global, which is a ValueError too: its own message, not the one below
  except ValueError as e:  # what pickletools raises for bytes that are no (whole) pickle
    raise pickle.UnpicklingError(f'truncated or damaged pickle: {e}') from e


def unpickle(stream: io.BytesIO, budget: Budget,
             storage: Callable[[tuple], Storage] | None = None) -> Any:
  """The next pickle of ``stream``, scanned then run; the stream is left right after it.

  Args:
    stream: the file's bytes, or an entry's, at the start of a pickle.
    budget: the file's budget (and its name, for messages).
    storage: makes the storage of a persistent id, without its first field ``'storage'``.
  """
  start = stream.tell()
  _scan(stream, budget.source)
  stream.seek(start)
  return _Unpickler(stream, budget, storage).load()
