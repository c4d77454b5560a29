"""Sample-quality metrics."""

from sde_jax.metrics.sliced import sliced_wasserstein

__all__ = ['sliced_wasserstein']
