"""Bad config values stop every job before it creates its workdir or compiles anything, with one
error that names every bad field, its value and what was expected (sde_jax/jobs/config_check.py).

Each case calls the job function the ``sde-jax`` command calls, on the tiny digits config with
the case's overrides, and checks the message, that ``tmp_path / 'w'`` was never created and that
XLA compiled nothing.
"""

import jax
import pytest

from sde_jax.jobs import controllable, evaluate, fid_stats, import_checkpoint, config_check
from sde_jax.jobs import sample as sampling_job
from sde_jax.jobs import train, train_classifier
from tests import helpers

DIGITS = 'digits/ddpmpp_continuous.py'
CLASSIFIER = 'digits/classifier.py'

JOBS = {
    'train': train.train_and_evaluate,
    'sample': lambda config, workdir: sampling_job.sample(config, workdir, 4),
    'eval': evaluate.evaluate,
    'inpaint': lambda config, workdir: controllable.inpaint_job(config, workdir, num_images=2),
    'colorize': lambda config, workdir: controllable.colorize_job(config, workdir, num_images=2),
    'class': lambda config, workdir: controllable.class_job(config, workdir, 1, num_samples=2),
    'train-classifier': train_classifier.train_classifier,
    'fid-stats': fid_stats.dataset_stats,
    'import': lambda config, workdir: import_checkpoint.import_to_workdir(config, '/no/such.pth',
                                                                    workdir),
}

