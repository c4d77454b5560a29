"""Training and sampling recipes shared by the override files.

Each function sets the SDE (``training.sde``, ``training.continuous``), the predictor-corrector
pair of the PC sampler, and the fields that go with that choice in the paper.
"""

import ml_collections
from ml_collections import config_dict

from configs import _models


def sampling(**fields):
  """The ``sampling`` section: ``method`` picks the sampler (``sde_jax.sampling``), the rest are
  each method's options, so ``--config.sampling.method=heun --config.sampling.nfe=35`` works on
  any config. ``fields`` (the PC sampler's: predictor, corrector, snr, ...) go on top."""
  return ml_collections.ConfigDict(dict(
      method='pc',  # 'pc', 'ode', 'dpm_solver++', 'heun', 'adaptive_sde' or 'predict_project'
      noise_removal=True, probability_flow=False,
      # 'ode': the probability-flow ODE's RK45 tolerances.
      rtol=1e-5, atol=1e-5,
      # 'dpm_solver++' and 'heun': network evaluations; None means 20 and 35 respectively.
      nfe=config_dict.placeholder(int),
      # 'dpm_solver++': multistep order (2 or 3), time grid ('logsnr', 'time_uniform',
      # 'time_quadratic'), first-order last step.
      order=2, schedule='logsnr', lower_order_final=True,
      # 'heun' (EDM): grid exponent and the stochastic churn (0: deterministic).
      rho=7.0, churn=0.0, s_tmin=0.0, s_tmax=float('inf'), s_noise=1.0,
      # 'adaptive_sde' (Gotta Go Fast): tolerances, first step, step-size controller.
      reltol=0.05, abstol=0.0078, h_init=0.01, safety=0.9, exponent=0.9,
      # 'predict_project': steps (None: model.num_scales) and the projection's weight; the
      # projection network is `projection` (sde-jax train-projection, docs/predict_project.md).
      pp_n_steps=config_dict.placeholder(int), pp_step_size=1.0,
      **fields))


def controllable(**fields):
  """The ``controllable`` section: options of ``sde-jax inpaint`` / ``colorize`` /
  ``sample --class`` (``sde_jax.controllable``), which sample with the PC sampler of
  ``sampling``. ``fields`` go on top."""
  return ml_collections.ConfigDict(dict(
      method='replacement',  # inpainting / colorization: 'replacement' (the paper) or 'tmpd'
      solver_iters=5,  # GMRES steps per guided score evaluation ('tmpd')
      # Class-conditional: the weight of grad log p_t(y | x_t); 1 is exact for an exact classifier.
      guidance_scale=1.,
      mask='right_half',  # the inpainting command's unknown region (sde_jax.controllable.MASKS)
      **fields))


def classifier(*, blocks_per_group=4, channel_multiplier=10, embedding_size=128, ema_rate=0.999,
               **training):
  """The ``classifier`` section of ``sde-jax train-classifier``: the original's noise-conditional
  Wide-ResNet (WRN-(6 blocks_per_group + 4)-channel_multiplier; the defaults are WRN-28-10 with a
  128-wide Fourier embedding, as the original's CIFAR-10 classifier), trained on noisy data of the
  config's SDE. ``training`` overrides the schedule's fields."""
  section = ml_collections.ConfigDict(dict(
      name='wideresnet', blocks_per_group=blocks_per_group,
      channel_multiplier=channel_multiplier, num_classes=10, embedding_size=embedding_size,
      fourier_scale=16., ema_rate=ema_rate))
  section.training = ml_collections.ConfigDict(dict(
      batch_size=128, n_iters=200001, n_jitted_steps=5, log_freq=100, eval_freq=5000,
      snapshot_freq=50000, snapshot_freq_for_preemption=5000, keep_last=2,
      eps=1e-5))  # t ~ U[eps, T]
  section.training.update(training)
  section.optim = ml_collections.ConfigDict(dict(
      optimizer='Adam', lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0., warmup=1000,
      grad_clip=1.))
  return section

def projection(**training):
  """The ``projection`` section of ``sde-jax train-projection`` (Predict-Project sampling,
  docs/predict_project.md): the network is the score network's family (``name`` None) at
  ``width`` times its channels (``nf``) or MLP widths, ``scale_by_sigma`` off, then the fields of
  ``model``; trained on the step counts ``train_n_steps`` (None: the sampler's N,
  ``sampling.pp_n_steps`` or ``model.num_scales``). ``training`` overrides the schedule."""
  section = ml_collections.ConfigDict(dict(
      name=config_dict.placeholder(str), width=0.5, model=ml_collections.ConfigDict(),
      train_n_steps=config_dict.placeholder(tuple), ema_rate=0.999))
  section.training = ml_collections.ConfigDict(dict(
      batch_size=128, n_iters=20001, n_jitted_steps=5, log_freq=100, eval_freq=5000,
      snapshot_freq=5000, snapshot_freq_for_preemption=1000, keep_last=2))
  section.training.update(training)
  section.optim = ml_collections.ConfigDict(dict(
      optimizer='Adam', lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0., warmup=1000,
      grad_clip=1.))
  return section


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
