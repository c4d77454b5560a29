"""``sde-jax plan``: the jobs' programs compiled for a TPU topology on this CPU-only host (libtpu's
compile-only devices), the report's arithmetic, and the errors raised before anything compiles.

The compiles use the recipe's tiny networks: a few seconds each for v5e:2x2. Every program of
every sampler is compiled for a TPU by bench/plan_programs.py, which .ci/run runs after the
suite.
"""

import json
import types

import jax
import pytest

from sde_jax import compile_report, parallel, chips
from sde_jax.chips import GIB
from sde_jax.jobs import plan
from tests import helpers

TOPOLOGY = 'v5e:2x2'


def _schedule(n_jitted_steps: int, **training) -> dict:
  """A training section whose periods suit ``n_jitted_steps``."""
  periods = dict(log_freq=n_jitted_steps, eval_freq=n_jitted_steps,
                 snapshot_freq=n_jitted_steps, snapshot_freq_for_preemption=n_jitted_steps)
  return dict(n_jitted_steps=n_jitted_steps, **periods, **training)


# --- The report's arithmetic, on its own.

def test_out_of_memory_messages_give_the_bytes():
  parse = compile_report.parse_out_of_memory
  assert parse('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
               'temporaries (19.25G) exceeds available HBM (15.75G).') == (
                   int(19.25 * GIB), int(15.75 * GIB))
  assert parse('XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used '
               '20.50G of 15.48G hbm. Exceeded hbm capacity by 5.02G.') == (
                   int(20.5 * GIB), int(15.48 * GIB))
  assert parse('INVALID_ARGUMENT: something else') is None


def test_memory_total_roofline_and_chip_shares():
  memory = {'argument': 100, 'output': 60, 'alias': 50, 'temp': 30, 'code': 7}
  assert compile_report.total_bytes(memory) == 100 + 60 - 50 + 30 + 7
  chip = chips.BY_NAME['v5e']
  # Compute-bound: 1e12 FLOPs at 197 TFLOP/s beat 1 GB at 819 GB/s; memory-bound the other way.
  assert compile_report.roofline_seconds(1e12, 1e9, chip) == pytest.approx(1e12 / 197e12)
  assert compile_report.roofline_seconds(1e9, 1e12, chip) == pytest.approx(1e12 / 819e9)
  half = chips.BY_NAME['v4'].per_device(2)  # libtpu's v4 devices are TensorCores
  assert (half.hbm_bytes, half.peak_flops, half.hbm_bandwidth) == (16 * GIB, 137.5e12, 600e9)
  assert chips.chip_of('TPU v5 lite') is chip
  with pytest.raises(ValueError, match="'TPU v9'.*known"):
    chips.chip_of('TPU v9')
  assert compile_report.format_bytes(2.39 * GIB) == '2.39 GiB'


class _Compiled:
  """What compile_and_report reads of a compiled program, with set numbers."""

  def __init__(self, memory, cost):
    self.memory, self.cost = memory, cost

  def lower(self, *args):
    return self

  def compile(self):
    return self

  def memory_analysis(self):
    return types.SimpleNamespace(**{f'{k}_size_in_bytes': v for k, v in self.memory.items()},
                                 generated_code_size_in_bytes=0)

  def cost_analysis(self):
    return self.cost

  def as_text(self):
    return ('%s = token[] send-done(%t), is_host_transfer=true, metadata={op_name='
            '"jit(f)/while/body/pure_callback"}')


