"""Predict-Project sampling (sde_jax.sampling.predict_project) and its projection network
(sde_jax.projection): the sampler against an independent NumPy simulation of the rule on a
Gaussian, T = 0 against Euler-Maruyama bit for bit, the training loss's minimiser for Gaussian
data in closed form and a trained MLP reaching it, and the train-projection / sample commands on
a tiny config."""

from __future__ import annotations

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax import rng
from sde_jax import sde as sde_lib
from sde_jax import sampling
from tests import gaussian, helpers

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.5], [0.5, 0.8]])
SDES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.SubVPSDE}
SHAPE = (4, 8, 2)  # 4 examples of 8 copies of the 2-D Gaussian (tests/gaussian.py)


def gaussian_score(name: str, **options):
  return gaussian.score_fn(name, MEAN, COV, **options)


def pull(params, x, t):
  """A projection with params: ``T(x, t) = a (1 + t) (b - x)``, linear in x."""
  return params['a'] * (1.0 + t)[:, None, None] * (params['b'][None, None] - x)


PULL = {'a': jnp.float32(0.7), 'b': jnp.asarray([0.5, 0.25], jnp.float32)}


def zero_projection(params, x, t):
  del params, t
  return jnp.zeros_like(x)


# --- The sampler --------------------------------------------------------------------------------

@pytest.mark.parametrize('name, denoise', [('vesde', True), ('vpsde', False),
                                           ('subvpsde', True)])
def test_zero_projection_is_euler_maruyama_exactly(name, denoise):
  sde = SDES[name](N=20)
  score = gaussian_score(name)
  em = sampling.get_pc_sampler(sde, SHAPE, predictor='euler_maruyama', corrector='none',
                               denoise=denoise)
  pp = sampling.get_predict_project_sampler(sde, SHAPE, zero_projection, n_steps=20,
                                            step_size=3.0, denoise=denoise)
  key = jax.random.key(5)
  x_em, nfe_em = em(key, score, None, first_index=7)
  x_pp, nfe_pp = pp(key, score, None, None, first_index=7)
  np.testing.assert_array_equal(np.asarray(x_pp), np.asarray(x_em))
  assert (nfe_em, nfe_pp) == (20, 40)


def _f_g(name: str, t: np.ndarray, x: np.ndarray):
  """Drift and diffusion of the forward SDE, from the paper's formulas (not sde_jax.sde)."""
  b0, b1 = gaussian.BETA_MIN, gaussian.BETA_MAX
  beta = b0 + t * (b1 - b0)
  if name == 'vesde':
    lo, hi = gaussian.SIGMA_MIN, gaussian.SIGMA_MAX
    return 0.0 * x, lo * (hi / lo)**t * np.sqrt(2 * np.log(hi / lo))
  g2 = beta if name == 'vpsde' else beta * (1 - np.exp(-2 * b0 * t - (b1 - b0) * t**2))
  return -0.5 * beta * x, np.sqrt(g2)


def simulate(name: str, n: int, step_size: float, eps: float, key, first_index: int):
  """The rule of the issue in float64 NumPy, with the sampler's noises (drawn here from the
  project's key convention: prior from fold_in(k_i, PRIOR), step i from fold_in(fold_in(k_i,
  PREDICTOR), i))."""
  keys = rng.per_example_keys(key, SHAPE[0], first_index)
  z0 = np.asarray(rng.normal(rng.fold_in_all(keys, rng.PRIOR), SHAPE), np.float64)
  noise_keys = rng.fold_in_all(keys, rng.PREDICTOR)
  x = z0 * gaussian.prior_std(name)
  score = gaussian_score(name)
  dt = 1.0 / n
  for i, t in enumerate(np.linspace(1.0, eps, n)):
    f, g = _f_g(name, t, x)
    x_pred = x + (g**2 * score(None, x, np.full(SHAPE[0], t)) - f) * dt
    proj = 0.7 * (1.0 + t) * (np.array([0.5, 0.25]) - x_pred)
    x_proj = x_pred + step_size * dt * np.sqrt(g**2 / 2) * proj
    z = np.asarray(rng.normal(rng.fold_in_all(noise_keys, i), SHAPE), np.float64)
    x = x_proj + g * np.sqrt(dt) * z
  return x_proj, x


