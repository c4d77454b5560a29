"""One code path for one CPU, one GPU and a TPU pod: a device mesh and the shardings on it.

The mesh has two axes: ``data`` and ``fsdp``. A batch is split over all devices (both axes);
parameters and optimizer state of large arrays are split over ``fsdp`` (fully sharded data
parallel), everything else is replicated. With ``fsdp = 1`` this is plain data parallelism.
On several hosts, ``initialize()`` connects the processes, each host feeds its own part of the
global batch and :func:`host_local_to_global` assembles the global array.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils, topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sde_jax import chips

BATCH_AXES = ('data', 'fsdp')
# Arrays with fewer elements stay replicated under FSDP (``config.parallel.fsdp_min_size``).
FSDP_MIN_SIZE = 2 ** 16


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Connects the processes of a multi-host job (no-op for a single process).

  With no arguments, ``jax.distributed.initialize()`` discovers the cluster itself on TPU pods
  and under SLURM; the arguments (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``) name a coordinator explicitly, as the local launcher does.
  ``SDE_JAX_DISTRIBUTED=1`` forces initialisation where nothing in the environment shows a
  cluster (Cloud TPU VMs).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator; None (or empty) reads
      ``JAX_COORDINATOR_ADDRESS``; if both are unset, jax discovers the cluster (and outside
      one, without ``SDE_JAX_DISTRIBUTED=1``, nothing is initialised).
    num_processes: the number of processes of the job; None reads ``JAX_NUM_PROCESSES``.
    process_id: this process's index in ``[0, num_processes)``; None reads ``JAX_PROCESS_ID``.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and 'JAX_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  explicit = coordinator_address is not None
  cluster = any(k in os.environ for k in ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES',
                                          'MEGASCALE_COORDINATOR_ADDRESS'))
  # Cloud TPU VMs set none of the above (jax finds the slice from the metadata server), so
  # launch/tpu_pod.sh asks for initialisation explicitly.
  requested = os.environ.get('SDE_JAX_DISTRIBUTED') == '1'
  if not explicit and not cluster and not requested:
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes).

  Raises:
    ValueError: if ``fsdp`` does not divide the number of devices.
  """
  devices = jax.devices() if devices is None else list(devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'parallel.fsdp={fsdp} must be a positive divisor of the number of '
                     f'devices, {len(devices)}.')
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, ('data', 'fsdp'))


def mesh_from_config(config) -> Mesh:
  """The mesh of a job: connects the processes (:func:`initialize`), then a ``(data, fsdp)``
  mesh over every device with ``config.parallel.fsdp``."""
  initialize()
  return make_mesh(config.parallel.fsdp)


# Cloud TPU accelerator types (``v5litepod-16``, ``v5p-32``) -> libtpu's topology shapes: the
# slice shapes of the Cloud TPU pages of each generation. v5e and v6e count chips, v4 and v5p
# count TensorCores (two per chip).
_CLOUD_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
             256: '16x16'}
_CLOUD_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
             256: '4x8x8', 512: '8x8x8'}
_CLOUD = {'v5litepod': ('v5e', _CLOUD_2D, 1), 'v5e': ('v5e', _CLOUD_2D, 1),
          'v6e': ('v6e', _CLOUD_2D, 1), 'v4': ('v4', _CLOUD_3D, 2), 'v5p': ('v5p', _CLOUD_3D, 2)}
TOPOLOGY_FORMS = (
    'GENERATION:SHAPE with GENERATION one of ' + ', '.join(chips.BY_NAME) + ' and SHAPE the '
    'chips along each axis (v5e:2x2, v6e:4x8, v5p:2x2x1, v4:2x2x2), a Cloud TPU accelerator '
    'type of a standard shape (v5litepod-16, v6e-8, v5p-32, v4-8), or GPU:N / GPU:HOSTSxN for N '
    'GPUs per host with GPU one of ' + ', '.join(chips.GPU_BY_NAME) + ' (h100:8, h200:2x8)')


