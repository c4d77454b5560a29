"""sde-jax: score-based generative modelling through SDEs in JAX/Flax."""

from sde_jax import (checkpoints, data, evaluate, likelihood, losses, metrics, models, parallel,
                     rng, sampling, sde, train)

__all__ = ['checkpoints', 'data', 'evaluate', 'likelihood', 'losses', 'metrics', 'models',
           'parallel', 'rng', 'sampling', 'sde', 'train']
__version__ = '0.1.0'
