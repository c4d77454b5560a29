"""Non-finite states end the adaptive solves at once (the ODE sampler, bits/dim and the adaptive
SDE sampler, with scipy's RK45 and diffrax's pairs) with an error, raised on the host, naming the
examples and the time; also when the sampler runs sharded over the 8 fake devices. The fixed-step
samplers (PC, DPM-Solver++, Heun, Predict-Project, the controllable PC samplers) raise the same
error naming the examples and the step that met the NaN, and no sample reaches an image file or a
metric. That a finite batch solves as before is the samplers' own tests' business."""

import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sde_jax import controllable, images, likelihood, parallel, sampling
from sde_jax import sde as sde_lib
from sde_jax.evaluate import samples
from sde_jax.sampling import sharded
from tests import gaussian

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
BATCH = 4
EXACT = gaussian.score_fn('vpsde', MEAN, COV)


def _solve(kind: str, score, x):
  """Runs solver ``kind`` ('ode/<solver>', 'bpd/<solver>' or 'adaptive_sde') from ``x``."""
  sde, key = sde_lib.VPSDE(), jax.random.key(0)
  if kind == 'adaptive_sde':
    return sampling.get_adaptive_sde_sampler(sde, x.shape)(key, score, None, z=x)
  what, solver = kind.split('/')
  if what == 'ode':
    return sampling.get_ode_sampler(sde, x.shape, solver=solver)(key, score, None, z=x)
  return likelihood.get_likelihood_fn(sde, lambda y: y, solver=solver)(key, score, None, x)


def _counting(poison):
  """The exact score, NaN in example 1 where ``poison(t)``; records per evaluation whether it
  returned a NaN (an ordered callback, so the list follows the evaluations)."""
  calls = []

  def score(params, x, t):
    out = EXACT(params, x, t)
    out = out.at[1].set(jnp.where(poison(t[1]), jnp.nan, out[1]))
    jax.debug.callback(lambda bad: calls.append(bool(bad)), jnp.any(jnp.isnan(out)),
                       ordered=True)
    return out

  return score, calls


def _reported(error) -> list[tuple[int, float]]:
  return [(int(i), float(t)) for i, t in re.findall(r'(\d+) \(t=([-+.e\d]+)\)', str(error))]


# diffrax's Tsit5 and bits/dim with diffrax take the paths of ode/dopri5 and bpd/rk45.
KINDS = ['ode/rk45', 'ode/dopri5', 'bpd/rk45', 'adaptive_sde']


@pytest.mark.filterwarnings('ignore:method=.adaptive_sde. accepts or rejects')
@pytest.mark.parametrize('kind', KINDS)
def test_one_nan_example_ends_the_solve_at_once(kind):
  """Before: rk45 spent its 16384 attempts (98,306 evaluations), adaptive_sde 2 x 100,000."""
  score, calls = _counting(lambda t: False)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, 2)), jnp.float32)
  with pytest.raises(FloatingPointError, match='non-finite state') as error:
    _solve(kind, score, x.at[2, 0].set(jnp.nan))
  jax.effects_barrier()
  start = 1e-5 if kind.startswith('bpd') else 1.0  # bits/dim integrates from eps to T
  assert _reported(error.value) == [(2, pytest.approx(start))]
  assert len(calls) < 50, len(calls)


@pytest.mark.filterwarnings('ignore:method=.adaptive_sde. accepts or rejects')
@pytest.mark.parametrize('kind', ['ode/rk45', 'ode/dopri5', 'bpd/rk45', 'adaptive_sde'])
def test_a_nan_during_the_solve_ends_it_within_one_step(kind):
  """The score turns NaN in example 1 past t = 0.5: the solve stops at the step that met it,
  and the error gives the time it had reached (the start of that step: diffrax's steps are
  long here)."""
  backwards = not kind.startswith('bpd')
  score, calls = _counting((lambda t: t < 0.5) if backwards else (lambda t: t > 0.5))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((BATCH, 2)), jnp.float32)
  with pytest.raises(FloatingPointError, match='non-finite state') as error:
    _solve(kind, score, x)
  jax.effects_barrier()
  [(index, t)] = _reported(error.value)
  assert index == 1
  assert (0.5 <= t < 1.0) if backwards else (1e-5 < t <= 0.5), t
  # Evaluations from the first NaN on: those of the attempt that met it (6 stages, 2 for the
  # adaptive SDE solver), none after.
  assert 0 < len(calls) - calls.index(True) <= (2 if kind == 'adaptive_sde' else 6)