@pytest.mark.parametrize('name', sorted(SDES))
def test_matches_a_numpy_simulation_of_the_rule(name):
  n, step_size, eps = 12, 0.8, 1e-3
  sde = SDES[name](N=1000)  # n_steps overrides the SDE's N
  pp = sampling.get_predict_project_sampler(sde, SHAPE, pull, n_steps=n, step_size=step_size,
                                            eps=eps, denoise=True)
  key = jax.random.key(3)
  expected_proj, expected_x = simulate(name, n, step_size, eps, key, first_index=2)
  x_proj, nfe = pp(key, gaussian_score(name), None, PULL, first_index=2)
  assert nfe == 2 * n
  scale = np.abs(expected_x).max()
  np.testing.assert_allclose(x_proj, expected_proj, rtol=1e-4, atol=2e-5 * scale)
  # The projection moves the samples far beyond the tolerance: a sampler that ignored it fails.
  without, _ = simulate(name, n, 0.0, eps, key, first_index=2)
  assert np.abs(without - expected_proj).max() > 100 * 2e-5 * scale


def test_samples_do_not_depend_on_the_batch():
  """Sample i comes from (key, first_index + i), as the PC sampler's."""
  sde = sde_lib.VPSDE(N=10)
  score = gaussian_score('vpsde')
  whole = sampling.get_predict_project_sampler(sde, SHAPE, pull, 10, 1.0)
  half = sampling.get_predict_project_sampler(sde, (2, *SHAPE[1:]), pull, 10, 1.0)
  key = jax.random.key(0)
  x, _ = whole(key, score, None, PULL)
  y, _ = half(key, score, None, PULL, first_index=2)
  chex.assert_trees_all_close(y, x[2:], atol=1e-6)


def test_new_params_and_keys_reuse_the_compiled_program():
  score = chex.assert_max_traces(gaussian_score('vesde', scaled=True), 0)
  pp = sampling.get_predict_project_sampler(sde_lib.VESDE(N=5), SHAPE, pull, 5, 1.0)
  with helpers.first_compile():
    pp(jax.random.key(0), score, {'scale': jnp.float32(1.0)}, PULL)
  other = {'a': jnp.float32(0.1), 'b': jnp.zeros(2)}
  pp(jax.random.key(1), score, {'scale': jnp.float32(0.5)}, other, first_index=4)


def test_get_sampler_and_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  sde = sde_lib.VPSDE(N=7)
  pp = sampling.get_sampler('predict_project', sde, SHAPE, projection_fn=pull, n_steps=3,
                            step_size=0.5)
  assert pp(jax.random.key(0), gaussian_score('vpsde'), None, PULL)[1] == 6
  config = ml_collections.ConfigDict({'sampling': {
      'method': 'predict_project', 'noise_removal': True, 'pp_n_steps': None,
      'pp_step_size': 2.0}})
  method, options = sampling.options_from_config(config, sde)
  assert (method, options) == ('predict_project', {'eps': 1e-3, 'denoise': True,
                                                   'n_steps': None, 'step_size': 2.0})
  pp = sampling.get_sampler_from_config(config, sde, SHAPE, projection_fn=pull)
  assert pp(jax.random.key(0), gaussian_score('vpsde'), None, PULL)[1] == 14  # N of the SDE
  assert sampling.describe_from_config(config) == 'predict_project (pp_step_size 2.0)'


@pytest.mark.parametrize('options, match', [
    (dict(n_steps=0, step_size=1.0), 'n_steps=0 must be an integer >= 1'),
    (dict(n_steps=4, step_size=-1.0), 'step_size=-1.0 must be finite and >= 0'),
    (dict(n_steps=4, step_size=float('nan')), 'step_size=nan'),
])
def test_bad_options(options, match):
  with pytest.raises(ValueError, match=match):
    sampling.get_predict_project_sampler(sde_lib.VPSDE(), SHAPE, pull, **options)


