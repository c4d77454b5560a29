"""The FID Inception network: the 2015-12-05 Inception-v3 graph in Flax.

This is the network behind TF-GAN's ``tfgan/eval/inception`` module (which the original
score_sde evaluation loads from TF-Hub), pytorch-fid's ``pt_inception-2015-12-05`` weights and
NVIDIA's ``inception-2015-12-05`` pickle. It differs from torchvision's / Keras' Inception-v3:
1008 classes, 3x3 average pools that exclude the zero padding from the mean, and a 3x3 *max*
pool in the pool branch of the last block (``Mixed_7c``).

Input convention of the original evaluation (``evaluation.run_inception_jit`` + the TF-Hub
module): uint8 images ``x`` become ``(x - 127.5) / 127.5``, and the module resizes them to
299x299 with TensorFlow 1's bilinear resize (``tf.compat.v1.image.resize``: no half-pixel
centres, no antialiasing) before the network. :func:`preprocess` does both.

Weights are never downloaded: :func:`load_params` reads pytorch-fid's released state dict (with
``checkpoints.read_torch``, which needs no PyTorch and runs nothing in the file) or an ``.npz`` of
the same arrays, and maps every tensor strictly onto the Flax parameters.

This module is the one place to import the whole from; the parts live in
:mod:`~sde_jax.metrics.inception_input` (normalisation and resize),
:mod:`~sde_jax.metrics.inception_network` (the Flax modules) and
:mod:`~sde_jax.metrics.inception_weights` (pytorch-fid's state dict <-> Flax parameters).
"""

from sde_jax.metrics.inception_input import HIGHEST, IMAGE_SIZE, preprocess, resize_matrix
from sde_jax.metrics.inception_network import (NUM_CLASSES, ConvBN, FrozenBatchNorm, InceptionA,
                                               InceptionB, InceptionC, InceptionD, InceptionE,
                                               InceptionV3, Logits, conv_bn, scaled)
from sde_jax.metrics.inception_weights import (WEIGHTS_URL, convert_weights, init_params,
                                               load_params, param_shapes,
                                               params_from_state_dict, read_weights,
                                               state_dict_from_params, to_torch_layout,
                                               torch_key)

__all__ = ['HIGHEST', 'IMAGE_SIZE', 'NUM_CLASSES', 'WEIGHTS_URL', 'ConvBN', 'FrozenBatchNorm',
           'InceptionA', 'InceptionB', 'InceptionC', 'InceptionD', 'InceptionE', 'InceptionV3',
           'Logits', 'conv_bn', 'convert_weights', 'init_params', 'load_params', 'param_shapes',
           'params_from_state_dict', 'preprocess', 'read_weights', 'resize_matrix', 'scaled',
           'state_dict_from_params', 'to_torch_layout', 'torch_key']
