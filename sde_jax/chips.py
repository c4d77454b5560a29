"""Accelerator chips: memory, peak compute and memory bandwidth of one chip, with their sources.

What :mod:`sde_jax.compile_report` measures a compiled program against (``sde-jax plan``). The
numbers are the vendors' published per-chip specifications (the pages named in ``source``);
``device_kind`` is what ``jax.Device.device_kind`` says for the chip, on real hardware and on
the compile-only devices alike. The GPUs also carry what XLA's CUDA compiler needs to compile for
them without one (:func:`gpu_target_config`).

A chip is one JAX device on v5e, v5p and v6e (one TensorCore, or two as one megacore on v5p).
libtpu's compile-only topologies of v2, v3 and v4 list one device per TensorCore (two per chip),
so each device has half of the chip's memory, compute and bandwidth there
(:meth:`Chip.per_device`); a real v4 runs one device per chip (megacore).
"""

from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip's published specifications.

  Attributes:
    name: the generation as topologies name it (``'v5e'``).
    device_kind: ``jax.Device.device_kind`` of its devices (``'TPU v5 lite'``).
    hbm_bytes: high-bandwidth memory per chip.
    peak_flops: peak bfloat16 FLOP/s per chip.
    hbm_bandwidth: HBM bandwidth per chip, bytes/s.
    source: where the numbers come from.
    gpu: for a GPU, the fields of XLA's ``GpuTargetConfigProto.gpu_device_info`` that describe
      it (:func:`gpu_target_config`); None for a TPU.
  """

  name: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float
  source: str
  gpu: dict | None = None

  def per_device(self, devices_per_chip: int) -> 'Chip':
    """The share of one of ``devices_per_chip`` devices that split the chip evenly."""
    n = int(devices_per_chip)
    return dataclasses.replace(self, hbm_bytes=self.hbm_bytes // n,
                               peak_flops=self.peak_flops / n,
                               hbm_bandwidth=self.hbm_bandwidth / n)


_DOCS = 'https://cloud.google.com/tpu/docs/'
# "GB" on the v5e / v5p / v6e pages: libtpu's compiler budgets 15.75 GiB (v5e) and 31.25 GiB
# (v6e) for programs (measured from its out-of-memory messages), so GiB is meant.
CHIPS = (
    Chip('v2', 'TPU v2', 16 * GIB, 45e12, 600e9, _DOCS + 'v2'),
    Chip('v3', 'TPU v3', 32 * GIB, 123e12, 900e9, _DOCS + 'v3'),
    Chip('v4', 'TPU v4', 32 * GIB, 275e12, 1200e9, _DOCS + 'v4'),
    Chip('v5e', 'TPU v5 lite', 16 * GIB, 197e12, 819e9, _DOCS + 'v5e'),
    Chip('v5p', 'TPU v5', 95 * GIB, 459e12, 2765e9, _DOCS + 'v5p'),
    Chip('v6e', 'TPU v6 lite', 32 * GIB, 918e12, 1638e9, _DOCS + 'v6e'),
)
# The SXM boards' datasheets: dense bfloat16 (the sparse figure is twice that). Memory: what the
# driver reports (H100: 79.1 GiB of the 80 GB; H200: 140.4 GiB of the 141 GB). The H200 is the
# H100's GH100 processor with more and faster memory.
_GH100 = {'threads_per_block_limit': 1024, 'threads_per_warp': 32,
          'shared_memory_per_block': 49152, 'shared_memory_per_core': 233472,
          'shared_memory_per_block_optin': 232448, 'threads_per_core_limit': 2048,
          'core_count': 132, 'fpus_per_core': 128, 'block_dim_limit_x': 2147483647,
          'block_dim_limit_y': 65535, 'block_dim_limit_z': 65535, 'l2_cache_size': 52428800,
          'clock_rate_ghz': 1.98, 'registers_per_core_limit': 65536,
          'registers_per_block_limit': 65536}
GPUS = (
    Chip('h100', 'NVIDIA H100 80GB HBM3', 84942979072, 989.4e12, 3.35e12,
         'https://www.nvidia.com/en-us/data-center/h100/',
         {**_GH100, 'device_memory_size': 84942979072, 'memory_bandwidth': 3352320000000}),
    Chip('h200', 'NVIDIA H200', 143771 * 2 ** 20, 989.4e12, 4.8e12,
         'https://www.nvidia.com/en-us/data-center/h200/',
         {**_GH100, 'device_memory_size': 143771 * 2 ** 20, 'memory_bandwidth': 4800000000000}),
)
BY_NAME = {c.name: c for c in CHIPS}
GPU_BY_NAME = {c.name: c for c in GPUS}
BY_DEVICE_KIND = {c.device_kind: c for c in CHIPS + GPUS}


def chip_of(device_kind: str) -> Chip:
  """The chip whose devices report ``device_kind``.

  Raises:
    ValueError: naming the kind and the kinds known.
  """
  try:
    return BY_DEVICE_KIND[device_kind]
  except KeyError:
    raise ValueError(f'device_kind={device_kind!r} is not a chip sde_jax.chips knows; '
                     f'known: {sorted(BY_DEVICE_KIND)}.') from None


def gpu_target_config(chip: Chip) -> str:
  """XLA's ``GpuTargetConfigProto`` of ``chip`` as text: what its CUDA compiler compiles for when
  no GPU is attached (compute capability 9.0, the Hopper GPUs here)."""
  fields = '\n'.join(f'  {k}: {v}' for k, v in chip.gpu.items())
  return (f'gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n'
          f'platform_name: "CUDA"\ndevice_description_str: "{chip.device_kind}"\n')
