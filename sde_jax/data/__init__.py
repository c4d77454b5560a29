"""Data: scalers, input pipelines for the image data sets, and embedded data sets.

Model space is data in [0, 1], or in [-1, 1] when ``config.data.centered``. The toy distributions
are real-valued already and are used as they are (their scaler is the identity).

:func:`get_dataset` serves every data set of the original (CIFAR-10, SVHN, CelebA, LSUN through
TFDS; FFHQ and CelebA-HQ from TFRecords), a folder of the user's own images, the scikit-learn 8x8
digits and the 2-D toy sets, as host-local NumPy batches of this process's shard. TensorFlow is
imported on first use only. :func:`whole_split` reads a whole split once for evaluation jobs;
:func:`stacked_batches` and :func:`eval_batches` turn the host-local batches into global arrays
over a mesh.

One concept a file: ``scalers``, ``toys`` (2-D distributions), ``digits`` (the embedded set),
``spec`` (known data sets, the checked call), ``streams`` (seeds, epochs, padding), ``arrays``
(in-memory pipelines), ``source`` / ``tfds_source`` / ``tfrecord_source`` / ``folder_source``
(records), ``preprocess`` (crops and resizes), ``tf_runtime``, ``tf_pipeline`` (tf.data pipelines),
``pipeline`` (:func:`get_dataset`), ``whole_split``, ``global_batches``.
"""

from sde_jax.data.arrays import TOY_EVAL_SIZE
from sde_jax.data.digits import DIGIT_COLORS, DIGITS_EVAL_FRACTION, digits_arrays, digits_split
from sde_jax.data.global_batches import eval_batches, stacked_batches
from sde_jax.data.pipeline import get_dataset
from sde_jax.data.scalers import get_data_inverse_scaler, get_data_scaler
from sde_jax.data.folder_source import folder_splits, scan_folder
from sde_jax.data.spec import (DIGITS_DATASETS, FOLDER_DATASET, KNOWN_DATASETS, SHUFFLE_BUFFER,
                               TFDS_DATASETS, TFRECORD_DATASETS, PipelineSpec, make_spec)
from sde_jax.data.streams import Batch
from sde_jax.data.toys import TOY_DATASETS, eight_gaussians, sample_toy
from sde_jax.data.whole_split import whole_split


__all__ = [
    'Batch', 'DIGITS_DATASETS', 'DIGITS_EVAL_FRACTION', 'DIGIT_COLORS', 'FOLDER_DATASET',
    'KNOWN_DATASETS', 'PipelineSpec', 'SHUFFLE_BUFFER', 'TFDS_DATASETS', 'TFRECORD_DATASETS',
    'TOY_DATASETS', 'TOY_EVAL_SIZE', 'digits_arrays', 'digits_split', 'eight_gaussians',
    'eval_batches', 'folder_splits', 'get_data_inverse_scaler', 'get_data_scaler', 'get_dataset',
    'make_spec', 'sample_toy', 'scan_folder', 'stacked_batches', 'whole_split',
]
