"""sde-jax: score-based generative modelling through SDEs in JAX/Flax."""

from sde_jax import rng, sde

__all__ = ['rng', 'sde']
__version__ = '0.1.0'
