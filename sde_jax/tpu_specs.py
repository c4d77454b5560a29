"""TPU chips: memory, peak compute and memory bandwidth of one chip, with their sources.

What :mod:`sde_jax.compile_report` measures a compiled program against (``sde-jax plan``). The
numbers are Google Cloud's published per-chip specifications (the pages named in ``source``);
``device_kind`` is what ``jax.Device.device_kind`` says for the chip, on real hardware and on
libtpu's compile-only devices alike.

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
  """

  name: str
  device_kind: str
  hbm_bytes: int
  peak_flops: float
  hbm_bandwidth: float
  source: str

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
BY_NAME = {c.name: c for c in CHIPS}
BY_DEVICE_KIND = {c.device_kind: c for c in CHIPS}


def chip_of(device_kind: str) -> Chip:
  """The chip whose devices report ``device_kind``.

  Raises:
    ValueError: naming the kind and the kinds known.
  """
  try:
    return BY_DEVICE_KIND[device_kind]
  except KeyError:
    raise ValueError(f'device_kind={device_kind!r} is not a TPU chip sde_jax.tpu_specs knows; '
                     f'known: {sorted(BY_DEVICE_KIND)}.') from None