def topology_name(name: str) -> str:
  """``name`` as the compilers name a topology: ``'v5e:4x4'`` (libtpu), ``'h100:1x8'`` (hosts x
  GPUs per host); Cloud accelerator types translated.

  Raises:
    ValueError: naming ``name`` and the accepted forms (:data:`TOPOLOGY_FORMS`).
  """
  name = name.strip()
  m = re.fullmatch(r'(v[0-9][a-z]*):([0-9]+(?:x[0-9]+){1,2})', name)
  if m and m.group(1) in chips.BY_NAME:
    return name
  m = re.fullmatch(r'([a-z][0-9]+):(?:([0-9]+)x)?([0-9]+)', name)
  if m and m.group(1) in chips.GPU_BY_NAME and int(m.group(3)) > 0:
    return f'{m.group(1)}:{int(m.group(2) or 1)}x{m.group(3)}'
  m = re.fullmatch(r'(v[0-9][a-z]*)-([0-9]+)', name)
  if m and m.group(1) in _CLOUD:
    generation, shapes, per_chip = _CLOUD[m.group(1)]
    shape = shapes.get(int(m.group(2)) // per_chip)
    if shape is not None and int(m.group(2)) % per_chip == 0:
      return f'{generation}:{shape}'
  raise ValueError(f'--topology={name!r} is not a topology sde-jax knows; expected '
                   f'{TOPOLOGY_FORMS}.')


def topology_devices(name: str) -> list:
  """The compile-only devices of the topology ``name``: programs can be compiled for them on any
  host (nothing runs on them). TPU topologies come from libtpu; GPU ones from JAX's CUDA plugin,
  told the GPU's properties (:func:`sde_jax.chips.gpu_target_config`).

  Args:
    name: a topology (:data:`TOPOLOGY_FORMS`).

  Returns:
    The devices of every host, in the compiler's order.

  Raises:
    ValueError: for a name that is not a topology, or one the compiler refuses (its reason).
    RuntimeError: if the compiler is not installed (the command that installs it given).
  """
  canonical = topology_name(name)
  generation, shape = canonical.split(':')
  if generation in chips.GPU_BY_NAME:
    return _gpu_devices(name, chips.GPU_BY_NAME[generation], shape)
  if importlib.util.find_spec('libtpu') is None:
    raise RuntimeError(
        f'Compiling for --topology={name} needs libtpu (XLA\'s TPU compiler), which is not '
        f"installed: pip install 'sde-jax[tpu]' (or pip install 'jax[tpu]=={jax.__version__}', "
        'the libtpu of the installed jax).')
  # libtpu refuses a second process on the host (a lock in /tmp) unless told otherwise: compiling
  # claims no chip, so plans may run side by side, and beside a job that holds the chips.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  dims = [int(n) for n in shape.split('x')]
  try:
    return list(topologies.get_topology_desc(topology_name=canonical, platform='tpu').devices)
  except jax.errors.JaxRuntimeError as e:
    if 'chips_per_host_bounds' not in str(e) or np.prod(dims) > 4:
      raise ValueError(f'--topology={name!r}: libtpu refuses {canonical!r}: {e}. Expected '
                       f'{TOPOLOGY_FORMS}.') from None
  # A slice smaller than one host (v5e:1x1) is its own host.
  return list(topologies.get_topology_desc(
      topology_name=canonical, platform='tpu', chips_per_host_bounds=(dims + [1])[:3]).devices)


def _gpu_devices(name: str, chip, shape: str) -> list:
  """JAX's CUDA plugin's compile-only devices of ``shape`` (hosts x GPUs per host) of ``chip``."""
  if importlib.util.find_spec('jax_cuda12_plugin') is None:
    raise RuntimeError(
        f"Compiling for --topology={name} needs JAX's CUDA plugin (XLA's GPU compiler), which is "
        f"not installed: pip install 'sde-jax[gpu-plan]' (or pip install "
        f"'jax[cuda12-local]=={jax.__version__}': the plugin without the CUDA libraries).")
  hosts, per_host = shape.split('x')
  return list(topologies.get_topology_desc(
      platform='cuda', topology=f'1x{hosts}x{per_host}',
      target_config=chips.gpu_target_config(chip)).devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _param_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """Shards the largest axis divisible by ``fsdp`` of arrays with at least ``min_size``
  elements over the ``fsdp`` axis; replicates the rest."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % fsdp == 0]
  if not candidates:
    return P()
  spec = [None] * len(shape)
  spec[int(candidates[0])] = 'fsdp'
  return P(*spec)


def param_shardings(mesh: Mesh, tree: Any, min_size: int = FSDP_MIN_SIZE) -> Any:
  """A ``NamedSharding`` for every array (or ``ShapeDtypeStruct``) leaf of ``tree``.

  Args:
    mesh: a ``(data, fsdp)`` mesh from :func:`make_mesh`.
    tree: parameters or optimizer state; only each leaf's ``shape`` is read.
    min_size: leaves with at least this many elements are split over the ``fsdp`` axis along
      their largest axis divisible by its size; smaller leaves, leaves with no such axis, and
      every leaf when ``fsdp = 1`` are replicated.

  Returns:
    A pytree of the structure of ``tree`` with one ``NamedSharding`` per leaf.
  """
  fsdp = mesh.shape['fsdp']
  return jax.tree_util.tree_map(
      lambda leaf: NamedSharding(mesh, _param_spec(tuple(leaf.shape), fsdp, min_size)), tree)


def fsdp_summary(tree: Any, min_size: int) -> str:
  """What of ``tree`` (arrays placed by :func:`param_shardings`) is split over the ``fsdp``
  axis, for the log: arrays and values split, and why the others are not."""
  leaves = jax.tree_util.tree_leaves(tree)
  split = [x for x in leaves if 'fsdp' in jax.tree_util.tree_leaves(tuple(x.sharding.spec))]
  fsdp = leaves[0].sharding.mesh.shape['fsdp']
  total = sum(x.size for x in leaves)
  return (f'{len(split)} of {len(leaves)} arrays, {sum(x.size for x in split) / total:.1%} of '
          f'the {total} values, split over fsdp={fsdp} devices; the others (under '
          f'fsdp_min_size={min_size} values, or no axis divisible by {fsdp}) are replicated.')


def check_batch_size(global_batch: int, mesh: Mesh, field: str = 'training.batch_size') -> int:
  """The per-process batch size, after checking that ``global_batch`` splits evenly.

  Args:
    global_batch: the batch size over all processes.
    mesh: the job's mesh.
    field: the config field the batch size comes from, for the message.

  Raises:
    ValueError: at start-up, naming the batch size and the device / process counts.
  """
  if global_batch % mesh.size:
    raise ValueError(f'{field}={global_batch} is not divisible by the number of '
                     f'devices, {mesh.size}; choose a multiple of {mesh.size}.')
  if global_batch % jax.process_count():
    raise ValueError(f'{field}={global_batch} is not divisible by the number of '
                     f'processes, {jax.process_count()}.')
  return global_batch // jax.process_count()


def host_local_to_global(batch: Any, mesh: Mesh) -> Any:
  """This process's part of a batch (numpy, leading axis = per-process batch) -> global arrays
  sharded over the mesh (``jax.make_array_from_process_local_data``)."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def steps_sharding(mesh: Mesh) -> NamedSharding:
  """Stacked batches of shape ``(n_steps, B, ...)``: the batch axis split over every device."""
  return NamedSharding(mesh, P(None, BATCH_AXES))


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """``abstract`` (``ShapeDtypeStruct`` leaves) with the given shardings attached: a restore
  target or a compile-time argument."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def sharded_like(abstract: Any, mesh: Mesh | None) -> Any:
  """``abstract`` parameters placed as training places them (:func:`param_shardings` over
  ``mesh``), or whole on the first local device when ``mesh`` is None."""
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda _: device, abstract)
  return param_shardings(mesh, abstract)


def gather(x: Any) -> np.ndarray:
  """A global array as one numpy array on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_mask(mask: np.ndarray) -> np.ndarray:
  """A host-local ``'mask'`` of a batch over all processes, in the order of the global batch."""
  if jax.process_count() == 1:
    return np.asarray(mask, bool)
  return np.asarray(multihost_utils.process_allgather(np.asarray(mask)), bool).reshape(-1)


def process_zero_view(flags: list[bool]) -> np.ndarray:
  """Process 0's value of ``flags`` on every process: hosts need not share a file system, and
  all must take the same decisions (which rounds to run, for instance)."""
  flags = np.asarray(flags, bool)
  if jax.process_count() == 1 or flags.size == 0:
    return flags
  return np.asarray(multihost_utils.broadcast_one_to_all(flags))
