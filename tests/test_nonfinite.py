"""Non-finite states end the adaptive solves at once (the ODE sampler, bits/dim and the adaptive
SDE sampler, with scipy's RK45 and diffrax's pairs) with an error, raised on the host, naming the
examples and the time; also when the sampler runs sharded over the 8 fake devices. That a finite
batch solves as before is the solvers' own tests' business."""

import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sde_jax import likelihood, parallel, sampling
from sde_jax import sde as sde_lib
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
@pytest.mark.parametrize('method', ['ode', 'adaptive_sde'])
def test_sharded_sampler_reports_on_the_host(method):
  """Sharded over 8 devices, as the jobs sample: a raise inside the program would leave the
  other devices waiting in a collective; the report comes out and is raised on the host."""
  def score(params, x, t):  # example 1 turns NaN past t = 0.5
    out = EXACT(params, x, t)
    return out.at[1].set(jnp.where(t[1] < 0.5, jnp.nan, out[1]))

  model = types.SimpleNamespace(sde=sde_lib.VPSDE(), image_shape=(2,), score_fn=score,
                                inverse_scaler=lambda x: x)
  config = ml_collections.ConfigDict({'sampling': {'method': method, 'noise_removal': False}})
  draw = sharded.sharded_sampler(config, model, 16, parallel.make_mesh())
  with pytest.raises(FloatingPointError, match=rf'{method}: non-finite .* example\(s\) 1 '):
    draw(jax.random.key(0), None, 0)
