"""A job's whole config checked before the job creates anything on disk or compiles anything.

Every job function calls :func:`check` first (and so every ``sde-jax`` command does): a bad value
is one ``ValueError`` that lists every bad field with its value and what was expected, instead of
the first one found after the workdir was made or the state initialised. The checks of the
factories (names of SDEs, models, data sets, samplers, predictors and correctors; the samplers'
own option checks; the device split of a batch) are called here, not restated.

What is checked, by command (docs/training.md has the list for users):

* every command that builds the score model (train, sample, eval, inpaint, colorize,
  ``sample --class``, import): ``training.sde`` and its parameters (``0 < sigma_min <
  sigma_max``; ``0 <= beta_min <= beta_max``; ``num_scales >= 1``), ``model.name`` and its
  fields, ``data.dataset`` and its image size and channels, ``training.continuous`` against the
  SDE;
* a folder of images (``data.dataset='folder'``), for the commands that read it (train, eval,
  fid-stats, train-classifier): the folder and every file in it (images only, one channel count,
  none smaller than ``data.image_size``, class folders with ``data.labels_from_folders``, the
  eval split), and ``classifier.num_classes`` against its class folders;
* the DDPM chain: with VP / sub-VP, ``beta_max / num_scales < 1`` wherever the job takes
  ``sqrt(1 - beta_i)`` (reverse diffusion, ancestral sampling, the Langevin correctors, the ODE
  sampler's denoising step, discrete VP training), naming who needs it;
* the sampler, where the job samples (sample, eval with sampling, train with snapshots,
  inpaint / colorize / class, plan): ``sampling.method`` and the method's options (``eps``, the PC
  predictor and corrector with ``snr`` and ``n_steps_each``, ODE tolerances, DPM-Solver++
  order / schedule / NFE, Heun's NFE and ``rho`` / ``churn``, the adaptive solver's tolerances);
* batch sizes (positive; divisible by the devices and processes when the job's mesh is given,
  as ``sde-jax plan``'s topology gives one),
  training periods (positive multiples of ``n_jitted_steps``, ``n_iters >= n_jitted_steps``,
  ``keep_last >= 1``), for the score model and the classifier;
* eval options (:class:`sde_jax.evaluate.settings.EvalSettings`) and the files the config
  names: ``eval.inception_weights`` and ``eval.stats_path`` must exist where they are read
  (checked through etils.epath, so ``gs://`` paths work), as must the files a command is given
  (``--checkpoint``, ``--folder``).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable

from etils import epath

from sde_jax import data as data_lib
from sde_jax import models, parallel, projection, sampling
from sde_jax import sde as sde_lib
from sde_jax.controllable import factory, linear, masks
from sde_jax.evaluate import settings as settings_lib
from sde_jax.metrics import fid, inception
from sde_jax.models import classifier as classifier_lib
from sde_jax.sampling import adaptive_sde, dpm_solver, heun, ode, pc, predict_project
from sde_jax.train.schedule import schedule_problems

COMMANDS = ('train', 'sample', 'eval', 'inpaint', 'colorize', 'class', 'train-classifier',
            'train-projection', 'fid-stats', 'import', 'plan')
_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
# The samplers' own option checks, which build nothing (their factories compute time grids with
# jax, which would start the backend before ``jax.distributed.initialize``).
_OPTION_CHECKS = {'ode': ode.option_problems, 'dpm_solver++': dpm_solver.option_problems,
                  'heun': heun.option_problems, 'adaptive_sde': adaptive_sde.option_problems,
                  'predict_project': predict_project.option_problems}
# The commands that read the data set's images (a folder of them is scanned before they start).
_READS_DATA = ('train', 'eval', 'fid-stats', 'train-classifier', 'train-projection')


class _Problems(list):
  """The problems found so far, one line each."""

  def attempt(self, fn: Callable, *args, where: str = '', **kwargs):
    """``fn(*args, **kwargs)``, or None with its error recorded (an existing check), after
    ``where`` (the config section its option names belong to)."""
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the factories warn again when the job builds them
        return fn(*args, **kwargs)
    except _ERRORS as e:
      message = str(e).strip('"\'')  # KeyError quotes its message
      if not isinstance(e, ValueError):
        message = f'{type(e).__name__}: {message}'
      self.append(f'{where}: {message}' if where else message)
      return None

  def expect(self, ok: bool, field: str, value, expected: str) -> bool:
    if not ok:
      self.append(f'{field}={value!r}; expected {expected}.')
    return ok


def check(config, command: str, mesh=None, **files) -> None:
  """Checks everything ``command`` will read from ``config``, before anything is created.

  Args:
    config: the job's config.
    command: one of :data:`COMMANDS` (``'class'`` is ``sde-jax sample --class``).
    mesh: the job's device mesh, if it has one: batch sizes are then checked against its
      devices and the processes.
    **files: other paths the command reads, by flag name (``checkpoint=``, ``folder=``); each
      must exist (None: not given).

  Raises:
    ValueError: listing every bad field, its value and what was expected.
  """
  found = problems(config, command, mesh, **files)
  if found:
    lines = '\n'.join(f'  - {p}' for p in found)
    raise ValueError(f'sde-jax {command}: {len(found)} bad config value(s); nothing was '
                     f'started:\n{lines}')


def problems(config, command: str, mesh=None, **files) -> list[str]:
  """The problems :func:`check` reports, one line each (empty if none)."""
  found = _Problems()
  if command not in COMMANDS:
    raise ValueError(f'command={command!r} is not known; expected one of {list(COMMANDS)}.')
  for flag, path in files.items():
    if path is not None:
      found.expect(epath.Path(path).exists(), f'--{flag}', str(path), 'an existing path')
  sde = _sde_problems(config, found)
  _data_problems(config, command, found)
  if command != 'train-classifier':
    _model_problems(config, sde, found)
  users = []
  if command == 'train':
    tc = config.training
    _batch_problems('training.batch_size', tc.batch_size, mesh, found)
    found.extend(schedule_problems(tc, 'training'))
    if tc.get('snapshot_sampling'):
      _batch_problems('training.snapshot_num_samples', tc.snapshot_num_samples, None, found)
      users += _sampler_problems(config, sde, found)
      found.expect(str(config.sampling.method).lower() != 'predict_project',
                   'sampling.method', config.sampling.method,
                   "another method for training snapshots (the projection network of "
                   "'predict_project' is trained after the score model), or "
                   'training.snapshot_sampling=False')
  elif command == 'sample':
    _batch_problems('eval.batch_size', config.eval.batch_size, None, found)
    users += _sampler_problems(config, sde, found)
  elif command == 'plan':  # compiles the train, eval-loss and sampling programs
    _batch_problems('training.batch_size', config.training.batch_size, mesh, found)
    found.extend(schedule_problems(config.training, 'training'))
    _batch_problems('eval.batch_size', config.eval.batch_size, None, found)
    users += _sampler_problems(config, sde, found)
  elif command in ('eval', 'fid-stats'):
    settings = _eval_problems(config, command, found)
    if command == 'eval' and settings is not None and settings.enable_sampling:
      users += _sampler_problems(config, sde, found)
  elif command in ('inpaint', 'colorize', 'class'):
    users += _controllable_problems(config, command, sde, found)
  elif command == 'train-classifier':
    _classifier_problems(config, mesh, found)
  elif command == 'train-projection':
    _projection_problems(config, sde, mesh, found)
  if command not in ('train-classifier', 'fid-stats', 'import') and sde is not None:
    continuous = config.training.get('continuous', True)
    if not continuous and isinstance(sde, sde_lib.VPSDE):
      users.append('training.continuous=False (the DDPM loss and labels)')
  if sde is not None:
    found.extend(_chain_problems(sde, users))
  return list(found)


def _sde_problems(config, found: _Problems) -> sde_lib.SDE | None:
  """``training.sde`` and its parameters in ``config.model``; the SDE if they are good."""
  sde = found.attempt(sde_lib.from_config, config)
  if sde is None:
    return None
  m, before = config.model, len(found)
  found.expect(sde.N >= 1, 'model.num_scales', m.num_scales, 'an integer >= 1')
  if isinstance(sde, sde_lib.VESDE):
    found.expect(0 < sde.sigma_min < sde.sigma_max, 'model.sigma_min, model.sigma_max',
                 (m.sigma_min, m.sigma_max), '0 < sigma_min < sigma_max')
  else:
    found.expect(0 <= sde.beta_min <= sde.beta_max and sde.beta_max > 0,
                 'model.beta_min, model.beta_max', (m.beta_min, m.beta_max),
                 '0 <= beta_min <= beta_max, beta_max > 0')
  return sde if len(found) == before else None


def _chain_problems(sde: sde_lib.SDE, users: list[str]) -> list[str]:
  """``beta_max / N < 1`` when ``users`` (descriptions such as ``"predictor='ancestral_sampling'"``)
  take ``sqrt(1 - beta_i)`` of the DDPM chain of ``sde`` (VP or sub-VP)."""
  if not users or isinstance(sde, sde_lib.VESDE) or sde.beta_max / sde.N < 1:
    return []
  return [f'model.beta_max={sde.beta_max} with model.num_scales={sde.N} gives the DDPM chain '
          f'beta_N = beta_max / N = {sde.beta_max / sde.N:.3g} >= 1, and {", ".join(users)} '
          f'take sqrt(1 - beta_i) (NaN samples); expected beta_max / num_scales < 1: '
          f'num_scales >= {math.floor(sde.beta_max) + 1} or beta_max < {sde.N}.']


def _batch_problems(field: str, value, mesh, found: _Problems) -> None:
  if not found.expect(isinstance(value, int) and value > 0, field, value, 'a positive integer'):
    return
  if mesh is not None:
    found.attempt(parallel.check_batch_size, value, mesh, field)


def _data_problems(config, command: str, found: _Problems) -> None:
  """``data.dataset`` and the image size / channels it has (:func:`sde_jax.data.make_spec`);
  for a folder of images, where the command reads them, the images themselves (a scan of their
  headers: :func:`sde_jax.data.folder_splits`)."""
  spec = found.attempt(data_lib.make_spec, config, 'train', batch_size=1, seed=0, start_step=0,
                       process_index=0, process_count=1, uniform_dequantization=None)
  if spec is None or spec.dataset != data_lib.FOLDER_DATASET or command not in _READS_DATA:
    return
  splits = found.attempt(data_lib.folder_splits, config.data)
  if splits is None:
    return
  classifier = command == 'train-classifier'
  if classifier and 'classifier' not in config:
    return  # reported by _classifier_problems
  if command in ('train', 'train-classifier'):
    prefix = 'classifier.training' if classifier else 'training'
    batch = (config.classifier.training if classifier else config.training).batch_size
    found.expect(len(splits.train) >= batch, f'{prefix}.batch_size', batch,
                 f'at most the {len(splits.train)} training images under data.path (a train '
                 'epoch drops its last partial batch)')
  if classifier and found.expect(
      bool(splits.class_names), 'data.labels_from_folders',
      config.data.get('labels_from_folders', False),
      "True for train-classifier on data.dataset='folder' (the classes are the first-level "
      'folder names)'):
    classes = len(splits.class_names)
    found.expect(config.classifier.get('num_classes') == classes, 'classifier.num_classes',
                 config.classifier.get('num_classes'),
                 f'{classes}, the class folders under data.path ({", ".join(splits.class_names)})')


def _model_problems(config, sde, found: _Problems) -> None:
  """``model.name`` and its fields (:func:`sde_jax.models.get_model` builds the module, which
  initialises nothing)."""
  found.attempt(models.get_model, config)
  if sde is not None and not config.training.get('continuous', True):
    found.expect(not isinstance(sde, sde_lib.SubVPSDE), 'training.continuous', False,
                 "True for training.sde='subvpsde' (it has no discrete chain)")


def _image_shape(config) -> tuple[int, ...]:
  d = config.data
  return (1, d.image_size, d.image_size, d.num_channels)


def _sampler_problems(config, sde, found: _Problems) -> list[str]:
  """``config.sampling``: the method, then its options (the factory's own checks); returns who
  takes the DDPM chain's square roots."""
  if sde is None:
    return []
  options = found.attempt(sampling.options_from_config, config, sde)
  if options is None:
    return []
  method, options = options
  found.expect(0 < options['eps'] < sde.T, 'sampling.eps', options['eps'],
               f'0 < eps < T = {sde.T}')
  if method == 'pc':
    return _pc_problems(sde, options, found)
  if method == 'predict_project':
    _projection_network_problems(config, found)
  check_options = _OPTION_CHECKS[method]
  wanted = inspect.signature(check_options).parameters
  found.extend(f'config.sampling (method={method!r}): {p}' for p in check_options(
      **{name: value for name, value in options.items() if name in wanted}))
  if method == 'ode' and options['denoise'] and isinstance(sde, sde_lib.VPSDE):
    return ["sampling.method='ode' with sampling.noise_removal=True (its reverse-diffusion step)"]
  return []


def _pc_problems(sde, options: dict, found: _Problems) -> list[str]:
  """The predictor and the corrector (:func:`sde_jax.sampling.pc.option_problems`); returns those
  that take the DDPM chain's square roots."""
  args = (options['predictor'], options['corrector'])  # n_steps is sampling.n_steps_each
  found.extend(pc.option_problems(sde, *args, options['snr'], options['n_steps'],
                                  options['probability_flow'], where='sampling'))
  return pc.chain_users(sde, *args, where='sampling')


def _eval_problems(config, command: str, found: _Problems):
  """``config.eval`` (:class:`~sde_jax.evaluate.settings.EvalSettings`) and the files it names
  that the command reads."""
  settings = found.attempt(settings_lib.EvalSettings.from_config, config, check=False)
  if settings is None:
    return None
  found.extend(settings.problems())
  if command == 'fid-stats' or settings.enable_sampling:
    _file_problems('eval.inception_weights', settings.inception_weights,
                   "pytorch-fid's FID Inception weights (.pth, or an .npz converted from it); "
                   f'sde-jax never downloads them: get them from {inception.WEIGHTS_URL} '
                   '(docs/evaluation.md)', found)
  if command == 'eval' and settings.enable_sampling:
    name = fid.stats_filename(config.data.dataset, config.data.image_size,
                              config.data.get('category'))
    _file_problems('eval.stats_path', settings.stats_path,
                   "the data set's Inception features, which FID and KID compare samples with: "
                   f'`sde-jax fid-stats` writes them ({name}), or use the original score_sde '
                   'file of that name', found)
  return settings


def _file_problems(field: str, path, what: str, found: _Problems) -> None:
  if found.expect(bool(path), field, path, f'the path of {what}'):
    found.expect(epath.Path(path).exists(), field, str(path), f'an existing file: {what}')


def _controllable_problems(config, command: str, sde, found: _Problems) -> list[str]:
  """The PC sampler of ``config.sampling`` as the controllable samplers read it, and
  ``config.controllable``."""
  _batch_problems('eval.batch_size', config.eval.batch_size, None, found)
  c = config.get('controllable', {})
  if command == 'inpaint':
    found.attempt(masks.make_mask, str(c.get('mask', 'right_half')), _image_shape(config)[1:])
  if command == 'colorize':
    found.expect(config.data.num_channels == 3, 'data.num_channels', config.data.num_channels,
                 '3: colorization needs an RGB model')
  if command == 'class':
    found.expect('classifier' in config, 'config.classifier', None,
                 'a classifier section (sde-jax train-classifier trains it)')
  if command != 'class':
    method = str(c.get('method', 'replacement')).lower()
    found.expect(method in linear.METHODS, 'controllable.method', method,
                 f'one of {list(linear.METHODS)}')
  if sde is None:
    return []
  options = found.attempt(factory.options_from_config, config, command, sde)
  return [] if options is None else _pc_problems(sde, options, found)


def _classifier_problems(config, mesh, found: _Problems) -> None:
  """``config.classifier``: its network and its training schedule."""
  if not found.expect('classifier' in config, 'config.classifier', None,
                      'a classifier section (configs/digits/classifier.py has one)'):
    return
  found.attempt(classifier_lib.get_classifier, config)
  ct = config.classifier.training
  _batch_problems('classifier.training.batch_size', ct.batch_size, mesh, found)
  found.extend(schedule_problems(ct, 'classifier.training'))


def _projection_network_problems(config, found: _Problems) -> bool:
  """``config.projection``'s network (:func:`sde_jax.projection.get_projection_model`)."""
  if not found.expect('projection' in config, 'config.projection', None,
                      'a projection section (configs._recipes.projection)'):
    return False
  p = config.projection
  found.expect(float(p.width) > 0, 'projection.width', p.width, 'a positive factor')
  return found.attempt(projection.get_projection_model, config) is not None


def _projection_problems(config, sde, mesh, found: _Problems) -> None:
  """``config.projection``: its network, step counts, schedule; and the sampler's eps."""
  if not _projection_network_problems(config, found) and 'projection' not in config:
    return
  p = config.projection
  steps = p.get('train_n_steps')
  found.expect(steps is None or (len(steps) > 0 and all(
      isinstance(n, int) and n >= 1 for n in steps)), 'projection.train_n_steps', steps,
               'None (the sampler\'s N) or a non-empty tuple of integers >= 1')
  _batch_problems('projection.training.batch_size', p.training.batch_size, mesh, found)
  found.extend(schedule_problems(p.training, 'projection.training'))
  if sde is not None:
    eps = sampling.config_fields(config, sde)['eps']
    found.expect(0 < eps < sde.T, 'sampling.eps', eps,
                 f'0 < eps < T = {sde.T} (the grid the projection is trained on)')