# --- The projection's loss and its minimiser ----------------------------------------------------
# Data N(MU, S^2 I) in 2-D under the VP SDE, with the exact score: x_t = m x0 + sigma z, and the
# predict step is linear, x_pred = a x_t + b, with a = 1 + dt (beta / 2 - beta / v),
# b = dt beta m MU / v, v = m^2 S^2 + sigma^2. x_pred and the target r = m' x0 - x_pred
# (m' = m(max(t - dt, 0))) are jointly Gaussian, so E[r | y] is linear in y, and the loss
# E ||y + T - r - y||^2 ... = E ||T - r||^2 + lambda E ||T||^2 = (1 + lambda) E ||T - r / (1 + lambda)||^2
# + const is minimised by T*(y) = E[r | y] / (1 + lambda):
#   T*(y) = (m' MU - E y + (Cov(r, y) / Var y) (y - E y)) / (1 + lambda),
#   E y = a m MU + b, Var y = a^2 v, Cov(r, y) = m' a m S^2 - a^2 v, lambda = sqrt(beta / 2) / 2.
MU, S = np.array([1.0, -0.5]), 0.5
N_TRAIN = 8  # the grid the projection is trained on: t_i = linspace(1, eps, 8), dt = 1 / 8
EPS = 1e-3


def gaussian_minimiser(t, y: np.ndarray) -> np.ndarray:
  """T*(y) at t (a float, or (B, 1) against y of shape (B, 2))."""
  dt = 1.0 / N_TRAIN
  t = np.asarray(t, np.float64)
  m, sigma = gaussian.mean_std('vpsde', t)
  m_next, _ = gaussian.mean_std('vpsde', np.maximum(t - dt, 0.0))
  beta = gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN)
  v = m**2 * S**2 + sigma**2
  a = 1 + dt * (beta / 2 - beta / v)
  mean_y = a * m * MU + dt * beta * m * MU / v
  slope = (m_next * a * m * S**2 - a**2 * v) / (a**2 * v)
  return (m_next * MU - mean_y + slope * (y - mean_y)) / (1 + np.sqrt(beta / 2) / 2)


def y_grid(t: float) -> np.ndarray:
  """x_pred values at t: E y + k sd(y), k in -2..2 (both coordinates), (5, 2)."""
  dt = 1.0 / N_TRAIN
  m, sigma = gaussian.mean_std('vpsde', np.float64(t))
  beta = gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN)
  v = m**2 * S**2 + sigma**2
  a = 1 + dt * (beta / 2 - beta / v)
  mean_y = a * m * MU + dt * beta * m * MU / v
  return mean_y + np.linspace(-2, 2, 5)[:, None] * abs(a) * np.sqrt(v)


