"""What ``torch.load(weights_only=True)`` reads from each test ``.pth`` file, for
tests/test_torch_pickle.py to compare sde-jax's own reader with (the tests need no torch).

Needs torch. Writes, under ``tests/data``:

* ``pth_formats/zip.pth`` and ``pth_formats/legacy.pth``: small files saved by this torch in its
  current (zip) and legacy (``_use_new_zipfile_serialization=False``) formats, holding tensors of
  every common dtype, views (a transpose, a slice at a storage offset, a broadcast), tensors that
  share a storage, 0-d and empty tensors, a parameter, an OrderedDict and nested plain values
  (:func:`format_fixture`);
* for every ``.pth`` under ``tests/data`` (these two included), ``pth_reference/NAME.json.gz``:
  the loaded tree (containers, plain values, and for each tensor its path key, torch dtype,
  shape and the SHA-256 of its C-order bytes), and ``pth_reference/NAME.npz``: tensors under
  their path keys (``model/module.all_modules.0.weight``, list indices as numbers), as numpy
  arrays, of raw bits for dtypes numpy lacks (bfloat16 as uint16, float8 as uint8). The ``.npz``
  holds every tensor of the format fixtures; of other files only those of at most
  ``--max_array_bytes`` (default 0: the model checkpoints' 12 MB of weights are checked by their
  hashes, which keeps the references small). NAME is the file's path under ``tests/data``
  without ``.pth``, ``/`` written ``__``.

Usage::

  python tools/make_pth_reference.py            # both steps
  python tools/make_pth_reference.py --no_formats  # references only, format fixtures kept
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import pathlib

import numpy as np
import torch

DATA = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'data'
FORMATS = DATA / 'pth_formats'
REFERENCE = DATA / 'pth_reference'
# Dtypes numpy lacks, stored as their bits.
_BITS = {torch.bfloat16: (torch.int16, np.uint16), torch.float8_e4m3fn: (torch.uint8, np.uint8),
         torch.float8_e5m2: (torch.uint8, np.uint8)}


def reference_name(path: pathlib.Path) -> str:
  """``pth_formats/zip.pth`` -> ``pth_formats__zip`` (the rule tests/test_torch_pickle.py uses)."""
  return path.relative_to(DATA).with_suffix('').as_posix().replace('/', '__')


def format_fixture(with_new_dtypes: bool) -> dict:
  """Every kind of value the reader must handle; uint16 / float8 only with ``with_new_dtypes``
  (torch's legacy format cannot load them back)."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  floats = torch.tensor([0.0, -0.0, float('inf'), -float('inf'), float('nan'), 1e-40, 3.25])
  tree = {
      'float32': torch.randn(3, 4, generator=g),
      'float32_special': floats,
      'float16': torch.randn(5, generator=g).half(),
      'float16_special': floats.half(),
      'bfloat16': torch.randn(2, 3, generator=g).bfloat16(),
      'float64': torch.randn(2, 2, generator=g, dtype=torch.float64),
      'int64': torch.tensor([-(2**62), -1, 0, 2**62 + 7]),
      'int32': torch.arange(-3, 3, dtype=torch.int32),
      'int16': torch.tensor([-30000, 5], dtype=torch.int16),
      'int8': torch.tensor([-128, 0, 127], dtype=torch.int8),
      'uint8': torch.tensor([0, 1, 255], dtype=torch.uint8),
      'bool': torch.tensor([[True, False], [False, True]]),
      'complex64_conj': torch.tensor([1 + 2j, -3.5 - 4j]).conj(),
      'negative_view': torch.tensor([1.5, -2.0])._neg_view(),
      'base': base,
      'transposed': base.t(),
      'sliced': base[1:, 2:5],
      'rows': [base[0], base[2]],  # two tensors in one storage (that of 'base')
      'expanded': torch.tensor([7.0]).expand(3, 2),
      'scalar': torch.tensor(3.5),
      'scalar_int': torch.tensor(7),
      'empty': torch.zeros(0, 3),
      'empty_int': torch.zeros(2, 0, dtype=torch.int64),
      'parameter': torch.nn.Parameter(torch.randn(2, 2, generator=g)),
      'frozen_parameter': torch.nn.Parameter(torch.ones(3), requires_grad=False),
      'ordered': collections.OrderedDict([('b', torch.arange(3)), ('a', 1)]),
      'nested': [1, 2.5, 'text', None, (True, False, [3, (4.0, 'x', ())]), {'k': [torch.ones(1)]},
                 {0: 'int key', (1, 2): 'tuple key'}, []],
      'plain': {'step': 12, 'decay': 0.999, 'big': 2**70, 'neg': -5, 'complex': 1 - 2j,
                'bytes': b'\x00\xffab', 'set': {1, 2, 3}, 'unicode': 'δ-ε'},
      'torch_values': {'device': torch.device('cuda', 0), 'cpu': torch.device('cpu'),
                       'dtype': torch.float16, 'size': torch.Size([2, 3])},
  }
  if with_new_dtypes:
    tree['uint16'] = torch.tensor([0, 1, 65535], dtype=torch.uint16)
    tree['float8_e4m3fn'] = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    tree['float8_e5m2'] = torch.tensor([0.5, -2.0, 1e4]).to(torch.float8_e5m2)
  assert tree['sliced'].storage_offset() > 0 and not tree['sliced'].is_contiguous()
  assert not tree['transposed'].is_contiguous() and tree['expanded'].stride() == (0, 0)
  rows = tree['rows']
  assert rows[0].untyped_storage().data_ptr() == rows[1].untyped_storage().data_ptr()
  return tree


def write_format_fixtures() -> None:
  FORMATS.mkdir(exist_ok=True)
  torch.save(format_fixture(True), FORMATS / 'zip.pth')
  torch.save(format_fixture(False), FORMATS / 'legacy.pth', _use_new_zipfile_serialization=False)


def _tensor_bits(t: torch.Tensor) -> np.ndarray:
  """The tensor's values as numpy, resolved views, in C order (raw bits for dtypes numpy lacks)."""
  t = t.detach().cpu().resolve_conj().resolve_neg()
  if t.dtype in _BITS:
    view, np_dtype = _BITS[t.dtype]
    return t.view(view).numpy().view(np_dtype).copy(order='C')
  return t.numpy().copy(order='C')


def _leaf(value):
  """The JSON of a plain value."""
  for kind in (bool, int, float, str):
    if type(value) is kind:
      return {kind.__name__: value}
  if value is None:
    return {'none': None}
  if isinstance(value, (bytes, bytearray)):
    return {type(value).__name__: value.hex()}
  if isinstance(value, complex):
    return {'complex': [value.real, value.imag]}
  if isinstance(value, torch.device):
    return {'device': str(value)}
  if isinstance(value, torch.dtype):
    return {'dtype': str(value).removeprefix('torch.')}
  raise TypeError(f'no reference encoding for {type(value).__name__}: {value!r}')


class Encoder:
  """The JSON tree of a loaded object and its tensors by path key."""

  def __init__(self, max_array_bytes: int):
    self.max_array_bytes = max_array_bytes
    self.arrays: dict[str, np.ndarray] = {}

  def tensor(self, t: torch.Tensor, key: str) -> dict:
    bits = _tensor_bits(t)
    if key in self.arrays:
      raise ValueError(f'two tensors with the path key {key!r}')
    node = {'tensor': key, 'dtype': str(t.dtype).removeprefix('torch.'), 'shape': list(t.shape),
            'sha256': hashlib.sha256(bits.tobytes()).hexdigest()}
    if bits.nbytes <= self.max_array_bytes:
      self.arrays[key] = bits
    return node

  def encode(self, value, path: tuple) -> dict:
    key = '/'.join(map(str, path))
    if isinstance(value, torch.Tensor):
      return self.tensor(value, key)
    if isinstance(value, dict):
      items = [[self.encode(k, (*path, '<key>')), self.encode(v, (*path, k))]
               for k, v in value.items()]
      return {type(value).__name__: items}
    if isinstance(value, (list, tuple)):  # torch.Size is a tuple
      kind = 'list' if isinstance(value, list) else 'tuple'
      return {kind: [self.encode(v, (*path, i)) for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
      return {type(value).__name__: [self.encode(v, path) for v in sorted(value, key=repr)]}
    return _leaf(value)


def write_reference(path: pathlib.Path, max_array_bytes: int) -> None:
  tree = torch.load(path, map_location='cpu', weights_only=True)
  encoder = Encoder(max_array_bytes if path.parent != FORMATS else 1 << 62)
  record = {'made_by': 'tools/make_pth_reference.py', 'torch': torch.__version__,
            'file': path.relative_to(DATA).as_posix(), 'tree': encoder.encode(tree, ())}
  REFERENCE.mkdir(exist_ok=True)
  name = reference_name(path)
  text = json.dumps(record, separators=(',', ':')) + '\n'
  (REFERENCE / f'{name}.json.gz').write_bytes(gzip.compress(text.encode(), 9, mtime=0))
  np.savez_compressed(REFERENCE / f'{name}.npz', **encoder.arrays)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--no_formats', action='store_true',
                      help='keep pth_formats/*.pth as they are')
  parser.add_argument('--max_array_bytes', type=int, default=0,
                      help='outside pth_formats/, larger tensors are checked by their hash only')
  args = parser.parse_args(argv)
  if not args.no_formats:
    write_format_fixtures()
  for path in sorted(DATA.rglob('*.pth')):
    write_reference(path, args.max_array_bytes)
    print('wrote', REFERENCE / reference_name(path))


if __name__ == '__main__':
  main()
