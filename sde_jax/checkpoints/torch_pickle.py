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
names that protocols 4 and 5 build on the stack), each global an inert stand-in of the reader
(a pickle cannot change one). Every size a file declares is checked against the bytes it
actually holds before any array is made from them, the arrays of the whole file are charged to
a budget derived from its size before they are allocated (:mod:`pth_bounds`: ``max_bytes``
raises it for a file one trusts), and its values appear in messages through a bounded repr; the
``version`` record is not read.

One concept a module: :mod:`pth_container` (zip and legacy), :mod:`pth_unpickler` (the scan and
the restricted unpickler), :mod:`pth_tensors` (storages, tensor rebuilds, numpy arrays),
:mod:`pth_bounds` (the budget, bounded reprs); this one reads a file with them.

Unlike ``torch.load(weights_only=True)``: tensors and parameters are numpy arrays, each a copy of
its own (tensors that share a storage no longer share memory; one tensor met twice is one array
twice); bfloat16 and float8 tensors have ``ml_dtypes`` types; a ``torch.device`` becomes its string
(``'cuda:0'``), a ``torch.Size`` a tuple, a dtype a numpy dtype, any other allowed global met as a
value its dotted name; Python attributes set on a tensor are dropped; quantized, sparse, nested
and meta tensors are refused.
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

from sde_jax.checkpoints.errors import CheckpointError
from sde_jax.checkpoints.pth_bounds import Budget, unreadable
from sde_jax.checkpoints.pth_container import (LEGACY_PROTOCOL, MAGIC_NUMBER, load_legacy,
                                               load_zip)
from sde_jax.checkpoints.pth_tensors import finish
from sde_jax.checkpoints.pth_unpickler import ALLOWED

__all__ = ['ALLOWED', 'LEGACY_PROTOCOL', 'MAGIC_NUMBER', 'load']


def _is_tar(data: bytes) -> bool:
  return data[257:262] == b'ustar'


def _read(data: bytes, budget: Budget) -> Any:
  if data[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
    tree = load_zip(data, budget)
  elif _is_tar(data):
    raise unreadable(budget.source, 'the tar format of the earliest PyTorch releases is not '
                                    'supported; load and save it again with PyTorch.')
  else:
    tree = load_legacy(data, budget)
  return finish(tree, budget)


def load(data: bytes, source: str, max_bytes: int | None = None) -> Any:
  """The objects of a ``torch.save`` file, without PyTorch: tensors as numpy arrays.

  Args:
    data: the file's bytes (zip format, or the legacy format of PyTorch < 1.6).
    source: the file's name, for messages.
    max_bytes: the most bytes that the file's arrays (and the entries read to make them) may
      take together; by default 4 times the file's size plus 16 MiB (see :mod:`pth_bounds`).
      Raise it only for a file you trust.

  Returns:
    The saved tree (dicts, OrderedDicts, lists, tuples, numbers, strings...) with every tensor
    and ``nn.Parameter`` as a numpy array (see the module docstring for the details).

  Raises:
    CheckpointError: a damaged or truncated file, one that names a global other than those of
      :data:`ALLOWED` (nothing in it is run), sizes, strides or storage keys that do not fit
      the bytes it holds, or arrays beyond the budget (the message names it).
  """
  try:
    return _read(data, Budget(source, len(data), max_bytes))
  except (CheckpointError, MemoryError):
    raise
  except zipfile.BadZipFile as e:
    hint = (' (the file is damaged, or was saved with PyTorch\'s CRC-32 computation turned off)'
            if 'CRC' in str(e) else '')
    raise unreadable(source, f'damaged zip archive: {str(e)[:300]}{hint}.') from e
  except RecursionError as e:
    raise unreadable(source, 'objects nested too deeply.') from e
  except pickle.UnpicklingError as e:
    raise unreadable(source, f'{str(e)[:500]}.') from e
  except Exception as e:  # a damaged pickle raises many types: EOFError, TypeError...
    raise unreadable(source, f'{type(e).__name__}: {str(e)[:300]}') from e