@pytest.fixture(scope='module')
def trained_projection():
  """A (64, 64) MLP projection trained 1500 steps of 512 examples on the Gaussian."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sde_jax import projection, train  # pylint: disable=g-import-not-at-top
  from sde_jax.models import MLP  # pylint: disable=g-import-not-at-top
  sde = sde_lib.VPSDE()
  model = MLP(features=(64, 64), embedding_dim=32)
  fn = projection.get_projection_fn(sde, model)
  score = gaussian.score_fn('vpsde', MU, S**2 * np.eye(2))
  loss = projection.projection_loss_fn(sde, score, None, fn, lambda x: x, (N_TRAIN,), EPS)
  optim = ml_collections.ConfigDict(dict(optimizer='Adam', lr=3e-3, beta1=0.9, eps=1e-8,
                                         weight_decay=0., warmup=0, grad_clip=1.))
  optimizer = train.make_optimizer(optim)
  state = train.init_train_state(model, optimizer, (1, 2), jax.random.key(0))
  step = jax.jit(train.make_train_step(loss, optimizer, 0.99, train.learning_rate_schedule(optim)))
  calls, per_call = 50, 30
  for c in range(calls):
    x0 = MU[None, None] + S * jax.random.normal(jax.random.key(100 + c), (per_call, 512, 2))
    state, _ = step(state, {'image': x0})
  return fn, state.params_ema, loss


def test_trained_projection_reaches_the_gaussian_minimiser(trained_projection):
  """Tolerance: at every grid time, the RMS error over x_pred in E y +- 2 sd(y) is below 10 % of
  the minimiser's RMS there (plus 0.01 absolute). A loss without the lambda term, or aimed at
  m(t) instead of m(t - dt), misses by more at most times (checked below)."""
  fn, params, _ = trained_projection
  times = np.linspace(1.0, EPS, N_TRAIN)
  errors, off_lambda = [], []
  for t in times:
    y = y_grid(t)
    expected = gaussian_minimiser(t, y)
    got = np.asarray(fn(params, jnp.asarray(y, jnp.float32), jnp.full(5, t, jnp.float32)))
    rms = np.sqrt(np.mean(expected**2))
    errors.append(np.sqrt(np.mean((got - expected)**2)) / (0.1 * rms + 0.01))
    beta = gaussian.BETA_MIN + t * (gaussian.BETA_MAX - gaussian.BETA_MIN)
    wrong = expected * (1 + np.sqrt(beta / 2) / 2)  # the minimiser without the lambda term
    off_lambda.append(np.sqrt(np.mean((wrong - expected)**2)) / (0.1 * rms + 0.01))
  print('error / tolerance per t:', np.round(errors, 2))
  assert max(errors) < 1, errors
  # The tolerance tells the two losses apart except near eps, where lambda -> 0.
  assert sum(o > 1 for o in off_lambda) >= N_TRAIN - 2, off_lambda


def test_loss_at_the_minimiser_is_below_the_trained_one(trained_projection):
  """The closed-form T* (as a projection_fn) has a lower loss than the trained network, and
  the trained network comes within 3 % of it (Monte Carlo on 20k examples)."""
  from sde_jax import projection  # pylint: disable=g-import-not-at-top
  fn, params, _ = trained_projection
  sde = sde_lib.VPSDE()

  def exact(params, x, t):
    del params
    return jax.pure_callback(
        lambda x, t: gaussian_minimiser(np.asarray(t)[:, None], np.asarray(x, np.float64))
        .astype(np.float32), jax.ShapeDtypeStruct(x.shape, jnp.float32), x, t)

  score = gaussian.score_fn('vpsde', MU, S**2 * np.eye(2))
  batch = {"image": MU[None] + S * jax.random.normal(jax.random.key(7), (20000, 2))}
  key = jax.random.key(8)
  best = projection.projection_loss_fn(sde, score, None, exact, lambda x: x, (N_TRAIN,), EPS)
  trained = projection.projection_loss_fn(sde, score, None, fn, lambda x: x, (N_TRAIN,), EPS)
  zero = projection.projection_loss_fn(sde, score, None, zero_projection, lambda x: x,
                                       (N_TRAIN,), EPS)
  l_best, l_trained = float(best(None, key, batch)[0]), float(trained(params, key, batch)[0])
  l_zero = float(zero(None, key, batch)[0])
  assert l_best <= l_trained <= 1.03 * l_best, (l_best, l_trained)
  assert l_zero > 1.5 * l_best, (l_zero, l_best)


# --- The jobs: a score checkpoint -> train-projection -> sample --------------------------------
SCORE_RUN = dict(model=dict(num_scales=6), eval=dict(batch_size=4))
PP = dict(sampling=dict(method='predict_project', pp_step_size=2.0))


def tiny(**overrides):
  from tests import helpers  # pylint: disable=g-import-not-at-top
  merged = {k: dict(v) for k, v in SCORE_RUN.items()}
  for section, fields in overrides.items():
    merged.setdefault(section, {}).update(fields)
  return helpers.tiny_config('digits/ddpmpp_continuous.py', **merged)


@pytest.fixture(scope='module')
def score_workdir(tmp_path_factory):
  """A workdir with a score checkpoint at step 2 of the tiny digits DDPM++ (initial weights:
  the projection job only needs a frozen score network; the score trainer is test_train's)."""
  import optax  # pylint: disable=g-import-not-at-top
  from sde_jax import checkpoints, models, train  # pylint: disable=g-import-not-at-top
  from sde_jax.score_model import ScoreModel  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('pp')
  score_model = ScoreModel.from_config(tiny())
  params = jax.jit(lambda k: models.init_params(score_model.model, k,
                                                (1, *score_model.image_shape)))(
                                                    jax.random.key(0))
  state = train.TrainState(np.int32(2), params, optax.adam(1e-3).init(params), params,
                           jax.random.key(0))
  manager = checkpoints.checkpoint_manager(workdir, item_names=checkpoints.TRAIN_ITEMS,
                                           writer=True)
  train.save_state(manager, state, 2, {})
  manager.close()
  return workdir


def _resumes_guarded(flags, workdir):
  """A resume of the projection trained from ``flags`` in ``workdir`` with another learning
  rate, or another N or eps of the sampler (the grid of its loss, though score training leaves
  the sampling section free), is refused naming the field before anything is compiled; a field
  allowed by its config name resumes."""
  from sde_jax import train  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import train_projection as projection_job  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  for section, name, value, refused in (
      ('projection.optim', 'lr', 1.0, r'projection_job\.optim\.lr: 0\.0002 \(saved\) -> 1\.0'),
      ('sampling', 'pp_n_steps', 4, r'projection_job\.sampling\.pp_n_steps: 6 \(saved\) -> 4'),
      ('sampling', 'eps', 0.01, r'projection_job\.sampling\.eps: 0\.001 \(saved\) -> 0\.01')):
    config = helpers.parse_flags(flags)
    with config.unlocked():  # sampling.eps is not a field of the config file
      functools.reduce(getattr, section.split('.'), config)[name] = value
    with pytest.raises(train.ConfigChangeError, match=refused):
      projection_job.train_projection(config, str(workdir))
  state = projection_job.train_projection(config, str(workdir),
                                          allow_config_change=('sampling.eps',))
  assert int(state.step) == 3


def _score_trained_on(workdir, step: int) -> None:
  """Saves ``workdir``'s score checkpoint again as ``step``, as if its training had gone on."""
  import optax  # pylint: disable=g-import-not-at-top
  from sde_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  state, _ = checkpoints.restore(workdir)
  manager = checkpoints.checkpoint_manager(workdir, item_names=checkpoints.TRAIN_ITEMS,
                                           writer=True)
  train.save_state(manager, train.TrainState(np.int32(step), state.params,
                                             optax.adam(1e-3).init(state.params),
                                             state.params_ema, jax.random.key(0)), step, {})
  manager.close()


def _eval_refuses_other_score_checkpoints(config, workdir, mismatch: str, monkeypatch):
  """``sde-jax eval`` with a projection trained against step 2 of ``workdir``, whose checkpoint
  2 is step 16 (snapshot_freq 8): a range of checkpoints is refused before anything is loaded;
  checkpoint 2 when its turn comes (the Inception network and data statistics stubbed)."""
  from sde_jax.jobs import evaluate as eval_job  # pylint: disable=g-import-not-at-top
  for name in ('weights.npz', 'stats.npz'):
    (workdir / name).touch()
  with config.unlocked():
    config.eval.update(enable_sampling=True, enable_loss=False, enable_bpd=False, begin_ckpt=0,
                       end_ckpt=2, inception_weights=str(workdir / 'weights.npz'),
                       stats_path=str(workdir / 'stats.npz'))
  with pytest.raises(ValueError, match=r'eval.begin_ckpt=0 to eval.end_ckpt=2 .* against one '
                                       r'score checkpoint \(step 2\)'):
    eval_job.evaluate(config, str(workdir))
  monkeypatch.setattr(eval_job, 'load_inception', lambda *_: types.SimpleNamespace(weights='w'))
  monkeypatch.setattr(eval_job, 'load_data_pools', lambda *_: None)
  config.eval.begin_ckpt = 2
  with pytest.raises(ValueError, match=mismatch):
    eval_job.evaluate(config, str(workdir))


def test_train_projection_then_sample(score_workdir, monkeypatch):
  from sde_jax import checkpoints, projection  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import sample as job  # pylint: disable=g-import-not-at-top
  from sde_jax.jobs import train_projection as projection_job  # pylint: disable=g-import-not-at-top
  from sde_jax.score_model import ScoreModel  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  # The configs as `sde-jax train-projection` / `sample` parse them from the command line.
  flags = helpers.tiny_flags('digits/ddpmpp_continuous.py', **SCORE_RUN)
  config = helpers.parse_flags(flags)
  with pytest.raises(FileNotFoundError,
                     match=f'{score_workdir}/projection/checkpoints.*train-projection'):
    job.sample(tiny(**PP), str(score_workdir), num_samples=2)  # no projection yet
  state = projection_job.train_projection(config, str(score_workdir))
  assert int(state.step) == 3
  assert sorted(p.name for p in (score_workdir / 'projection' / 'checkpoints').iterdir()) == ['3']
  assert list((score_workdir / 'projection' / 'tensorboard').iterdir())
  _resumes_guarded(flags, score_workdir)
  # The score model trained on to step 16: sample (and eval) refuse to pair the projection,
  # trained against step 2, with it unless told to.
  _score_trained_on(score_workdir, 16)
  config = helpers.parse_flags(flags + ['--config.sampling.method=predict_project',
                                        '--config.sampling.pp_n_steps=4'])
  mismatch = (rf'{score_workdir}/projection \(step 3\) was trained against the score checkpoint '
              r'of step 2, but the score checkpoint used is step 16\..*--allow_projection_mismatch')
  with pytest.raises(ValueError, match=mismatch):
    job.sample(config, str(score_workdir), num_samples=3)
  path = job.sample(config, str(score_workdir), num_samples=3, allow_projection_mismatch=True)
  samples = np.load(path)['samples']
  chex.assert_shape(samples, (3, 8, 8, 1))
  assert samples.dtype == np.uint8
  # The projection network is the score network's family at half its channels.
  restored = projection.restore_projection(config, str(score_workdir),
                                           ScoreModel.from_config(config))
  assert restored.step == 3 and restored.score_step == 2
  chex.assert_trees_all_close(restored.params, state.params_ema)
  assert projection.get_projection_model(config).nf == config.model.nf // 2
  score_params = checkpoints.num_params(checkpoints.restore(score_workdir)[0].params_ema)
  assert checkpoints.num_params(restored.params) < score_params / 2
  _eval_refuses_other_score_checkpoints(config, score_workdir, mismatch, monkeypatch)


def test_projection_jobs_say_what_is_missing(tmp_path):
  from sde_jax.jobs import config_check  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = helpers.run_cli('train-projection', *helpers.tiny_flags('digits/ddpmpp_continuous.py'),
                         f'--workdir={empty}')
  assert proc.returncode != 0
  assert f'{empty}/checkpoints, which holds no checkpoint' in proc.stderr, proc.stderr[-2000:]
  assert not (empty / 'projection').exists()
  bad = tiny(projection=dict(name='resnet', train_n_steps=(0,)))
  with pytest.raises(ValueError) as e:
    config_check.check(bad, 'train-projection')
  assert "config.model.name='resnet' is not a known model" in str(e.value)
  assert 'projection.train_n_steps=(0,); expected None' in str(e.value)
  with pytest.raises(ValueError, match="projection.name='ncsn' cannot be a projection network"):
    config_check.check(tiny(projection=dict(name='ncsn')), 'train-projection')
  with pytest.raises(ValueError, match='step_size=-1.0 must be finite'):
    config_check.check(tiny(sampling=dict(method='predict_project', pp_step_size=-1.)), 'sample')
  with pytest.raises(ValueError, match="sampling.method='predict_project'; expected another"):
    config_check.check(tiny(training=dict(snapshot_sampling=True), **PP), 'train')
