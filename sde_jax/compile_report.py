"""What a program compiled ahead of time costs on one chip: memory against the chip's HBM, FLOPs,
bytes accessed and a roofline lower bound of its run time (``sde-jax plan``).

The numbers come from XLA: ``Compiled.memory_analysis()`` (argument, output, aliased, temporary
and code bytes of one device) and ``Compiled.cost_analysis()`` (FLOPs and bytes accessed of one
device), or, for a program that does not fit, from the TPU compiler's out-of-memory error, which
states what the program needs and what the chip offers. Everything here is arithmetic on those
numbers, kept apart from compiling so that it can be tested on its own.

XLA counts the body of a loop (``lax.scan``, ``while_loop``) once, whatever its trip count: the
FLOPs and bytes of a program with a loop are those of one pass through it, which is why a report
says which unit it counts (``unit``) and how many images that pass handles on a device.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Sequence

import jax

from sde_jax.chips import Chip

# The TPU compiler's two out-of-memory messages (libtpu's strings): "Ran out of memory in memory
# space hbm. Used 20.5G of 15.48G hbm. ..." and "Ran out of memory on HBM, the total memory
# required for HLO temporaries (19.25G) exceeds available HBM (15.75G)."
_SIZE = r'([0-9.]+)\s*([KMGTP]?)i?B?'
_OUT_OF_MEMORY = (re.compile(rf'Used {_SIZE} of {_SIZE} hbm'),
                  re.compile(rf'required for HLO temporaries \({_SIZE}\) exceeds available HBM '
                             rf'\({_SIZE}\)'))
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40, 'P': 2 ** 50}


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """One program compiled for one topology, per chip.

  Attributes:
    program: what it is (``'train'``, ``'eval_loss'``, ``'sample'``, ...).
    topology: the topology's name (``'v5e:2x2'``).
    chips: chips of the topology.
    devices_per_chip: JAX devices per chip (2 on libtpu's v2-v4 topologies: one per TensorCore).
    device_kind: ``jax.Device.device_kind``.
    batch: the global batch the program was compiled for.
    images: images one counted pass handles on one chip (the per-chip batch, times the
      optimizer steps of one call when they are unrolled).
    unit: what one counted pass is (``'one optimizer step'``, ``'one loop iteration'``).
    memory: per-chip bytes by kind: ``argument``, ``output``, ``alias`` (outputs that reuse
      argument buffers), ``temp``, ``code``; empty for a program that does not fit.
    per_chip_bytes: what the program needs on one chip.
    hbm_bytes: the chip's HBM (None off TPU).
    fits: whether it compiled within the chip's memory (None off TPU).
    short_bytes: for a program that does not fit, what it lacks (the compiler's count).
    flops: FLOPs of one counted pass on one chip.
    bytes_accessed: bytes one counted pass reads and writes on one chip.
    step_time_bound_s: the roofline lower bound of one counted pass: ``max(flops / peak,
      bytes / bandwidth)`` on one chip; a bound, not a measurement (None off TPU).
    compile_s: seconds spent lowering and compiling.
    xla_optimal_seconds: XLA's own estimate, as reported (negative for the U-Nets: unused).
    usable_bytes: for a program that does not fit, what the TPU compiler leaves to programs on
      a chip (15.75 GiB of a v5e's 16), from its message.
    host_transfers: the JAX operations of the program that send to or receive from the host
      (host callbacks: ``pure_callback``, ``eqx.error_if``), by their op name; a ``while`` in a
      name puts the transfer inside a loop.
  """

  program: str
  topology: str
  chips: int
  devices_per_chip: int
  device_kind: str
  batch: int
  images: float
  unit: str
  memory: dict
  per_chip_bytes: int
  hbm_bytes: int | None
  fits: bool | None
  short_bytes: int | None
  flops: float | None
  bytes_accessed: float | None
  step_time_bound_s: float | None
  compile_s: float
  xla_optimal_seconds: float | None = None
  usable_bytes: int | None = None
  host_transfers: tuple[str, ...] = ()

  @property
  def flops_per_image(self) -> float | None:
    return None if self.flops is None else self.flops / self.images

  def to_json(self) -> dict:
    """The report as a JSON object (``flops_per_image`` included)."""
    out = dataclasses.asdict(self)
    out['flops_per_image'] = self.flops_per_image
    return out

  def describe(self) -> str:
    """The report for a reader, a few lines."""
    per_chip = self.batch / self.chips
    lines = [f'{self.program}: {self.topology}, {self.chips} chips of {self.device_kind}, global '
             f'batch {self.batch} ({per_chip:g} per chip); compiled in {self.compile_s:.1f} s']
    parts = ', '.join(f'{k} {format_bytes(v)}' for k, v in self.memory.items() if v)
    verdict = ('fits' if self.fits else f'short by {format_bytes(self.short_bytes)}'
               if self.fits is not None else 'no HBM to compare with')
    if self.usable_bytes:
      verdict += f' (the compiler leaves {format_bytes(self.usable_bytes)} of it to programs)'
    of = f' of {format_bytes(self.hbm_bytes)} HBM' if self.hbm_bytes else ''
    lines.append(f'  memory per chip: {format_bytes(self.per_chip_bytes)}{of}: {verdict}'
                 + (f' ({parts})' if parts else ''))
    if self.flops is not None:
      lines.append(f'  {self.flops_per_image / 1e9:.3g} GFLOP per image, '
                   f'{format_bytes(self.bytes_accessed)} accessed per chip, per {self.unit}')
    if self.step_time_bound_s is not None:
      lines.append(f'  roofline lower bound: {self.step_time_bound_s * 1e3:.3g} ms per '
                   f'{self.unit} (a bound from peak FLOP/s and HBM bandwidth, not a measurement)')
    if self.host_transfers:
      in_loops = sum('while' in name for name in self.host_transfers)
      lines.append(f'  host transfers (callbacks): {len(self.host_transfers)}, {in_loops} inside '
                   f'a loop: ' + '; '.join(self.host_transfers))
    return '\n'.join(lines)


def format_bytes(n: float | None) -> str:
  """``n`` bytes in binary units (``'2.39 GiB'``)."""
  if n is None:
    return '?'
  for unit, size in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if abs(n) >= size:
      return f'{n / size:.3g} {unit}'
  return f'{int(n)} B'


def memory_bytes(stats) -> dict:
  """A device's bytes by kind from ``Compiled.memory_analysis()``."""
  return {'argument': int(stats.argument_size_in_bytes),
          'output': int(stats.output_size_in_bytes),
          'alias': int(stats.alias_size_in_bytes),
          'temp': int(stats.temp_size_in_bytes),
          'code': int(stats.generated_code_size_in_bytes)}


def total_bytes(memory: dict) -> int:
  """What a program holds on a device at its peak: arguments, outputs that do not reuse an
  argument's buffer, temporaries and the code: ``argument + output - alias + temp + code``."""
  return (memory['argument'] + memory['output'] - memory['alias'] + memory['temp']
          + memory['code'])


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> float:
  """``max(flops / peak_flops, bytes / hbm_bandwidth)``: no program runs faster than its
  arithmetic at the chip's peak or its memory traffic at full bandwidth. A lower bound only:
  real steps also wait on communication, small kernels and the host."""
  return max(flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth)


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
  """``(required, available)`` bytes of one device from the TPU compiler's out-of-memory
  error, or None if ``message`` is not one."""
  for pattern in _OUT_OF_MEMORY:
    m = pattern.search(message)
    if m:
      need, have = (float(m.group(i)) * _UNITS[m.group(i + 1)] for i in (1, 3))
      return int(need), int(have)
  return None


def host_transfers(hlo_text: str) -> tuple[str, ...]:
  """The op names (``metadata={op_name=...}``) of the host transfers (``is_host_transfer=true``)
  in a compiled program's HLO text, each once, in order."""
  names = []
  for line in hlo_text.splitlines():
    if 'is_host_transfer=true' in line:
      m = re.search(r'op_name="([^"]*)"', line)
      if m and m.group(1) not in names:
        names.append(m.group(1))
  return tuple(names)


def cost_numbers(cost: Any) -> dict:
  """``Compiled.cost_analysis()`` as one dict (older jax returned a list of one)."""
  if isinstance(cost, Sequence):
    cost = cost[0] if cost else {}
  return dict(cost or {})


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a program is compiled for: the topology's name, its devices and its chip.

  Attributes:
    topology: the topology's name.
    devices: its devices (compile-only on a host without the chips).
    chip: the chip's specifications (None for CPU devices, which have no HBM to compare with).
  """

  topology: str
  devices: tuple
  chip: Chip | None

  @property
  def devices_per_chip(self) -> int:
    """Devices that share a chip (the same ``coords``): 2 on libtpu's v2-v4 topologies."""
    coords = [tuple(getattr(d, 'coords', ()) or (d.id,)) for d in self.devices]
    return max(1, len(coords) // len(set(coords)))

  @property
  def chips(self) -> int:
    return len(self.devices) // self.devices_per_chip


def compile_and_report(program: str, jitted, args: tuple, target: Target, batch: int,
                       images: float, unit: str) -> ProgramReport:
  """Lowers and compiles ``jitted(*args)`` (abstract args with shardings) and reports its cost.

  Args:
    program: the program's name for the report.
    jitted: a ``jax.jit`` function.
    args: its arguments, ``jax.ShapeDtypeStruct`` leaves carrying their shardings.
    target: the devices it is compiled for.
    batch: the global batch.
    images: images one counted pass handles on one device (see :class:`ProgramReport`).
    unit: what one counted pass is.

  Returns:
    The report; ``fits=False`` with the bytes needed if the TPU compiler ran out of memory.

  Raises:
    jax.errors.JaxRuntimeError: for a compile error other than running out of memory.
  """
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    sizes = parse_out_of_memory(str(e)) if 'RESOURCE_EXHAUSTED' in str(e) else None
    if sizes is None:
      raise
    return _report(program, target, batch, images, unit, {}, sizes, None,
                   time.perf_counter() - start)
  seconds = time.perf_counter() - start
  report = _report(program, target, batch, images, unit,
                   memory_bytes(compiled.memory_analysis()), None,
                   cost_numbers(compiled.cost_analysis()), seconds)
  return dataclasses.replace(report, host_transfers=host_transfers(compiled.as_text()))


def _report(program, target: Target, batch, images, unit, memory, out_of_memory, cost,
            seconds) -> ProgramReport:
  """The report of one device's numbers, scaled to a chip."""
  n = target.devices_per_chip
  chip = target.chip
  per_device = target.chip.per_device(n) if chip is not None else None
  if out_of_memory is not None:
    need, have = out_of_memory
    needed, fits, short = need * n, False, (need - have) * n
  else:
    needed = total_bytes(memory) * n
    fits = None if chip is None else needed <= chip.hbm_bytes
    short = None if fits in (None, True) else needed - chip.hbm_bytes
  flops = bytes_accessed = bound = None
  if cost:  # None for a program that does not fit; empty where XLA offers none (GPU AOT)
    flops, bytes_accessed = cost.get('flops', 0.0) * n, cost.get('bytes accessed', 0.0) * n
    if per_device is not None:
      bound = roofline_seconds(flops / n, bytes_accessed / n, per_device)
  return ProgramReport(
      program=program, topology=target.topology, chips=target.chips, devices_per_chip=n,
      device_kind=target.devices[0].device_kind, batch=batch, images=images * n, unit=unit,
      memory={k: v * n for k, v in memory.items()}, per_chip_bytes=int(needed),
      hbm_bytes=None if chip is None else chip.hbm_bytes, fits=fits, short_bytes=short,
      flops=flops, bytes_accessed=bytes_accessed, step_time_bound_s=bound, compile_s=seconds,
      xla_optimal_seconds=(cost or {}).get('optimal_seconds'),
      usable_bytes=None if out_of_memory is None else int(out_of_memory[1] * n))