def test_reports_scale_devices_to_chips_and_bound_by_the_slower_roof():
  memory = {'argument': 3 * GIB, 'output': GIB, 'alias': GIB, 'temp': 4 * GIB}
  cost = {'flops': 1e12, 'bytes accessed': 1e9}
  # libtpu's v4 devices are TensorCores, two per chip (same coords): a chip holds both.
  cores = [types.SimpleNamespace(id=i, coords=(i // 2, 0, 0), device_kind='TPU v4')
           for i in range(8)]
  target = compile_report.Target('v4:2x2x1', tuple(cores), chips.BY_NAME['v4'])
  r = compile_report.compile_and_report('train', _Compiled(memory, cost), (), target, 16, 2.0,
                                        'optimizer step')
  assert (r.chips, r.devices_per_chip, r.images) == (4, 2, 4.0)
  assert r.per_chip_bytes == 2 * 7 * GIB and r.fits and r.hbm_bytes == 32 * GIB
  assert r.flops_per_image == pytest.approx(1e12 / 2)
  assert r.step_time_bound_s == pytest.approx(1e12 / 137.5e12)  # compute-bound, per core
  assert r.host_transfers == ('jit(f)/while/body/pure_callback',)
  assert 'inside a loop' in r.describe() and '1 inside' in r.describe()
  # XLA's GPU executables compiled without a GPU offer memory but no cost analysis.
  gpu = [types.SimpleNamespace(id=i, device_kind='NVIDIA H100 80GB HBM3') for i in range(8)]
  target = compile_report.Target('h100:1x8', tuple(gpu), chips.GPU_BY_NAME['h100'])
  big = dict(memory, temp=80 * GIB)
  r = compile_report.compile_and_report('train', _Compiled(big, None), (), target, 8, 1.0, 'step')
  assert (r.chips, r.flops, r.step_time_bound_s) == (8, None, None)
  assert not r.fits and r.short_bytes == 83 * GIB - chips.GPU_BY_NAME['h100'].hbm_bytes
  assert json.loads(json.dumps(r.to_json()))['flops_per_image'] is None


def test_topology_names_and_their_errors():
  name = parallel.topology_name
  assert name('v5e:2x2') == 'v5e:2x2'
  assert name('v5litepod-16') == 'v5e:4x4'
  assert name('v5p-8') == 'v5p:2x2x1'  # v5p counts TensorCores: 8 of them are 4 chips
  assert name('v6e-8') == 'v6e:2x4'
  assert name('h100:8') == 'h100:1x8' and name('h200:2x8') == 'h200:2x8'  # hosts x GPUs
  for bad in ('tpu', 'v7:2x2', 'v5e-3', 'v5e:2', 'cuda:h100', 'h100:0', 'a100:8'):
    with pytest.raises(ValueError, match=r'not a topology sde-jax knows.*v5e:2x2.*v5litepod-16'
                                         r'.*h100:8'):
      name(bad)


def test_a_missing_compiler_names_the_install_command(monkeypatch):
  real = parallel.importlib.util.find_spec
  monkeypatch.setattr(parallel.importlib.util, 'find_spec', lambda n, *a: None if n in (
      'libtpu', 'jax_cuda12_plugin') else real(n, *a))
  with pytest.raises(RuntimeError, match=r"needs libtpu.*pip install 'sde-jax\[tpu\]'"):
    parallel.topology_devices(TOPOLOGY)
  with pytest.raises(RuntimeError, match=r"CUDA plugin.*pip install 'sde-jax\[gpu-plan\]'"):
    parallel.topology_devices('h100:8')


def test_a_batch_the_mesh_cannot_split_fails_before_compiling(monkeypatch):
  monkeypatch.setattr(compile_report, 'compile_and_report', None)  # any compile would fail
  config = helpers.tiny_config('digits/ddpmpp_continuous.py', training=dict(batch_size=6))
  with pytest.raises(ValueError, match=r'training.batch_size=6 is not divisible by the number '
                                       r'of devices, 4'):
    plan.plan(config, TOPOLOGY)
  with pytest.raises(ValueError, match='not a topology sde-jax knows'):
    plan.plan(config, 'v5e-3')


def test_max_batch_search_finds_the_largest_multiple_that_fits():
  for largest, start in ((20, 8), (20, 64), (4, 4), (1000, 8)):
    tried = []
    found = plan.search_batch(lambda b: tried.append(b) or b <= largest, start, 4, 1000)
    assert found == largest // 4 * 4 and all(b % 4 == 0 for b in tried)
    assert len(tried) <= 2 * 8  # doublings, then bisection
  assert plan.search_batch(lambda b: False, 8, 4, 1000) is None


# --- Real compiles for v5e:2x2.

def test_train_step_and_sampler_compile_for_v5e_with_sane_numbers():
  """The digits DDPM++ (tiny) train step and PC sampler compile for 4 v5e chips; their FLOPs
  per image agree with XLA:CPU's count of the same programs on one CPU device (the step unrolls
  its 2 optimizer steps there, and counts both)."""
  config = helpers.tiny_config('digits/ddpmpp_continuous.py', training=_schedule(2))
  train, sample = plan.plan(config, TOPOLOGY, ('train', 'sample'))
  for report in (train, sample):
    assert (report.topology, report.chips, report.device_kind) == (TOPOLOGY, 4, 'TPU v5 lite')
    assert report.fits and report.hbm_bytes == 16 * GIB
    assert 0 < report.per_chip_bytes < report.hbm_bytes and report.memory['argument'] > 0
    assert report.flops_per_image > 0 and report.bytes_accessed > 0
    assert 0 < report.step_time_bound_s < 1e-3
  assert train.memory['alias'] > 0  # the donated state is updated in place
  assert train.images == 2 and train.batch == 8  # per chip, one counted optimizer step
  cpu_train, = plan.plan(config, 'cpu:1', ('train',), devices=jax.devices('cpu')[:1])
  assert cpu_train.images == 16  # the batch of 8, twice: CPU unrolls the two steps
  assert train.flops_per_image == pytest.approx(cpu_train.flops_per_image, rel=0.1)
  assert cpu_train.fits is None and cpu_train.step_time_bound_s is None


def test_a_program_that_cannot_fit_is_reported_with_its_bytes():
  """A tiny network at a million images per step: ~82 GiB per v5e chip of 16."""
  config = helpers.tiny_config('digits/ddpmpp_continuous.py',
                               training=_schedule(1, batch_size=2 ** 20))
  report, = plan.plan(config, TOPOLOGY, ('train',))
  assert report.fits is False and report.memory == {}
  assert report.per_chip_bytes > 2 * report.hbm_bytes
  assert report.usable_bytes == int(15.75 * GIB)  # of the 16 GiB, as libtpu says
  assert report.short_bytes == report.per_chip_bytes - report.usable_bytes
  assert f'short by {compile_report.format_bytes(report.short_bytes)}' in report.describe()


def test_command_line_prints_one_json_object_per_program():
  run = helpers.run_cli('plan', *helpers.tiny_flags('digits/ddpmpp_continuous.py'),
                        f'--topology={TOPOLOGY}', '--programs=eval_loss', '--json')
  assert run.returncode == 0, run.stderr[-3000:]
  line, = [l for l in run.stdout.splitlines() if l.startswith('{')]
  out = json.loads(line)
  assert {'program', 'topology', 'chips', 'device_kind', 'per_chip_bytes', 'hbm_bytes', 'fits',
          'flops_per_image', 'bytes_accessed', 'step_time_bound_s', 'compile_s'} <= set(out)
  assert (out['program'], out['chips'], out['fits']) == ('eval_loss', 4, True)
