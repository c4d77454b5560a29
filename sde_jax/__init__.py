"""sde-jax: score-based generative modelling through SDEs in JAX/Flax."""

from sde_jax import checkpoints, data, likelihood, losses, metrics, models, rng, sampling, sde

__all__ = ['checkpoints', 'data', 'likelihood', 'losses', 'metrics', 'models', 'rng', 'sampling', 'sde']
__version__ = '0.1.0'
