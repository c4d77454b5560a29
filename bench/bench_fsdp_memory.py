"""Benchmark of FSDP: per-device memory of parameters and optimizer state, fsdp = 1, 2, 4, 8.

Compiles the trainer's own step (``train.compile_train_step``: the state sharded by
``parallel.param_shardings``, donated) for a config at each ``parallel.fsdp`` over all devices
(on CPU: ``--devices`` fake XLA devices, set before JAX starts), from abstract arrays only (no
state is allocated), and reads XLA's memory analysis of the compiled step, which is per device:

* arguments: the train state (parameters, their EMA, Adam's moments, step, key) plus this
  device's slice of the batch (the same at every fsdp);
* state: arguments minus the batch slice; also summed from the shardings' shard shapes, as a
  check of XLA's figure;
* outputs (the new state, aliased onto the donated arguments, plus the metrics) and
  temporaries (activations, gradients, gathered parameters).

Prints progress lines, then a markdown table for docs/benchmarks.md:

  python bench/bench_fsdp_memory.py --config vp/cifar10_ddpmpp_continuous.py --batch 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='vp/cifar10_ddpmpp_continuous.py',
                      help='config under configs/ (default: %(default)s)')
  parser.add_argument('--batch', type=int, default=8, help='global batch (default: %(default)s)')
  parser.add_argument('--fsdp', type=int, nargs='+', default=[1, 2, 4, 8],
                      help='fsdp sizes to compile (default: %(default)s)')
  parser.add_argument('--devices', type=int, default=8,
                      help='fake CPU devices when JAX runs on CPU (default: %(default)s)')
  return parser.parse_args(argv)


ARGS = _parse() if __name__ == '__main__' else None
if ARGS is not None:  # before JAX starts: the fake devices, and fast (unoptimised) CPU codegen,
  # which changes no buffer sizes
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_'
                             f'device_count={ARGS.devices} --xla_backend_optimization_level=0')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_models import load_config  # noqa: E402  (this folder is on sys.path as a script)
from bench_train import trainer_step  # noqa: E402
from sde_jax import parallel  # noqa: E402


def mib(n: float) -> str:
  return f'{n / 2**20:.1f}'


def shard_bytes(abstract, shardings) -> int:
  """Bytes of one device's shards of ``abstract`` placed by ``shardings``."""
  return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize for a, s in zip(
      jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings)))


def measure(config, fsdp: int, batch: int) -> dict:
  """Compiles the train step at ``fsdp`` and returns its per-device memory figures (bytes)."""
  config.parallel.fsdp = fsdp
  config.training.batch_size, config.training.n_jitted_steps = batch, 1
  mesh, job, _, abstract, shardings, step = trainer_step(config)
  batches = jax.ShapeDtypeStruct((1, batch, *job.image_shape), np.float32,
                                 sharding=parallel.steps_sharding(mesh))
  start = time.perf_counter()
  analysis = step.lower(parallel.with_shardings(abstract, shardings), batches).compile(
  ).memory_analysis()
  batch_bytes = batch // mesh.size * int(np.prod(job.image_shape)) * 4
  leaves = jax.tree_util.tree_leaves(abstract.params)
  split = [a for a, s in zip(leaves, jax.tree_util.tree_leaves(shardings.params))
           if s.shard_shape(a.shape) != a.shape]
  return {'fsdp': fsdp, 'compile_s': time.perf_counter() - start,
          'arguments': analysis.argument_size_in_bytes,
          'state': analysis.argument_size_in_bytes - batch_bytes,
          'state_from_shardings': shard_bytes(abstract, shardings),
          'outputs': analysis.output_size_in_bytes, 'alias': analysis.alias_size_in_bytes,
          'temp': analysis.temp_size_in_bytes, 'leaves': len(leaves), 'split': len(split),
          'split_values': sum(a.size for a in split) / sum(a.size for a in leaves)}


def main() -> None:
  args = ARGS
  config = load_config(args.config)
  devices = jax.devices()
  print(f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), jax '
        f'{jax.__version__}; {args.config}, global batch {args.batch}, one step per call, '
        f'fsdp_min_size {config.parallel.fsdp_min_size}', file=sys.stderr, flush=True)
  rows = []
  for fsdp in args.fsdp:
    print(f'compiling the train step at fsdp={fsdp} ...', file=sys.stderr, flush=True)
    r = measure(config, fsdp, args.batch)
    print(f'  fsdp={fsdp}: state {mib(r["state"])} MiB per device, compiled in '
          f'{r["compile_s"]:.0f} s', file=sys.stderr, flush=True)
    rows.append(r)
  base = rows[0]['state']
  print(f'\n{args.config}, global batch {args.batch}, {len(devices)} {devices[0].platform} '
        f'devices; per device, MiB\n')
  print('| fsdp | state (arguments - batch) | state from shard shapes | vs first row | '
        'arguments | outputs (aliased) | temporaries | arrays split | values split |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['fsdp']} | {mib(r['state'])} | {mib(r['state_from_shardings'])} | "
          f"{r['state'] / base:.3f} | {mib(r['arguments'])} | {mib(r['outputs'])} "
          f"({mib(r['alias'])}) | {mib(r['temp'])} | {r['split']} of {r['leaves']} | "
          f"{r['split_values']:.2%} |", flush=True)


if __name__ == '__main__':
  main()
