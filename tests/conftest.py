"""Test set-up: 8 fake CPU devices (set before JAX starts) and strict rank promotion."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update('jax_numpy_rank_promotion', 'raise')
