"""Every config under configs/: loads as the command line loads it, has the fields the code reads
with valid values, and takes ``--config.a.b=v`` overrides."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from sde_jax import sde as sde_lib
from sde_jax.sampling import SAMPLERS, correctors, get_sampler_from_config, predictors
from tests import gaussian
from tests.helpers import parse_flags

# config_flags loads config files with importlib's deprecated load_module(); not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, 'configs')

# Config files: every module under configs/ but the bases (default_*) and helpers (_*).
CONFIGS = sorted(
    os.path.relpath(path, CONFIG_DIR)
    for path in glob.glob(os.path.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if not os.path.basename(path).startswith(('_', 'default_')))
NON_IMAGE = {'toy_2d.py'}
IMAGE_CONFIGS = [c for c in CONFIGS if c not in NON_IMAGE]

# The configs/ tree of yang-song/score_sde (and score_sde_pytorch): 3 bases and 39 configs.
ORIGINAL_BASES = ['default_celeba_configs.py', 'default_cifar10_configs.py',
                  'default_lsun_configs.py']
ORIGINAL_CONFIGS = [
    'subvp/cifar10_ddpm_continuous.py', 'subvp/cifar10_ddpmpp_continuous.py',
    'subvp/cifar10_ddpmpp_deep_continuous.py', 'subvp/cifar10_ncsnpp_continuous.py',
    'subvp/cifar10_ncsnpp_deep_continuous.py',
    've/bedroom_ncsnpp_continuous.py', 've/celeba_ncsnpp.py',
    've/celebahq_256_ncsnpp_continuous.py', 've/celebahq_ncsnpp_continuous.py',
    've/church_ncsnpp_continuous.py', 've/cifar10_ddpm.py', 've/cifar10_ncsnpp.py',
    've/cifar10_ncsnpp_continuous.py', 've/cifar10_ncsnpp_deep_continuous.py',
    've/ffhq_256_ncsnpp_continuous.py', 've/ffhq_ncsnpp_continuous.py',
    've/ncsn/celeba.py', 've/ncsn/celeba_124.py', 've/ncsn/celeba_1245.py', 've/ncsn/celeba_5.py',
    've/ncsn/cifar10.py', 've/ncsn/cifar10_124.py', 've/ncsn/cifar10_1245.py',
    've/ncsn/cifar10_5.py',
    've/ncsnv2/bedroom.py', 've/ncsnv2/celeba.py', 've/ncsnv2/cifar10.py',
    'vp/cifar10_ddpmpp.py', 'vp/cifar10_ddpmpp_continuous.py',
    'vp/cifar10_ddpmpp_deep_continuous.py', 'vp/cifar10_ncsnpp.py',
    'vp/cifar10_ncsnpp_continuous.py', 'vp/cifar10_ncsnpp_deep_continuous.py',
    'vp/ddpm/bedroom.py', 'vp/ddpm/celebahq.py', 'vp/ddpm/church.py', 'vp/ddpm/cifar10.py',
    'vp/ddpm/cifar10_continuous.py', 'vp/ddpm/cifar10_unconditional.py',
]

# Fields the training, evaluation and sampling code reads from every image config.
REQUIRED = {
    'training': ('sde', 'continuous', 'reduce_mean', 'likelihood_weighting', 'batch_size',
                 'n_iters', 'n_jitted_steps', 'log_freq', 'eval_freq', 'snapshot_freq',
                 'snapshot_freq_for_preemption', 'snapshot_sampling'),
    'sampling': ('method', 'predictor', 'corrector', 'snr', 'n_steps_each', 'noise_removal',
                 'probability_flow'),
    'eval': ('begin_ckpt', 'end_ckpt', 'batch_size', 'num_samples', 'enable_sampling',
             'enable_loss', 'enable_bpd', 'bpd_dataset'),
    'data': ('dataset', 'image_size', 'num_channels', 'centered', 'random_flip',
             'uniform_dequantization'),
    'model': ('name', 'sigma_min', 'sigma_max', 'beta_min', 'beta_max', 'num_scales', 'dropout',
              'ema_rate', 'scale_by_sigma', 'nf', 'normalization', 'nonlinearity',
              'embedding_type'),
    'optim': ('optimizer', 'lr', 'beta1', 'eps', 'weight_decay', 'warmup', 'grad_clip'),
}
# Fields each network reads on top of those.
MODEL_FIELDS = {
    'ddpm': ('ch_mult', 'num_res_blocks', 'attn_resolutions', 'resamp_with_conv', 'conditional'),
    'ncsnpp': ('ch_mult', 'num_res_blocks', 'attn_resolutions', 'resamp_with_conv', 'conditional',
               'fir', 'fir_kernel', 'skip_rescale', 'resblock_type', 'progressive',
               'progressive_input', 'progressive_combine', 'attention_type', 'init_scale',
               'fourier_scale', 'conv_size'),
    'ncsn': ('interpolation', 'num_classes'),
    'ncsnv2_64': ('interpolation',),
    'ncsnv2_128': ('interpolation',),
    'ncsnv2_256': ('interpolation',),
}
DATA_FIELDS = {'LSUN': ('category',), 'FFHQ': ('tfrecords_path',), 'CelebAHQ': ('tfrecords_path',),
               'folder': ('path', 'eval_path', 'eval_fraction', 'labels_from_folders',
                          'skip_bad_files', 'upsample_small')}


def _parse(rel, *overrides):
  """Loads configs/``rel`` through config_flags, as ``sde-jax --config`` does."""
  return parse_flags([f'--config={os.path.join(CONFIG_DIR, rel)}', *overrides])


def test_every_original_config_is_here():
  assert len(ORIGINAL_CONFIGS) == 39 and len(set(ORIGINAL_CONFIGS)) == 39
  assert not set(ORIGINAL_CONFIGS) - set(CONFIGS)
  for base in ORIGINAL_BASES:
    assert os.path.isfile(os.path.join(CONFIG_DIR, base))


@pytest.mark.parametrize('rel', CONFIGS)
def test_sde_and_sampler_are_valid(rel):
  config = _parse(rel)
  assert {'training', 'sampling', 'eval', 'data', 'model', 'optim', 'seed'} <= set(config)
  assert 'device' not in config
  assert config.training.sde in sde_lib.SDES
  sde = sde_lib.from_config(config)
  assert sde.N == config.model.num_scales
  sampling = config.sampling
  assert sampling.method in SAMPLERS
  assert sampling.predictor in predictors.PREDICTORS
  assert sampling.corrector in correctors.CORRECTORS
  assert (sampling.predictor, sampling.corrector) != ('none', 'none')
  assert sampling.snr > 0 and sampling.n_steps_each >= 1
  for name in ('continuous', 'reduce_mean', 'likelihood_weighting'):
    assert isinstance(config.training[name], bool), name
  for name in ('noise_removal', 'probability_flow'):
    assert isinstance(sampling[name], bool), name
  # Every sampler builds from every config: the options it reads are fields there (a field
  # get_sampler does not take would be a TypeError, a missing one an AttributeError).
  for method in SAMPLERS:
    config.sampling.method = method
    # Predict-Project also takes the projection network's function (not a config field).
    extra = ({'projection_fn': lambda params, x, t: x} if method == 'predict_project' else {})
    assert callable(get_sampler_from_config(config, sde, (2, 8, 8, 2), **extra))  # 128 dims
  assert isinstance(config.data.centered, bool)


@pytest.mark.parametrize('rel', IMAGE_CONFIGS)
def test_image_config_fields(rel):
  config = _parse(rel)
  for section, names in REQUIRED.items():
    missing = [n for n in names if n not in config[section]]
    assert not missing, f'{section} lacks {missing}'
  model, data, training = config.model, config.data, config.training
  assert model.name in MODEL_FIELDS
  assert not [n for n in MODEL_FIELDS[model.name] if n not in model]
  assert not [n for n in DATA_FIELDS.get(data.dataset, ()) if n not in data]
  if data.dataset in ('digits', 'digits_rgb'):  # embedded: the README's demo, its RGB variant
    assert data.num_channels == {'digits': 1, 'digits_rgb': 3}[data.dataset]
    assert data.image_size % 8 == 0 and not data.random_flip
  else:
    assert data.num_channels == 3 and data.image_size in (32, 64, 128, 256, 1024)
  assert 0 < model.sigma_min < model.sigma_max and 0 < model.beta_min < model.beta_max
  assert 0 <= model.ema_rate < 1 and 0 <= model.dropout < 1
  if model.name == 'ncsn':  # one noise-conditional embedding per noise level
    assert model.num_classes == model.num_scales
  if model.get('embedding_type') == 'fourier' and model.name == 'ncsnpp':
    assert training.continuous  # Fourier features embed sigma, not a level index
  # The training loop runs n_jitted_steps per call, so every period must be a multiple of it.
  for period in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    assert training[period] % training.n_jitted_steps == 0, period
  assert config.eval.begin_ckpt <= config.eval.end_ckpt


@pytest.mark.parametrize('rel', IMAGE_CONFIGS)
def test_command_line_overrides(rel):
  # Noise scales and weight decay take floats in every config (some were ints in the original).
  config = _parse(rel, '--config.model.nf=64', '--config.model.sigma_max=50.5',
                  '--config.optim.weight_decay=1e-4', '--config.training.sde=vpsde')
  assert config.model.nf == 64 and config.model.sigma_max == 50.5
  assert config.optim.weight_decay == 1e-4 and config.training.sde == 'vpsde'
  with pytest.raises(AttributeError, match='nff'):  # unknown fields stay errors (locked config)
    _parse(rel, '--config.model.nff=64')


def test_ncsn_num_classes_follows_num_scales():
  config = _parse('ve/ncsn/cifar10.py', '--config.model.num_scales=20')
  assert config.model.num_scales == config.model.num_classes == 20


def test_deep_variant_differs_from_its_sibling_only_in_depth():
  deep = _parse('vp/cifar10_ddpmpp_deep_continuous.py').to_dict()
  base = _parse('vp/cifar10_ddpmpp_continuous.py').to_dict()
  assert (deep['model']['num_res_blocks'], deep['training']['n_iters']) == (8, 950001)
  deep['model']['num_res_blocks'], deep['training']['n_iters'] = 4, 1300001
  assert deep == base


def test_loads_by_path_from_any_working_directory(tmp_path):
  # The installed `configs` package resolves the imports inside a config file loaded by path.
  code = ('import sys; from absl import flags; from ml_collections import config_flags; '
          "config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv); "
          'print(flags.FLAGS.config.model.nf, flags.FLAGS.config.training.sde)')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run(
      [sys.executable, '-c', code,
       f'--config={os.path.join(CONFIG_DIR, "ve", "cifar10_ncsnpp_continuous.py")}',
       '--config.model.nf=64'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['64', 'vesde']


def test_config_sampling_defaults_are_the_samplers():
  """configs._recipes.sampling holds the defaults of sampling.CONFIG_FIELDS (which apply to
  configs without the fields), so that a config that states them samples as one that does not;
  nfe is None there, each method's own budget."""
  from configs import _recipes  # pylint: disable=g-import-not-at-top
  from sde_jax import sampling  # pylint: disable=g-import-not-at-top
  section = _recipes.sampling()
  for method, fields in sampling.CONFIG_FIELDS.items():
    for field, _, _, default in fields:
      if default is sampling.REQUIRED:  # the PC sampler's, set with the SDE
        continue
      if field == 'nfe':
        assert section.nfe is None
      else:
        assert section[field] == default, (method, field)


