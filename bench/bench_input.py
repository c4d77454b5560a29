"""Speed of the training input: the host pipeline and the prefetched global batches.

For CIFAR-10-shaped data (32x32x3, random flips, the CIFAR-10 config's pipeline), read either
from a TFRecords file of random images written first (``--source tfrecord``: the
FFHQ / CelebA-HQ reader, records of raw uint8 bytes, so the figure is tf.data's own; the old,
not elastic, path), the same records converted to ArrayRecord (``--source arrayrecord``: the
elastic Grain path, ``sde-jax convert-arrayrecord``), both (``--source both``, the default) or under
``tfds.testing.mock_data`` (``--source mock``: the TFDS path, but the mock makes every example
in Python, which bounds the rate below the real pipeline's), measures the images/s of

* the host pipeline, ``data.get_dataset(config, 'train', batch_size)``: uint8 decode, flips,
  scaling, batching, as numpy batches;
* what the training loop consumes: ``global_batches.stacked_batches`` (global device arrays
  built with ``jax.make_array_from_process_local_data``) through ``global_batches.Prefetch``.

Both after a first batch that builds the pipeline. Prints one markdown table row per stage; the
GPU step to compare with is bench_train's images/s.

  python bench/bench_input.py --batch 128 --batches 200 [--config vp/cifar10_ddpmpp_continuous.py]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np

from bench_models import load_config  # this folder is on sys.path when run as a script
from sde_jax import data, parallel
from sde_jax.data import global_batches
from sde_jax.jobs import convert_arrayrecord


def rate(iterator, batches: int, batch: int) -> float:
  """Images/s of ``batches`` items of ``iterator`` after its first one."""
  jax.block_until_ready(next(iterator))
  start = time.perf_counter()
  for _ in range(batches):
    item = next(iterator)
  jax.block_until_ready(item)
  return batches * batch / (time.perf_counter() - start)


def write_records(path: str, count: int, size: int = 32) -> None:
  """``count`` random uint8 images in the progressive-GAN record format ('shape' C, H, W)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gen = np.random.default_rng(0)
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(count):
      chw = gen.integers(0, 256, (3, size, size), dtype=np.uint8)
      feature = {'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
                 'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())


def measure(config, args, mesh, path: str) -> None:
  host = data.get_dataset(config, 'train', batch_size=args.batch, seed=0)
  print(f'| {path} | host pipeline (numpy batches) | {rate(host, args.batches, args.batch):.0f} |',
        flush=True)
  stacked = global_batches.Prefetch(global_batches.stacked_batches(
      config, args.batch // jax.process_count(), 1, 0, mesh))
  try:
    print(f'| {path} | global batches on the devices, prefetched | '
          f'{rate(stacked, args.batches, args.batch):.0f} |', flush=True)
  finally:
    stacked.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='vp/cifar10_ddpmpp_continuous.py')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--source', choices=('tfrecord', 'arrayrecord', 'both', 'mock'),
                      default='both')
  parser.add_argument('--examples', type=int, default=20000)
  args = parser.parse_args()
  config = load_config(args.config)
  mesh = parallel.make_mesh()
  print(f'{args.config}, {args.source} source, batch {args.batch}, {jax.device_count()} x '
        f'{jax.devices()[0].device_kind}, {platform.processor() or platform.machine()}\n')
  print('| path | stage | images/s |')
  print('|---|---|---:|')
  if args.source == 'mock':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    with tfds.testing.mock_data(num_examples=args.examples):
      measure(config, args, mesh, 'TFDS mock')
    return
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'cifar_shaped.tfrecords')
    write_records(path, args.examples)
    if args.source in ('tfrecord', 'both'):
      config.data.update(dataset='FFHQ', tfrecords_path=path)
      measure(config, args, mesh, 'TFRecord, tf.data (not elastic)')
    if args.source in ('arrayrecord', 'both'):
      (converted,) = convert_arrayrecord.convert_records(path, os.path.join(folder, 'ar'))
      config.data.update(dataset='FFHQ', tfrecords_path=converted)
      measure(config, args, mesh, 'ArrayRecord, Grain (elastic)')


if __name__ == '__main__':
  main()
