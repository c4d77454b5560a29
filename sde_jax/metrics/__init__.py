"""Sample-quality metrics."""

from sde_jax.metrics import fid, inception
from sde_jax.metrics.fid import (extract_features, feature_statistics, fid_from_features,
                                 frechet_distance, inception_score, kernel_inception_distance,
                                 kernel_inception_distance_and_std, load_stats, save_stats)
from sde_jax.metrics.inception import InceptionV3
from sde_jax.metrics.sliced import sliced_wasserstein

__all__ = ['InceptionV3', 'extract_features', 'feature_statistics', 'fid', 'fid_from_features',
           'frechet_distance', 'inception', 'inception_score', 'kernel_inception_distance',
           'kernel_inception_distance_and_std', 'load_stats', 'save_stats', 'sliced_wasserstein']
