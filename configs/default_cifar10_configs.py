"""Base config for CIFAR-10 (32x32); the other data-set bases start from this one.

Holds every field shared by the image configs. An override file adds the SDE and sampler
(``configs._recipes``) and the network (``configs._models``).
"""

import ml_collections
from ml_collections import config_dict

from configs import _recipes


def get_default_configs():
  """Returns the CIFAR-10 base: training schedule, sampler defaults, evaluation, data, optimizer."""
  config = ml_collections.ConfigDict()
  config.seed = 42
  config.training = ml_collections.ConfigDict(dict(
      batch_size=128, n_iters=1300001,
      log_freq=50, eval_freq=100, snapshot_freq=50000,
      # Checkpoints that a preempted job resumes from; the last keep_last of them are kept,
      # besides every snapshot_freq-th checkpoint, which is kept for good.
      snapshot_freq_for_preemption=10000, keep_last=2,
      snapshot_sampling=True,  # draw a batch of samples at each snapshot
      snapshot_num_samples=64,  # its size (the original drew one training batch)
      n_jitted_steps=5,  # training steps per compiled call
      continuous=True, reduce_mean=False, likelihood_weighting=False,
  ))
  # The PC sampler's predictor and corrector come with the SDE (configs._recipes).
  config.sampling = _recipes.sampling(n_steps_each=1, snr=0.16)
  config.controllable = _recipes.controllable()
  config.projection = _recipes.projection()  # sde-jax train-projection (Predict-Project)
  config.eval = ml_collections.ConfigDict(dict(
      begin_ckpt=9, end_ckpt=26,
      batch_size=1024, num_samples=50000,
      enable_sampling=False, enable_loss=True, enable_bpd=False, bpd_dataset='test',
      # Ours (docs/evaluation.md). The FID Inception's weights: pytorch-fid's
      # pt_inception-2015-12-05 .pth, or an .npz converted from it; never downloaded.
      inception_weights=config_dict.placeholder(str),
      # The network's width and input size: 1 and 299 are the real one (tests shrink them).
      inception_width=1., inception_image_size=299,
      # The data set's pool_3 features (the original's cifar10_stats.npz, or `sde-jax fid-stats`).
      stats_path=config_dict.placeholder(str),
      # Passes over the bits/dim split; None: the original's, 5 over test and 1 over train.
      bpd_num_repeats=config_dict.placeholder(int),
      # The likelihood's ODE solve: sde_jax.odeint.SOLVERS name and tolerances.
      bpd_solver='rk45', bpd_rtol=1e-5, bpd_atol=1e-5,
  ))
  config.data = ml_collections.ConfigDict(dict(
      dataset='CIFAR10', image_size=32, num_channels=3,
      centered=False, random_flip=True, uniform_dequantization=False,
  ))
  # Noise scales of both SDE families live here, so one config serves VE, VP and sub-VP. Scales
  # and rates are floats so that any float given on the command line is accepted.
  config.model = ml_collections.ConfigDict(dict(
      sigma_min=0.01, sigma_max=50.,  # VE
      beta_min=0.1, beta_max=20.,  # VP and sub-VP
      num_scales=1000,  # N: discretization steps and discrete noise levels
      dropout=0.1, embedding_type='fourier',
      # Which original's network to build where the two differ (NCSNv2 / NCSN): 'jax' for
      # score_sde checkpoints, 'pytorch' for score_sde_pytorch ones.
      flavour='jax',
      # Compute dtype, 'float32' or 'bfloat16' (parameters, optimizer state, EMA, checkpoints,
      # normalisation statistics, losses and samplers stay float32), and rematerialisation of
      # each residual / attention block in the backward pass: 'none', 'block' (or True: save
      # nothing inside a block) or a jax.checkpoint_policies name
      # (sde_jax.models.compute.REMAT_POLICIES). Neither changes parameter names. A string,
      # so that --config.model.remat=dots_saveable and =True both parse.
      dtype='float32', remat='none',
  ))
  # Device mesh: fsdp > 1 shards parameters and optimizer state over that many devices; arrays
  # of fewer than fsdp_min_size elements (biases, norms: a small share of the bytes) stay whole.
  config.parallel = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2 ** 16))
  config.optim = ml_collections.ConfigDict(dict(
      optimizer='Adam', lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0.,
      warmup=5000, grad_clip=1.,
  ))
  return config
