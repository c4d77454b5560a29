"""Network blocks shared by the override files: each sets ``config.model`` fields for one family.

Every function takes ``config.model`` and keyword overrides for the fields that differ, e.g.
``ncsnpp(config.model, num_res_blocks=8)``. The noise scales, dropout and embedding type come
from the data-set base; ``scale_by_sigma`` and ``ema_rate`` from the training recipe
(``configs._recipes``), except for the NCSN family, whose noise conditioning is architectural.
"""

# The U-Net of Ho et al. (2020) at 32x32; NCSN++ and DDPM++ extend it.
_DDPM = dict(
    name='ddpm',
    normalization='GroupNorm',
    nonlinearity='swish',
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    resamp_with_conv=True,
    conditional=True,
)

# NCSN++ at 32 to 64 px: BigGAN residual blocks, FIR resampling, residual input pyramid.
_NCSNPP = dict(
    _DDPM,
    name='ncsnpp',
    num_res_blocks=4,
    fir=True,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type='biggan',
    progressive='none',
    progressive_input='residual',
    progressive_combine='sum',
    attention_type='ddpm',
    init_scale=0.,
    fourier_scale=16.,
    conv_size=3,
)

# The RefineNet of NCSN / NCSNv2.
_REFINENET = dict(
    normalization='InstanceNorm++',
    nonlinearity='elu',
    nf=128,
    interpolation='bilinear',
)


def ddpm(model, **overrides):
  """The DDPM U-Net; ``ch_mult=(1, 1, 2, 2, 4, 4)`` gives its 256 px version."""
  model.update({**_DDPM, **overrides})


def ncsnpp(model, **overrides):
  """NCSN++ as trained on CIFAR-10 and CelebA (4 residual blocks per resolution)."""
  model.update({**_NCSNPP, **overrides})


def ddpmpp(model, **overrides):
  """DDPM++: NCSN++ without FIR resampling or the input pyramid, with positional time embedding."""
  ncsnpp(model, **{'fir': False, 'progressive_input': 'none', 'embedding_type': 'positional',
                   **overrides})


def ncsnpp_256(model, **overrides):
  """NCSN++ at 256 px: seven resolutions, 2 blocks each, input and output skip pyramids."""
  ncsnpp(model, **{'ch_mult': (1, 1, 2, 2, 2, 2, 2), 'num_res_blocks': 2,
                   'progressive': 'output_skip', 'progressive_input': 'input_skip', **overrides})


def ncsnpp_1024(model, **overrides):
  """NCSN++ at 1024 px: the 256 px layout, 16 base channels, eight resolutions of 1 block."""
  ncsnpp_256(model, **{'nf': 16, 'ch_mult': (1, 2, 4, 8, 16, 32, 32, 32), 'num_res_blocks': 1,
                       **overrides})


def ncsn(model, **overrides):
  """NCSN (v1): RefineNet with noise-conditional instance norm, one embedding per noise level.

  ``num_classes`` (the size of that embedding) follows ``num_scales``, also when ``num_scales``
  is overridden on the command line.
  """
  model.update({**_REFINENET, 'name': 'ncsn', 'scale_by_sigma': False, **overrides})
  model.num_classes = model.get_ref('num_scales')


def ncsnv2(model, **overrides):
  """NCSNv2: unconditional RefineNet whose output is divided by sigma.

  ``name`` picks the size: 'ncsnv2_64' (below 96 px), 'ncsnv2_128' or 'ncsnv2_256'.
  """
  model.update({**_REFINENET, 'name': 'ncsnv2_64', 'scale_by_sigma': True, **overrides})
