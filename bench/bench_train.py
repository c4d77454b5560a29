"""Benchmark of the training step: images/s, FLOPs, MFU and memory for any config.

Runs the trainer's own compiled step (``train.compile_train_step``: sharded state, donated
buffers, ``n_jitted_steps`` optimizer steps per call) on random images of the config's shape, at
a stated global batch over all local devices. Reports

* images/s: median over timed calls after two warm-up calls;
* compile seconds of the step;
* FLOPs per image: XLA's cost analysis of the compiled step divided by the images it trains
  on; with a device of known peak (:data:`PEAK_TFLOPS`) the model FLOPs utilisation,
  ``flops_per_image * images_per_s / (devices * peak)``, against the dense bf16 peak whatever
  ``model.dtype`` is (the convention of MFU figures). A scan that stays a loop (GPU, TPU with
  ``n_jitted_steps > 1``) is costed by XLA as one trip, so FLOPs are reported only for
  ``n_jitted_steps = 1`` or an unrolled (CPU) step;
* backward residuals: what the loss's forward pass keeps for its backward pass
  (:func:`residual_bytes`), the memory that ``model.remat`` trades for recomputation;
* memory: the device allocator's ``peak_bytes_in_use`` where the backend reports it (GPU,
  TPU), and XLA's own accounting of the compiled step (arguments + outputs + temporaries - aliased
  donations) on every backend, so CPU runs report a figure too.

Any config field can be set for the run, e.g. mixed precision and rematerialisation:

  python bench/bench_train.py --batch 128 --configs vp/cifar10_ddpmpp_continuous.py \
      --set model.dtype=bfloat16 --set model.remat=True [--json] [--memory_only]

Prints a markdown table for docs/benchmarks.md, or with ``--json`` one JSON object per config.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

from bench_models import apply_sets, load_config  # this folder is on sys.path as a script
from sde_jax import checkpoints, parallel, train
from sde_jax.score_model import ScoreModel

CONFIGS = ('ve/cifar10_ncsnpp_continuous.py', 'vp/cifar10_ddpmpp_continuous.py',
           'subvp/cifar10_ddpmpp_continuous.py', 've/cifar10_ncsnpp_deep_continuous.py',
           'vp/ddpm/cifar10.py', 've/ncsnv2/cifar10.py')

# Dense bf16 peak TFLOP/s per chip, by a substring of ``device_kind`` (first match wins).
PEAK_TFLOPS = (('H200', 989.0), ('H100', 989.0), ('A100', 312.0), ('TPU v4', 275.0),
               ('TPU v5 lite', 197.0), ('TPU v5e', 197.0), ('TPU v5p', 459.0), ('TPU v5', 459.0))


def peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind in :data:`PEAK_TFLOPS`, or None if not listed."""
  return next((peak for name, peak in PEAK_TFLOPS if name.lower() in device_kind.lower()), None)


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


def step_flops(compiled) -> float | None:
  """Total FLOPs of one call of a compiled program by XLA's cost analysis (None if absent)."""
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):  # older JAX: one dict per program
    costs = costs[0] if costs else None
  flops = (costs or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def residual_bytes(job, config, batch: int) -> int:
  """Bytes the forward pass of the loss keeps for the backward pass (per step, whole batch).

  The leaves of ``jax.vjp``'s backward function, found by ``jax.eval_shape`` (nothing is
  computed or compiled): activations, plus the parameters that the backward pass reads. This
  is what remat changes, on any backend; XLA:CPU's scheduler does not turn it into a smaller
  compiled step (jax-ml/jax#19822), a GPU's or TPU's does.
  """
  loss = job.loss_fn(config, train=True)
  images = jax.ShapeDtypeStruct((batch, *job.image_shape), np.float32)
  params = job.abstract_params()

  def backward(p, x):
    return jax.vjp(lambda q: loss(q, jax.random.key(0), x)[0], p)[1]

  tree = jax.eval_shape(backward, params, images)
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def bench_config(relative: str, batch: int, n_jitted_steps: int, calls: int,
                 sets=(), memory_only: bool = False) -> dict:
  config = load_config(relative)
  config.training.batch_size = batch
  config.training.n_jitted_steps = n_jitted_steps
  apply_sets(config, sets)
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
  device = mesh.devices.flat[0]
  flops = step_flops(compiled)
  looped = n_jitted_steps > 1 and device.platform != 'cpu'  # a scan XLA costs as one trip
  flops_per_image = None if flops is None or looped else flops / (batch * n_jitted_steps)
  result = {'config': relative, 'sets': list(sets), 'device': device.device_kind,
            'devices': mesh.devices.size, 'batch': batch, 'n_jitted_steps': n_jitted_steps,
            'params_m': checkpoints.num_params(state.params) / 1e6, 'compile_s': compile_s,
            'xla_bytes': xla_bytes, 'flops_per_image': flops_per_image,
            'residual_bytes': residual_bytes(job, config, batch),
            'images_per_s': None, 'step_s': None, 'mfu': None, 'peak_device': None}
  if memory_only:
    return result

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
  stats = device.memory_stats() or {}
  result['step_s'] = statistics.median(times) / n_jitted_steps
  result['images_per_s'] = batch / result['step_s']
  result['peak_device'] = stats.get('peak_bytes_in_use')
  peak = peak_tflops(device.device_kind)
  if peak and flops_per_image:
    result['mfu'] = flops_per_image * result['images_per_s'] / (mesh.devices.size * peak * 1e12)
  return result


def fmt(value, spec: str) -> str:
  """``value`` formatted by ``spec``, or '-' when it was not measured (None)."""
  return '-' if value is None else format(value, spec)


def markdown_row(r: dict) -> str:
  sets = ', '.join(s.split('.', 1)[-1] for s in r['sets']) or 'defaults'
  gflop = r['flops_per_image'] and r['flops_per_image'] / 1e9
  return (f"| {r['config']} | {sets} | {r['params_m']:.1f} | {r['compile_s']:.0f} | "
          f"{fmt(r['images_per_s'], '.1f')} | {fmt(gflop, '.1f')} | "
          f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')} | {gib(r['peak_device'])} | "
          f"{gib(r['xla_bytes'])} | {gib(r['residual_bytes'])} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=CONFIGS)
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--n_jitted_steps', type=int, default=1)
  parser.add_argument('--calls', type=int, default=5, help='timed calls per config')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override, repeatable (e.g. model.dtype=bfloat16)')
  parser.add_argument('--json', action='store_true', help='one JSON object per config')
  parser.add_argument('--memory_only', action='store_true',
                      help='compile and report memory and FLOPs, do not run')
  args = parser.parse_args()
  for relative in args.configs:  # bad overrides fail before anything compiles
    apply_sets(load_config(relative), args.set)
  devices = jax.devices()
  if not args.json:
    print(f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), '
          f'{platform.processor() or platform.machine()}, jax {jax.__version__}; global batch '
          f'{args.batch}, n_jitted_steps {args.n_jitted_steps}\n')
    print('| config | settings | params (M) | compile (s) | images/s | GFLOP / image | MFU (%) | '
          'peak device memory (GiB) | XLA step memory (GiB) | backward residuals (GiB) |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for relative in args.configs:
    r = bench_config(relative, args.batch, args.n_jitted_steps, args.calls, args.set,
                     args.memory_only)
    print(json.dumps(r) if args.json else markdown_row(r), flush=True)


if __name__ == '__main__':
  main()
