"""NCSN++ on CIFAR-10 trained on the discrete DDPM chain, sampled by reverse diffusion."""

from configs import _models, _recipes, default_cifar10_configs


def get_config():
  config = default_cifar10_configs.get_default_configs()
  _recipes.vp(config, continuous=False, predictor='reverse_diffusion')
  _models.ncsnpp(config.model, embedding_type='positional')
  return config
