"""What reading one untrusted ``.pth`` file may cost: its memory :class:`Budget`, and
:func:`brief`, the bounded repr with which its values appear in messages.

The budget: the bytes of arrays that reading a file may allocate, all together, are at most
:data:`BYTES_PER_FILE_BYTE` times the file's size plus :data:`BUDGET_SLACK`, unless the caller
gives its own bound (``max_bytes``) for a file it trusts. A checkpoint that ``torch.save`` wrote
holds each tensor's bytes once, uncompressed, so its arrays come to about its size (twice that
where tensors are views of one storage, as tied weights are); a file that asks for more makes
its arrays from bytes it does not hold: views that repeat a storage (stride 0), the same tensor
rebuilt again and again from the pickle's memo, entries that inflate. Each is charged before it
is allocated, so such a file is refused while the reader has allocated nothing for it.
"""

from __future__ import annotations

from typing import Any, Iterator

from sde_jax.checkpoints.errors import CheckpointError

# A file's arrays may take this many times its size, plus BUDGET_SLACK (for small files with a
# few views that repeat a storage, as ``expand`` makes them).
BYTES_PER_FILE_BYTE = 4
BUDGET_SLACK = 16 << 20
_HOW_TO_RAISE = ('if you trust the file, raise the bound: read_torch(path, max_bytes=N), or '
                 'sde-jax import --max_pth_bytes=N')


def unreadable(source: str, detail: str) -> CheckpointError:
  """The error for the file ``source`` that cannot be read, and why."""
  return CheckpointError(f'cannot read PyTorch checkpoint {source}: {detail}')


class Budget:
  """The bytes that reading one file (``source``, named in messages) may allocate, and those
  charged so far."""

  def __init__(self, source: str, file_size: int, max_bytes: int | None = None):
    self.source = source
    if max_bytes is None:
      self.limit = BYTES_PER_FILE_BYTE * file_size + BUDGET_SLACK
      self.rule = (f'{BYTES_PER_FILE_BYTE} times the file\'s {file_size} bytes plus '
                   f'{BUDGET_SLACK >> 20} MiB')
    else:
      self.limit, self.rule = max_bytes, 'max_bytes'
    self.charged = 0

  def charge(self, nbytes: int, what: str) -> None:
    """Counts ``nbytes`` more, for ``what``; a CheckpointError past the limit."""
    self.charged += nbytes
    if self.charged > self.limit:
      raise unreadable(self.source, f'{what} brings its arrays to {self.charged} bytes, more '
                                    f'than its budget of {self.limit} bytes ({self.rule}); '
                                    f'{_HOW_TO_RAISE}.')


class ShortRepr:
  """Base of the reader's objects whose repr is short whatever the file holds."""
  __slots__ = ()


def brief(x: Any, limit: int = 80) -> str:
  """``repr(x)`` cut to ``limit`` characters, for a value of a file in a message.

  Built piece by piece, and only as far as it is shown: a value of the file may be a string of
  megabytes, an int of a million digits, or tuples that hold one another through the pickle's
  memo (``2**n`` items from ``n`` opcodes), whose whole repr would take minutes and gigabytes.
  """
  text = ''
  for piece in _pieces(x):
    text += piece
    if len(text) > limit:
      return text[:limit - 3] + '...'
  return text


_BRACKETS = {list: '[]', tuple: '()', set: '{}', frozenset: '{}'}


def _pieces(x: Any) -> Iterator[str]:
  """The repr of ``x``, lazily: each container yields its opening bracket before its items."""
  if isinstance(x, (str, bytes, bytearray)):
    yield repr(x[:100]) + ('...' if len(x) > 100 else '')
  elif isinstance(x, int) and x.bit_length() > 128:
    yield f'<int of {x.bit_length()} bits>'
  elif isinstance(x, dict):
    yield '{'
    for i, (key, value) in enumerate(x.items()):
      yield ', ' if i else ''
      yield from _pieces(key)
      yield ': '
      yield from _pieces(value)
    yield '}'
  elif isinstance(x, (list, tuple, set, frozenset)):
    brackets = next(b for kind, b in _BRACKETS.items() if isinstance(x, kind))
    yield brackets[0]
    for i, item in enumerate(x):
      yield ', ' if i else ''
      yield from _pieces(item)
    yield ',' + brackets[1] if isinstance(x, tuple) and len(x) == 1 else brackets[1]
  elif isinstance(x, (int, float, complex, type(None), ShortRepr)):
    yield repr(x)
  else:
    yield f'<{type(x).__name__}>'
