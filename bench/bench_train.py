"""Benchmark of the training step: images/s and peak memory for the CIFAR-10 configs.

Runs the trainer's own compiled step (``train.compile_train_step``: sharded state, donated
buffers, ``n_jitted_steps`` optimizer steps per call) on random images of the config's shape, at
a stated global batch over all local devices. Reports

* images/s: median over timed calls after two warm-up calls;
* compile seconds of the step;
* peak memory: the device allocator's ``peak_bytes_in_use`` where the backend reports it (GPU,
  TPU), and XLA's own accounting of the compiled step (arguments + outputs + temporaries - aliased
  donations) on every backend, so CPU runs report a figure too.

Prints a markdown table for docs/benchmarks.md:

  python bench/bench_train.py --batch 128 --n_jitted_steps 5 [--configs ve/cifar10_ncsnpp_continuous.py ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from bench_models import load_config  # this folder is on sys.path when run as a script
from sde_jax import checkpoints, parallel, train
from sde_jax.score_model import ScoreModel

CONFIGS = ('ve/cifar10_ncsnpp_continuous.py', 'vp/cifar10_ddpmpp_continuous.py',
           'subvp/cifar10_ddpmpp_continuous.py', 've/cifar10_ncsnpp_deep_continuous.py',
           'vp/ddpm/cifar10.py', 've/ncsnv2/cifar10.py')


def gib(n: float | None) -> str:
  return '-' if n is None else f'{n / 2**30:.2f}'


def trainer_step(config):
  """The trainer's pieces for ``config`` over all devices (mesh of ``parallel.fsdp``): mesh, score
  model, state initializer, abstract state, its shardings and the compiled (donating) step."""
  mesh = parallel.make_mesh(config.parallel.fsdp)
  parallel.check_batch_size(config.training.batch_size, mesh)
  job = ScoreModel.from_config(config)
  optimizer = train.make_optimizer(config.optim)
  init = train.state_initializer(job.model, optimizer, job.image_shape)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = parallel.param_shardings(mesh, abstract, config.parallel.fsdp_min_size)
  step = train.compile_train_step(
      train.make_train_step(job.loss_fn(config, train=True), optimizer,
                            float(config.model.ema_rate), train.learning_rate_schedule(config.optim),
                            unroll=mesh.devices.flat[0].platform == 'cpu'), shardings, mesh)
  return mesh, job, init, abstract, shardings, step


def bench_config(relative: str, batch: int, n_jitted_steps: int, calls: int) -> dict:
  config = load_config(relative)
  config.training.batch_size = batch
  config.training.n_jitted_steps = n_jitted_steps
  mesh, job, init, abstract, shardings, step = trainer_step(config)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  images = np.random.default_rng(0).uniform(
      size=(n_jitted_steps, batch, *job.image_shape)).astype(np.float32)
  batches = jax.device_put(images, parallel.steps_sharding(mesh))

  start = time.perf_counter()
  compiled = step.lower(state, batches).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  xla_bytes = None
  if analysis is not None:
    xla_bytes = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                 + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)

  for _ in range(2):
    state, metrics = compiled(state, batches)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    state, metrics = compiled(state, batches)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  if not np.all(np.isfinite(np.asarray(metrics['loss']))):
    raise FloatingPointError(f'{relative}: non-finite loss in the benchmark.')
  stats = jax.local_devices()[0].memory_stats() or {}
  count = checkpoints.num_params(state.params)
  return {'config': relative, 'params_m': count / 1e6, 'compile_s': compile_s,
          'images_per_s': batch * n_jitted_steps / statistics.median(times),
          'peak_device': stats.get('peak_bytes_in_use'), 'xla_bytes': xla_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=CONFIGS)
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--n_jitted_steps', type=int, default=1)
  parser.add_argument('--calls', type=int, default=5, help='timed calls per config')
  args = parser.parse_args()
  devices = jax.devices()
  print(f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), '
        f'{platform.processor() or platform.machine()}, jax {jax.__version__}; global batch '
        f'{args.batch}, n_jitted_steps {args.n_jitted_steps}\n')
  print('| config | params (M) | compile (s) | images/s | peak device memory (GiB) | '
        'XLA step memory (GiB) |')
  print('|---|---:|---:|---:|---:|---:|')
  for relative in args.configs:
    r = bench_config(relative, args.batch, args.n_jitted_steps, args.calls)
    print(f"| {r['config']} | {r['params_m']:.1f} | {r['compile_s']:.0f} | "
          f"{r['images_per_s']:.1f} | {gib(r['peak_device'])} | {gib(r['xla_bytes'])} |",
          flush=True)


if __name__ == '__main__':
  main()