@pytest.mark.parametrize('rel', ['toy_2d.py', 'digits/ddpmpp_continuous.py'])
def test_fast_sampler_options_from_the_command_line(rel):
  """--config.sampling.* reaches the sampler: the budget is the NFE it spends, and a bad option
  value is the sampler's own error."""
  import jax
  import jax.numpy as jnp
  config = _parse(rel, '--config.sampling.method=dpm_solver++', '--config.sampling.nfe=7',
                  '--config.sampling.order=3', '--config.sampling.schedule=time_quadratic')
  sde = sde_lib.from_config(config)
  sampler = get_sampler_from_config(config, sde, (3, 2))
  score = gaussian.score_fn(config.training.sde, np.zeros(2), np.eye(2))  # of N(0, I) data
  x, nfe = sampler(jax.random.key(0), score, None)
  assert nfe == 7 and x.shape == (3, 2) and bool(jnp.isfinite(x).all())
  config = _parse(rel, '--config.sampling.method=heun', '--config.sampling.s_tmax=inf',
                  '--config.sampling.churn=0.5')
  assert config.sampling.s_tmax == float('inf') and config.sampling.nfe is None
  x, nfe = get_sampler_from_config(config, sde, (3, 2))(jax.random.key(0), score, None)
  assert nfe == 35 and bool(jnp.isfinite(x).all())
  with pytest.raises(ValueError, match='schedule'):
    get_sampler_from_config(_parse(rel, '--config.sampling.method=dpm_solver++',
                                   '--config.sampling.schedule=cosine'), sde, (3, 2))
