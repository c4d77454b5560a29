"""Write small checkpoints of the original PyTorch networks (score_sde_pytorch) as test fixtures.

Builds a network of the original code from one of its config files (shrunk with ``--set``),
perturbs its weights, and saves

* ``NAME.pth``: what the original ``save_checkpoint`` writes: ``{'optimizer', 'model' (state dict
  of the DataParallel-wrapped network, keys prefixed 'module.'), 'ema' ({'decay', 'num_updates',
  'shadow_params'}), 'step'}``; the EMA weights differ from the model weights;
* ``NAME.npz``: ``x_nchw``, ``t``, ``labels`` (what the original score function feeds the network
  at time ``t``) and ``model_out_nchw``, the network output with the EMA weights;
* ``NAME.json``: the full config, ``sde``, ``continuous``, ``step``, the overrides and the
  compatibility patches applied to the original code.

Usage::

  python tools/make_torch_fixtures.py --original /path/to/score_sde_pytorch \\
      --config vp/ddpm/cifar10.py --set model.nf=32 --set data.image_size=16 \\
      --name ddpm_tiny --out tests/data

The original repository needs no CUDA: its compiled ``op`` package is replaced by a pure-PyTorch
``upfirdn2d``. Its NCSN and NCSNv2 networks do not build or run as published; the smallest fixes
that make them run are applied (see :func:`patch_ncsn_family`) and listed in the JSON file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import json
import pathlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

NCSN_FAMILY = ('ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256')


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad=(0, 0)) -> torch.Tensor:
  """Upsample (zero insertion), pad, FIR-filter, downsample an NCHW batch (pure PyTorch).

  The same function as the original's compiled op: ``pad[0]`` / ``pad[1]`` samples are added
  before / after each spatial axis (negative values crop), and the filter is applied as a true
  convolution (flipped kernel).
  """
  b, c, h, w = x.shape
  if up > 1:
    spread = x.new_zeros(b, c, h * up, w * up)
    spread[:, :, ::up, ::up] = x
    x = spread
  lo, hi = pad
  x = F.pad(x, [max(lo, 0), max(hi, 0), max(lo, 0), max(hi, 0)])
  x = x[:, :, max(-lo, 0):x.shape[2] - max(-hi, 0), max(-lo, 0):x.shape[3] - max(-hi, 0)]
  k = torch.flip(kernel.to(x), [0, 1])
  x = F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)
  return x[:, :, ::down, ::down]


def import_original(root: pathlib.Path) -> types.SimpleNamespace:
  """Imports the original ``models`` package (all its networks registered) from ``root``."""
  op = types.ModuleType('op')
  op.upfirdn2d = upfirdn2d
  sys.modules['op'] = op
  # A package object for the original's configs, so that ``from configs.default_... import``
  # inside its config files resolves there whatever else is called ``configs`` on sys.path.
  configs = types.ModuleType('configs')
  configs.__path__ = [str(root / 'configs')]
  sys.modules['configs'] = configs
  sys.path.insert(0, str(root))
  names = ('layers', 'normalization', 'utils', 'ddpm', 'ncsnv2', 'ncsnpp', 'ema')
  return types.SimpleNamespace(**{n: importlib.import_module(f'models.{n}') for n in names})


def load_config(root: pathlib.Path, relative_path: str):
  """``get_config()`` of ``root/configs/relative_path``."""
  path = root / 'configs' / relative_path
  spec = importlib.util.spec_from_file_location('original_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_overrides(config, overrides: list[str]) -> None:
  """Applies ``section.field=value`` strings (Python literals, else plain strings)."""
  for item in overrides:
    dotted, _, text = item.partition('=')
    *sections, field = dotted.split('.')
    node = config
    for section in sections:
      node = getattr(node, section)
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    setattr(node, field, value)


@contextlib.contextmanager
def patch_ncsn_family(orig, config):
  """Fixes that the original NCSN / NCSNv2 code needs to build and run, undone on exit.

  Yields the list of notes describing them. Only construction needs them; ``data.channels``
  is added to ``config`` for good.
  """
  notes = []
  if 'channels' not in config.data:
    config.data.channels = config.data.num_channels
    notes.append('data.channels = data.num_channels (the networks read data.channels, which no '
                 'config defines)')

  def ncsn_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.,
                   padding=None):
    conv = torch.nn.Conv2d(in_planes, out_planes, 3, stride=stride, bias=bias, dilation=dilation,
                           padding=dilation if padding is None else padding)
    init_scale = 1e-10 if init_scale == 0 else init_scale
    conv.weight.data *= init_scale
    if bias:
      conv.bias.data *= init_scale
    return conv

  saved = (orig.layers.ncsn_conv3x3, orig.ncsnv2.get_normalization,
           orig.layers.ConditionalResidualBlock.__init__.__defaults__)
  orig.layers.ncsn_conv3x3 = ncsn_conv3x3
  notes.append('layers.ncsn_conv3x3 pads by `dilation` (the original pads by 1, so dilated '
               'convolutions shrink the maps and the residual sums fail) and accepts '
               'bias=False (the original scales the missing bias)')
  if config.model.name == 'ncsn':
    norm = orig.normalization.ConditionalInstanceNorm2dPlus
    orig.ncsnv2.get_normalization = lambda config, conditional=False: norm
    notes.append('NCSN uses ConditionalInstanceNorm2dPlus(C, num_scales) (the original passes '
                 'the unconditional InstanceNorm2dPlus, which cannot take the labels)')
    init = orig.layers.ConditionalResidualBlock.__init__
    init.__defaults__ = init.__defaults__[:-1] + (1,)
    notes.append('ConditionalResidualBlock: dilation defaults to 1 (the original default None '
                 'fails in `dilation > 1`)')
  try:
    yield notes
  finally:
    orig.layers.ncsn_conv3x3, orig.ncsnv2.get_normalization = saved[:2]
    orig.layers.ConditionalResidualBlock.__init__.__defaults__ = saved[2]


def perturb_(tensors, generator: torch.Generator, std: float) -> None:
  """Adds N(0, std^2) noise to each tensor in place."""
  with torch.no_grad():
    for t in tensors:
      t.add_(std * torch.randn(t.shape, generator=generator, dtype=t.dtype))


def network_labels(config, t: torch.Tensor) -> torch.Tensor:
  """The labels the original score function feeds the network at time ``t``."""
  sde, n = config.training.sde.lower(), config.model.num_scales
  if sde == 'vesde':
    if config.training.continuous:
      m = config.model
      return m.sigma_min * (m.sigma_max / m.sigma_min) ** t
    return torch.round((1.0 - t) * (n - 1)).long()
  if config.training.continuous or sde == 'subvpsde':
    return t * 999
  return t * (n - 1)


def build(orig, config, seed: int, std: float):
  """The original network with perturbed weights, its EMA (other weights) and optimizer."""
  torch.manual_seed(seed)
  model = torch.nn.DataParallel(orig.utils.get_model(config.model.name)(config))
  generator = torch.Generator().manual_seed(seed)
  trainable = [p for p in model.parameters() if p.requires_grad]
  perturb_(trainable, generator, std)
  ema = orig.ema.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  perturb_(ema.shadow_params, generator, std)
  o = config.optim
  optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps,
                               weight_decay=o.weight_decay)
  return model, ema, optimizer


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  return str(value)


def make_fixture(root: pathlib.Path, config_path: str, overrides: list[str], name: str,
                 out: pathlib.Path, seed: int = 0, std: float = 0.05, batch: int = 3,
                 step: int = 1) -> dict:
  """Writes ``out/name.{pth,npz,json}``; returns the JSON record."""
  orig = import_original(root)
  config = load_config(root, config_path)
  config.device = torch.device('cpu')
  apply_overrides(config, overrides)
  with contextlib.ExitStack() as stack:
    notes = []
    if config.model.name in NCSN_FAMILY:
      notes = stack.enter_context(patch_ncsn_family(orig, config))
    model, ema, optimizer = build(orig, config, seed, std)
  ema.num_updates = step

  generator = torch.Generator().manual_seed(seed + 1)
  size, channels = config.data.image_size, config.data.num_channels
  x = torch.rand(batch, channels, size, size, generator=generator)
  if config.data.centered:
    x = 2 * x - 1
  t = 1e-3 + (1 - 1e-3) * torch.rand(batch, generator=generator)
  labels = network_labels(config, t)
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  model.eval()
  with torch.no_grad():
    model_out = model(x, labels)
  ema.restore(model.parameters())

  out.mkdir(parents=True, exist_ok=True)
  torch.save({'optimizer': optimizer.state_dict(), 'model': model.state_dict(),
              'ema': ema.state_dict(), 'step': step}, out / f'{name}.pth')
  np.savez(out / f'{name}.npz', x_nchw=x.numpy(), t=t.numpy(), labels=labels.numpy(),
           model_out_nchw=model_out.float().numpy())
  record = {'config': _jsonable(config.to_dict()), 'sde': config.training.sde,
            'continuous': bool(config.training.continuous), 'step': step,
            'original_config': config_path, 'overrides': overrides, 'patches': notes,
            'seed': seed, 'std': std}
  (out / f'{name}.json').write_text(json.dumps(record, indent=1) + '\n')
  return record


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--original', required=True, type=pathlib.Path,
                      help='root of a score_sde_pytorch checkout')
  parser.add_argument('--config', required=True, help='config path relative to its configs/')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override, e.g. model.nf=16 (repeatable)')
  parser.add_argument('--name', help='file stem (default: the config path with _ for /)')
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('tests/data'))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--std', type=float, default=0.05, help='std of the weight perturbation')
  parser.add_argument('--batch', type=int, default=3)
  parser.add_argument('--step', type=int, default=1)
  args = parser.parse_args(argv)
  name = args.name or args.config.removesuffix('.py').replace('/', '_')
  make_fixture(args.original.resolve(), args.config, args.set, name, args.out, args.seed,
               args.std, args.batch, args.step)
  for suffix in ('pth', 'npz', 'json'):
    path = args.out / f'{name}.{suffix}'
    print(f'{path}: {path.stat().st_size} bytes')


if __name__ == '__main__':
  main()
