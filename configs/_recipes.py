"""Training and sampling recipes shared by the override files.

Each function sets the SDE (``training.sde``, ``training.continuous``), the predictor-corrector
pair of the PC sampler, and the fields that go with that choice in the paper.
"""

from configs import _models


def ve(config, *, continuous=True, ema_rate=0.999):
  """VE SDE (continuous) or SMLD noise levels (discrete), sampled by reverse diffusion + Langevin.

  A VE-trained network predicts the score times sigma, so its output is divided by sigma
  (``model.scale_by_sigma``).
  """
  config.training.update(sde='vesde', continuous=continuous)
  config.sampling.update(predictor='reverse_diffusion', corrector='langevin')
  config.model.update(scale_by_sigma=True, ema_rate=ema_rate)


def vp(config, *, sde='vpsde', continuous=True, predictor=None):
  """VP or sub-VP SDE (continuous) or the DDPM chain (discrete), on data centered to [-1, 1].

  The loss is averaged over pixels. Sampling is predictor-only: Euler-Maruyama for the SDE,
  ancestral sampling for the discrete chain, unless ``predictor`` is given.
  """
  config.training.update(sde=sde, continuous=continuous, reduce_mean=True)
  config.data.centered = True
  if predictor is None:
    predictor = 'euler_maruyama' if continuous else 'ancestral_sampling'
  config.sampling.update(predictor=predictor, corrector='none')
  config.model.update(scale_by_sigma=False, ema_rate=0.9999)


def ddpm_256(config):
  """The DDPM paper's 256 px set-up: discrete chain of 1000 steps, 256 px U-Net, lr 2e-5."""
  vp(config, continuous=False)
  _models.ddpm(config.model, ch_mult=(1, 1, 2, 2, 4, 4), num_scales=1000)
  config.optim.lr = 2e-5


def deep(config):
  """The paper's "deep" variants: 8 residual blocks per resolution (twice as many), 950k steps."""
  config.model.num_res_blocks = 8
  config.training.n_iters = 950001


def annealed_langevin(config, *, n_steps_each, snr, lr, ema_rate=0.):
  """NCSN and NCSNv2: discrete SMLD noise levels, sampled by annealed Langevin dynamics only.

  ``n_steps_each`` Langevin steps per noise level with step size set by ``snr``; Adam without
  warm-up or gradient clipping at learning rate ``lr``.
  """
  config.training.update(sde='vesde', continuous=False)
  config.sampling.update(predictor='none', corrector='ald', n_steps_each=n_steps_each, snr=snr)
  config.optim.update(lr=lr, amsgrad=False, warmup=0, grad_clip=-1.)
  config.model.ema_rate = ema_rate
