"""Toy config: an MLP score model on a 2-D distribution (runs on a CPU in about a minute).

Field names follow the original configs (training / sampling / eval / data / model / optim), so
``--config.training.sde=vesde`` or ``--config.data.dataset=rings`` mean what they mean there.
"""

import ml_collections

from configs import _recipes


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.sde = 'vpsde'
  training.continuous = True
  training.reduce_mean = True
  training.likelihood_weighting = False
  training.batch_size = 512
  training.n_iters = 3000
  training.log_freq = 250

  config.sampling = _recipes.sampling(predictor='euler_maruyama', corrector='none', snr=0.16,
                                      n_steps_each=1)

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.num_samples = 2000
  evaluate.num_likelihood = 500

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'eight_gaussians'
  data.dim = 2
  data.centered = False

  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'
  model.features = (128, 128, 128)
  model.embedding_type = 'positional'
  model.embedding_dim = 64
  model.fourier_scale = 16.0
  model.scale_by_sigma = False
  model.ema_rate = 0.99
  model.sigma_min = 0.01
  model.sigma_max = 5.0
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.num_scales = 1000

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 2e-3
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 100
  optim.grad_clip = 1.0
  return config
