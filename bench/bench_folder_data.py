"""Speed of the folder pipeline (``data.dataset='folder'``): the header scan and the train stream.

Writes ``--count`` random PNG (or JPEG) images of ``--source-size`` px into a temporary folder
(ten class folders), then measures :func:`sde_jax.data.scan_folder` (files/s) and the train
stream of ``get_dataset`` at ``--image-size`` with flips (images/s, after a first batch that
builds the pipeline). Prints one markdown table row.

  python bench/bench_folder_data.py --count 5000 --source-size 64 --image-size 32
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import ml_collections
import numpy as np
from PIL import Image

from sde_jax import data
from sde_jax.data import folder_source


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--count', type=int, default=5000)
  parser.add_argument('--source-size', type=int, default=64)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--format', choices=('png', 'jpg'), default='png')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=40)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as root:
    for i in range(args.count):
      folder = os.path.join(root, f'class_{i % 10}')
      os.makedirs(folder, exist_ok=True)
      pixels = rng.integers(0, 256, (args.source_size, args.source_size, 3), np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f'{i}.{args.format}'))
    start = time.perf_counter()
    scan = folder_source.scan_folder(root)
    scan_s = time.perf_counter() - start
    config = ml_collections.ConfigDict({'seed': 0, 'data': {
        'dataset': 'folder', 'path': root, 'image_size': args.image_size, 'num_channels': 3,
        'random_flip': True, 'uniform_dequantization': False}})
    stream = data.get_dataset(config, 'train', batch_size=args.batch_size)
    next(stream)
    start = time.perf_counter()
    for _ in range(args.batches):
      next(stream)
    images_per_s = args.batches * args.batch_size / (time.perf_counter() - start)
  print('| files | format | source px | image_size | scan files/s | train images/s | CPUs |')
  print('|---|---|---|---|---|---|---|')
  print(f'| {len(scan.images)} | {args.format} | {args.source_size} | {args.image_size} | '
        f'{len(scan.images) / scan_s:,.0f} | {images_per_s:,.0f} | {os.cpu_count()} '
        f'({platform.processor() or platform.machine()}) |')


if __name__ == '__main__':
  main()