# (command, config file, overrides, fragments the message must hold[, fields to add to
# config.sampling])
CASES = {
    'batch_size=0': ('train', DIGITS, dict(training=dict(batch_size=0)),
                     ['training.batch_size=0; expected a positive integer']),
    'batch_size=12 on 8 devices': ('train', DIGITS, dict(training=dict(batch_size=12)),
                                   ['training.batch_size=12 is not divisible by the number of '
                                    'devices, 8']),
    'unknown method, snapshots on': (
        'train', DIGITS, dict(training=dict(snapshot_sampling=True),
                              sampling=dict(method='bogus')),
        ["sampling.method='bogus' is not known; expected one of ['adaptive_sde', "
         "'dpm_solver++', 'heun', 'ode', 'pc', 'predict_project']"]),
    'five at once': (
        'train', DIGITS, dict(training=dict(batch_size=0, n_jitted_steps=2, log_freq=3,
                                            sde='vxsde'),
                              model=dict(name='unet'), data=dict(dataset='mnist')),
        ['5 bad config value(s)', 'training.batch_size=0',
         'training.log_freq=3; expected a positive multiple of training.n_jitted_steps=2',
         "config.training.sde='vxsde' is not a known SDE; expected one of ['subvpsde', 'vesde', "
         "'vpsde']", "config.model.name='unet' is not a known model; expected one of",
         "data.dataset='mnist' is not a known data set; expected one of"]),
    'VP chain beta_max / N >= 1': (
        'sample', DIGITS, dict(model=dict(num_scales=8)),
        ['beta_N = beta_max / N = 2.5 >= 1', "sampling.predictor='reverse_diffusion'",
         "sampling.corrector='langevin'", 'num_scales >= 21 or beta_max < 8']),
    'VP chain, ancestral sampling': (
        'sample', DIGITS, dict(model=dict(num_scales=10), sampling=dict(
            predictor='ancestral_sampling', corrector='none')),
        ["beta_N = beta_max / N = 2 >= 1, and sampling.predictor='ancestral_sampling' take"]),
    'unknown predictor and corrector': (
        'sample', DIGITS, dict(sampling=dict(predictor='ddim', corrector='hmc')),
        ["sampling.predictor='ddim' is not known; expected one of ['ancestral_sampling'",
         "sampling.corrector='hmc' is not known; expected one of ['ald'"]),
    'snr and n_steps_each': (
        'sample', DIGITS, dict(sampling=dict(snr=0.0, n_steps_each=0)),
        ['sampling.eps=0.0; expected 0 < eps < T = 1.0', "corrector='langevin' needs n_steps "
         '>= 1, got 0', "corrector='langevin' needs snr > 0, got 0.0"],
        {'eps': 0.0}),  # a field the configs leave out (None: the original's sampling_eps)
    'ODE tolerances': ('sample', DIGITS, dict(sampling=dict(method='ode', rtol=0.0, atol=-1.0)),
                       ['rtol=0.0 must be positive', 'atol=-1.0 must be positive']),
    'DPM-Solver++ order and NFE': (
        'sample', DIGITS, dict(sampling=dict(method='dpm_solver++', order=4, nfe=1,
                                             schedule='karras')),
        ['needs order 1, 2 or 3, got 4', "schedule='karras' is not known",
         'nfe=1 leaves no step']),
    'Heun NFE and rho': ('sample', DIGITS, dict(sampling=dict(method='heun', nfe=1, rho=-1.0)),
                         ['nfe=1 leaves no step', 'rho=-1.0 must be positive']),
    'adaptive tolerances': ('sample', DIGITS, dict(sampling=dict(method='adaptive_sde',
                                                                 reltol=0.0, h_init=-1.0)),
                            ['rtol=0.0 must be positive', 'h_init=-1.0 must be positive']),
    'VE sigmas': ('sample', DIGITS, dict(training=dict(sde='vesde'),
                                         model=dict(sigma_min=50.0, sigma_max=1.0)),
                  ['model.sigma_min, model.sigma_max=(50.0, 1.0); expected 0 < sigma_min < '
                   'sigma_max']),
    'VP betas and N': ('sample', DIGITS, dict(model=dict(beta_min=5.0, beta_max=1.0,
                                                         num_scales=0)),
                       ['model.num_scales=0; expected an integer >= 1',
                        'model.beta_min, model.beta_max=(5.0, 1.0); expected 0 <= beta_min <= '
                        'beta_max']),
    'eval files and options': (
        'eval', DIGITS, dict(eval=dict(enable_sampling=True, inception_weights='/no/incep.pth',
                                       stats_path=None, num_samples=1, bpd_solver='euler')),
        ["eval.inception_weights='/no/incep.pth'; expected an existing file",
         'eval.stats_path=None; expected the path of', 'eval.num_samples=1; expected at least 2',
         "eval.bpd_solver='euler'; expected one of ['dopri5', 'rk45', 'tsit5']"]),
    'eval samples with a bad sampler': (
        'eval', DIGITS, dict(eval=dict(enable_sampling=True), sampling=dict(method='sde')),
        ["sampling.method='sde' is not known", 'eval.inception_weights=None']),
    'inpaint mask and method': (
        'inpaint', DIGITS, dict(controllable=dict(mask='square', method='guided')),
        ["mask='square' is not known; expected one of", "controllable.method='guided'; "
         "expected one of ['replacement', 'tmpd']"]),
    'inpaint needs PC': ('inpaint', DIGITS, dict(sampling=dict(method='heun')),
                         ["config.sampling.method='heun': inpainting, colorization"]),
    'colorize gray digits': ('colorize', DIGITS, {}, ['data.num_channels=1; expected 3']),
    'class without a classifier': ('class', DIGITS, {}, ['config.classifier=None; expected a '
                                                         'classifier section']),
    'classifier schedule': (
        'train-classifier', CLASSIFIER, dict(classifier=dict(training=dict(
            batch_size=0, n_jitted_steps=1, eval_freq=0))),
        ['classifier.training.batch_size=0; expected a positive integer',
         'classifier.training.eval_freq=0; expected a positive multiple']),
    'fid-stats weights': ('fid-stats', DIGITS, {}, ['eval.inception_weights=None']),
    'import checkpoint': ('import', DIGITS, {}, ["--checkpoint='/no/such.pth'; expected an "
                                                 'existing path']),
}


@pytest.fixture
def compilations():
  """The XLA compilations while the test runs."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize('case', list(CASES))
def test_bad_values_stop_the_job_before_anything_starts(case, tmp_path, compilations):
  command, relative, overrides, fragments, *added = CASES[case]
  config = helpers.tiny_config(relative, **overrides)
  config.sampling.update(*added)
  workdir = tmp_path / 'w'
  with pytest.raises(ValueError, match=f'sde-jax {command}: ') as error:
    JOBS[command](config, str(workdir))
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))
  assert not workdir.exists()
  assert compilations == []


@pytest.mark.parametrize('command, relative', [
    ('train', DIGITS), ('sample', DIGITS), ('eval', DIGITS), ('inpaint', DIGITS),
    ('train-classifier', CLASSIFIER), ('class', CLASSIFIER)])
def test_the_tiny_configs_pass(command, relative):
  assert config_check.problems(helpers.tiny_config(relative), command) == []
