"""Benchmark of the score networks: parameters, compile time, forward and forward+backward speed.

For each config, the network of ``get_model(config)`` at its full size runs under ``jax.jit`` on
a batch of the config's image shape (train=False for the forward pass; the backward pass is the
gradient of ``mean(out^2)`` with dropout on, i.e. the cost of one training step's network part).
With ``--original PATH`` (a checkout of score_sde_pytorch) the same config's original PyTorch
network is timed on the same machine for comparison (forward under ``torch.no_grad``, and
forward+backward). Prints a markdown table for docs/benchmarks.md.

  python bench/bench_models.py --batch 8 [--original /path/to/score_sde_pytorch]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import checkpoints, models
from sde_jax.checkpoints import param_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ('ve/cifar10_ncsnpp_continuous.py', 'vp/cifar10_ddpmpp_continuous.py',
           'vp/ddpm/cifar10.py', 've/ncsnv2/cifar10.py')


def load_config(relative: str):
  spec = importlib.util.spec_from_file_location('config', ROOT / 'configs' / relative)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _parse(text: str, current, name: str):
  """``text`` as a value of ``current``'s type (the rule of ``--config.a.b=v`` flags)."""
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'--set {name}={text}: expected a bool (true / false).')
    return text.lower() in ('true', '1')
  if isinstance(current, (int, float)):
    try:
      return type(current)(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
      raise ValueError(f'--set {name}={text}: expected a {type(current).__name__}.') from None
  if isinstance(current, (tuple, list)):
    return tuple(ast.literal_eval(text))
  return text  # strings and placeholders


def apply_sets(config, items) -> list[str]:
  """Applies ``FIELD=VALUE`` overrides (``model.dtype=bfloat16``) to ``config``, each value
  parsed as the field's current type; returns them for the report.

  Raises:
    ValueError: for an item without ``=`` or a field the config does not have (its section's
      fields are listed).
  """
  for item in items:
    name, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--set {item!r}: expected FIELD=VALUE, e.g. model.dtype=bfloat16.')
    *sections, field = name.split('.')
    node = config
    for i, section in enumerate(sections):
      if section not in node:
        raise ValueError(f'--set {name}: the config has no section {".".join(sections[:i + 1])!r}.')
      node = node[section]
    if field not in node:
      raise ValueError(f'--set {name}: no field {field!r} there; fields: {sorted(node)}.')
    node[field] = _parse(text, node[field], name)
  return list(items)


def timed(fn, repeats: int) -> float:
  """Median seconds per call of ``fn()`` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def labels_for(config, batch: int) -> np.ndarray:
  """Labels of the kind the score function feeds this network (noise level or index)."""
  if config.model.name == 'ncsnpp' and config.model.embedding_type == 'fourier':
    return np.full((batch,), 1.0, np.float32)
  return np.full((batch,), 10, np.int32 if config.model.name.startswith('ncsn') else np.float32)


def bench_ours(config, batch: int, repeats: int) -> dict:
  model = models.get_model(config)
  shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
  template, _ = param_template(model, shape)
  count = checkpoints.num_params(template)
  params = models.init_params(model, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), shape)
  labels = jnp.asarray(labels_for(config, batch))
  forward = jax.jit(lambda p, x, y: model.apply({'params': p}, x, y, train=False))
  loss = lambda p, x, y, k: jnp.mean(  # noqa: E731
      model.apply({'params': p}, x, y, train=True, rngs={'dropout': k}) ** 2)
  backward = jax.jit(jax.grad(loss))
  start = time.perf_counter()
  forward(params, x, labels).block_until_ready()
  compile_fwd = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(backward(params, x, labels, jax.random.key(2)))
  compile_bwd = time.perf_counter() - start
  fwd = timed(lambda: forward(params, x, labels).block_until_ready(), repeats)
  bwd = timed(lambda: jax.block_until_ready(backward(params, x, labels, jax.random.key(2))),
              repeats)
  return dict(params=count, compile_fwd=compile_fwd, compile_bwd=compile_bwd, fwd=fwd, bwd=bwd)


def bench_original(root: pathlib.Path, relative: str, batch: int, repeats: int) -> dict:
  """The original PyTorch network of the same config (weights as initialised)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT / 'tools'))
  import make_torch_fixtures as tools  # pylint: disable=g-import-not-at-top
  orig = tools.import_original(root)
  config = tools.load_config(root, relative)
  with tools.patch_ncsn_family(orig, config):  # the published NCSNv2 does not build as is
    model = orig.utils.get_model(config.model.name)(config)
  x = torch.randn(batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  labels = torch.as_tensor(labels_for(config, batch))

  def forward():
    with torch.no_grad():
      model.eval()
      model(x, labels)

  def backward():
    model.train()
    model.zero_grad()
    (model(x, labels) ** 2).mean().backward()

  forward()
  backward()
  return dict(fwd=timed(forward, repeats), bwd=timed(backward, repeats))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--configs', nargs='*', default=list(CONFIGS))
  parser.add_argument('--original', type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  print(f'jax {jax.__version__}, devices {jax.devices()}, batch {args.batch}\n')
  header = ('| config | params | compile fwd / bwd (s) | fwd img/s | fwd+bwd img/s |'
            + (' original fwd img/s | original fwd+bwd img/s |' if args.original else ''))
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  for relative in args.configs:
    r = bench_ours(load_config(relative), args.batch, args.repeats)
    row = (f'| {relative} | {r["params"] / 1e6:.2f}M | {r["compile_fwd"]:.1f} / '
           f'{r["compile_bwd"]:.1f} | {args.batch / r["fwd"]:.1f} | {args.batch / r["bwd"]:.1f} |')
    if args.original:
      o = bench_original(args.original, relative, args.batch, args.repeats)
      row += f' {args.batch / o["fwd"]:.1f} | {args.batch / o["bwd"]:.1f} |'
    print(row, flush=True)


if __name__ == '__main__':
  main()