@pytest.mark.filterwarnings('ignore:method=.adaptive_sde. accepts or rejects')
@pytest.mark.parametrize('method', ['ode', 'adaptive_sde', 'predict_project'])
def test_sharded_sampler_reports_on_the_host(method):
  """Sharded over 8 devices, as the jobs sample: a raise inside the program would leave the
  other devices waiting in a collective; the report comes out and is raised on the host.
  (Before: Predict-Project, like every fixed-step sampler, returned the NaN samples; the
  others reach the program by the same path as ``ode``.)"""
  def score(params, x, t):  # example 1 turns NaN past t = 0.5
    out = EXACT(params, x, t)
    return out.at[1].set(jnp.where(t[1] < 0.5, jnp.nan, out[1]))

  model = types.SimpleNamespace(sde=sde_lib.VPSDE(N=10), image_shape=(2,), score_fn=score,
                                inverse_scaler=lambda x: x)
  config = ml_collections.ConfigDict({'sampling': {'method': method, 'noise_removal': False}})
  projection = types.SimpleNamespace(fn=lambda params, x, t: jnp.zeros_like(x), params=None)
  draw = sharded.sharded_sampler(config, model, 16, parallel.make_mesh(), projection)
  with pytest.raises(FloatingPointError, match=rf'{method}: non-finite .* example\(s\) 1 '):
    draw(jax.random.key(0), None, 0)


# A child process, so that a hang (XLA aborts the process after 40 s) fails one test, not the
# worker: 4 devices, the batch sharded over them, each adaptive solver stopped by max_steps=3.
_MAX_STEPS_CHILD = """
import jax, jax.numpy as jnp
from sde_jax import nonfinite, parallel, sampling
from sde_jax import sde as sde_lib
sde, shape = sde_lib.VPSDE(), (8, 2)
mesh = parallel.make_mesh()
score = lambda params, x, t: -x / sde.marginal_prob(x, t)[1][:, None] ** 2
x = jax.device_put(jnp.ones(shape), parallel.batch_sharding(mesh))
samplers = {'ode/rk45': sampling.get_ode_sampler(sde, shape, max_steps=3),
            'ode/dopri5': sampling.get_ode_sampler(sde, shape, solver='dopri5', max_steps=3),
            'adaptive_sde': sampling.get_adaptive_sde_sampler(sde, shape, max_steps=3)}
for name, sampler in samplers.items():
  run = jax.jit(lambda z: sampler.reporting(jax.random.key(0), score, None, z=z),
                out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh),
                               parallel.replicated(mesh)))
  _, _, report = run(x)
  try:
    nonfinite.raise_if_any(report, name)
  except RuntimeError as e:
    print('RAISED', name, e, flush=True)
"""


@pytest.mark.filterwarnings('ignore:method=.adaptive_sde. accepts or rejects')
def test_max_steps_in_a_sharded_program_is_an_error_not_a_hang():
  """An adaptive solver that runs out of steps in a program sharded over several devices: before,
  ``eqx.error_if`` raised inside the program on one device, the other three waited in their
  next all-reduce, and XLA aborted the process after 40 s. Now the solve returns NaN and an
  ``unfinished`` flag in its report, raised on the host."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', _MAX_STEPS_CHILD], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  raised = [line for line in proc.stdout.splitlines() if line.startswith('RAISED')]
  assert [line.split()[1] for line in raised] == ['ode/rk45', 'ode/dopri5', 'adaptive_sde']
  assert all('spent its max_steps=3 attempts' in line for line in raised), raised


def _marked(evals: list, traces: list):
  """The exact score, NaN in example ``params`` (an int32 scalar; -1: none) at times below 0.5.
  Appends to ``evals``, per evaluation, the time and whether it was poisoned, and to ``traces``
  one entry per trace."""
  def score(params, x, t):
    traces.append(None)
    hit = (jnp.arange(x.shape[0]) == params) & (t < 0.5)
    jax.debug.callback(lambda t, bad: evals.append((float(t), bool(bad))), t[0], jnp.any(hit),
                       ordered=True)
    return jnp.where(hit[:, None], jnp.nan, EXACT(None, x, t))

  return score


def _fixed_step_sampler(kind: str, shape):
  """``draw(key, score, params) -> (x, nfe)``: sampler ``kind`` (few steps) for VP."""
  sde, short = sde_lib.VPSDE(), sde_lib.VPSDE(N=8)
  em = dict(predictor='euler_maruyama', corrector='none')
  if kind == 'pc':
    return sampling.get_pc_sampler(short, shape, **em)
  if kind == 'dpm_solver++':
    return sampling.get_dpm_solver_sampler(sde, shape, nfe=8)
  if kind == 'heun':  # one Euler step, then 4 Heun steps, then the denoising
    return sampling.get_heun_sampler(sde, shape, nfe=10)
  if kind == 'predict_project':
    sampler = sampling.get_predict_project_sampler(
        sde, shape, lambda params, x, t: 0.1 * x, n_steps=8)
    return lambda key, score, params: sampler(key, score, params, None)
  if kind == 'inpaint':
    sampler = controllable.get_pc_inpainter(short, shape, **em)
    data, mask = jnp.zeros(shape), jnp.zeros(shape).at[:, 0].set(1.0)
    return lambda key, score, params: sampler(key, score, params, data, mask)
  sampler = controllable.get_pc_conditional_sampler(short, shape, **em)  # 'class'
  logit_fn = lambda params, x, t: x  # two classes, one per coordinate
  return lambda key, score, params: sampler(key, score, params, logit_fn, None,
                                            jnp.zeros(shape[:1], jnp.int32))


@pytest.mark.parametrize('kind', ['pc', 'dpm_solver++', 'heun', 'predict_project', 'inpaint',
                                  'class'])
def test_fixed_step_sampler_names_the_example_and_its_step(kind):
  """Before: these samplers returned example 1 as NaN without an error. The same compiled
  program serves the finite and the poisoned call (the watch is data, not a trace branch), and
  the time reported is the start of the step that met the NaN: the time of the first poisoned
  evaluation, or of the evaluation before it (Heun's second stage)."""
  evals, traces = [], []
  draw = _fixed_step_sampler(kind, (BATCH, 2))
  score, key = _marked(evals, traces), jax.random.key(0)
  x, _ = draw(key, score, jnp.int32(-1))
  assert np.isfinite(np.asarray(x)).all()
  compiled = len(traces)
  evals.clear()
  with pytest.raises(FloatingPointError, match='non-finite state') as error:
    draw(key, score, jnp.int32(1))
  jax.effects_barrier()
  assert len(traces) == compiled
  first = [bad for _, bad in evals].index(True)
  starts = {evals[first][0], evals[max(first - 1, 0)][0]}
  [(index, t)] = _reported(error.value)
  assert index == 1 and any(t == pytest.approx(s, rel=1e-5) for s in starts), (t, starts)


def test_a_nan_in_the_final_denoising_is_reported_at_its_time():
  """DPM-Solver++'s denoising evaluation after the last step: no step's state is non-finite,
  the output is; the time named is eps."""
  def score(params, x, t):
    out = EXACT(params, x, t)
    return out.at[2].set(jnp.where(t[2] < 2e-3, jnp.inf, out[2]))

  sampler = sampling.get_dpm_solver_sampler(sde_lib.VPSDE(), (BATCH, 2), nfe=6, denoise=True)
  with pytest.raises(FloatingPointError, match=r'dpm_solver\+\+: non-finite') as error:
    sampler(jax.random.key(0), score, None)
  assert _reported(error.value) == [(2, pytest.approx(1e-3))]


def test_non_finite_samples_make_no_image():
  """Before: a warning, and the NaN pixels written as 0 (a black image)."""
  x = np.full((6, 2, 2, 1), 0.5, np.float32)
  x[2, 0, 0, 0], x[4, 1, 1, 0] = np.nan, np.inf
  with pytest.raises(FloatingPointError, match=r'2 of 6 samples .* 2, 4\b'):
    images.to_uint8(x)
  assert images.to_uint8(x[:2]).dtype == np.uint8


def test_evaluation_computes_no_feature_of_non_finite_samples(tmp_path):
  """The sampling stage of ``sde-jax eval`` with a sampler that returned NaN images (one that
  did not raise): the round fails before the Inception network or any metric sees it."""
  nan_round = np.full((8, 4, 4, 3), 0.5, np.float32)
  nan_round[3] = np.nan
  programs = types.SimpleNamespace(batch=8, mesh=parallel.make_mesh(),
                                   draw=lambda key, params, first: (nan_round, 1))
  ckpt = types.SimpleNamespace(number=1, params=None, path=lambda name: tmp_path / name)
  net = types.SimpleNamespace(features=lambda *args: pytest.fail('features of NaN samples'))
  settings = types.SimpleNamespace(num_samples=8)
  with pytest.raises(FloatingPointError, match='1 of 8 samples'):
    samples.eval_samples(ckpt, programs, settings, net, None, jax.random.key(0))
  assert not list(tmp_path.iterdir())
