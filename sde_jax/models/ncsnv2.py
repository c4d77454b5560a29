"""NCSNv2 (Song & Ermon 2020) and NCSN (Song & Ermon 2019): RefineNets with dilated ResNet
backbones, as re-implemented by score_sde. Their blocks are in :mod:`sde_jax.models.ncsnv2_layers`,
where their parameters lie in PyTorch checkpoints in :mod:`sde_jax.models.ncsnv2_torch_layout`.

One Module covers the four original networks; :data:`ARCHITECTURES` holds what tells them apart
(``ncsnv2_64``, ``ncsnv2_128``, ``ncsnv2_256``; ``ncsn`` is ``ncsnv2_64`` with noise-conditional
normalisations). Submodule class names and creation order equal the original score_sde code's,
so Flax's automatic names (``ResidualBlock_3/Conv_1/kernel`` ...) are those of its checkpoints.

The two originals are not the same networks. score_sde_pytorch (which follows the NCSN authors'
code) gives the third RefineBlock of ``ncsnv2_64`` and ``ncsn`` width ``nf`` instead of ``2 nf``
(:data:`TORCH_ARCHITECTURES`), upsamples in the multi-resolution fusion with
``align_corners=True`` instead of ``jax.image.resize``'s half-pixel centres, and takes unbiased
variances (``torch.var``) where score_sde takes biased ones (across the channel means in
InstanceNorm++, over space in VarianceNorm). ``ncsnv2_from_config(config, flavour='pytorch')``
builds the PyTorch network.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models import compute
from sde_jax.models.layers import get_act, ve_sigmas
from sde_jax.models.ncsnv2_layers import (ConditionalResidualBlock, CondRefineBlock, RefineBlock,
                                          ResidualBlock, ncsn_conv)
from sde_jax.models.normalization import get_normalization

Array = jax.Array

FLAVOURS = ('jax', 'pytorch')
INTERPOLATIONS = ('bilinear', 'nearest_neighbor')


ARCHITECTURES: dict[str, dict[str, Any]] = {
    'ncsnv2_64': dict(ch_mult=(1, 2, 2, 2), dilations=(1, 1, 2, 4), refine_mult=(2, 2, 2, 1)),
    'ncsnv2_128': dict(ch_mult=(1, 2, 2, 4, 4), dilations=(1, 1, 1, 2, 4),
                       refine_mult=(4, 2, 2, 1, 1)),
    'ncsnv2_256': dict(ch_mult=(1, 2, 2, 2, 4, 4), dilations=(1, 1, 1, 1, 2, 4),
                       refine_mult=(4, 2, 2, 2, 1, 1)),
    'ncsn': dict(ch_mult=(1, 2, 2, 2), dilations=(1, 1, 2, 4), refine_mult=(2, 2, 2, 1),
                 conditional=True),
}
"""The original networks: backbone stage widths and dilations (shallow to deep), RefineBlock
widths (deep to shallow), all in units of ``nf``."""

TORCH_ARCHITECTURES: dict[str, dict[str, Any]] = {
    **ARCHITECTURES,
    'ncsnv2_64': dict(ARCHITECTURES['ncsnv2_64'], refine_mult=(2, 2, 1, 1)),
    'ncsn': dict(ARCHITECTURES['ncsn'], refine_mult=(2, 2, 1, 1)),
}
"""The networks of score_sde_pytorch: for 32-64 px (and NCSN) the third RefineBlock has width
``nf``, not ``2 nf`` as in score_sde (the PyTorch port follows the NCSNv2 authors' code)."""


class NCSNv2(nn.Module):
  """RefineNet score network of NCSNv2 (and, with ``conditional``, of NCSN).

  The backbone has one stage per entry of ``ch_mult``: two residual blocks of width
  ``nf * ch_mult[s]``, the first of which (except in stage 0) downsamples, by mean pooling when
  ``dilations[s] == 1`` and otherwise by dilating its convolutions instead. RefineBlocks of
  widths ``nf * refine_mult`` then fuse the stages from the deepest up.

  Called as ``model(x, labels, train)`` with ``x`` NHWC in model space ([0, 1], mapped to
  [-1, 1] unless ``centered``) and ``labels`` integer indices into the descending noise levels
  ``sigmas = geomspace(sigma_max, sigma_min, num_scales)``; with ``scale_by_sigma`` the output
  is divided by ``sigmas[labels]``. NCSN conditions its normalisations on ``labels``.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  dilations: Sequence[int] = (1, 1, 2, 4)
  refine_mult: Sequence[int] = (2, 2, 2, 1)
  conditional: bool = False
  normalization: str = 'InstanceNorm++'
  nonlinearity: str = 'elu'
  interpolation: str = 'bilinear'
  centered: bool = False
  scale_by_sigma: bool = True
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  flavour: str = 'jax'
  dtype: Any = jnp.float32  # compute dtype (sde_jax.models.compute)
  remat: Optional[str] = None  # None or a key of compute.REMAT_POLICIES

  def __post_init__(self):
    if self.flavour not in FLAVOURS:
      raise ValueError(f'flavour={self.flavour!r}; expected one of {FLAVOURS}.')
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'model.interpolation={self.interpolation!r}; expected one of '
                       f'{INTERPOLATIONS}.')
    if not len(self.ch_mult) == len(self.dilations) == len(self.refine_mult):
      raise ValueError('ch_mult, dilations and refine_mult need one entry per stage.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
    act = get_act(self.nonlinearity)
    norm = get_normalization(self.normalization, self.conditional, self.num_scales,
                             self.flavour)
    cond = (labels,) if self.conditional else ()
    block = compute.remat_block(ConditionalResidualBlock if self.conditional else ResidualBlock,
                                self.remat)
    h = ncsn_conv(compute.cast_in(x if self.centered else 2 * x - 1.0, self.dtype), self.nf)

    layers = []
    for stage, (mult, dilation) in enumerate(zip(self.ch_mult, self.dilations)):
      resample = 'down' if stage > 0 else None
      h = block(self.nf * mult, norm, resample, act, dilation)(h, *cond)
      h = block(self.nf * mult, norm, None, act, dilation)(h, *cond)
      layers.append(h)

    refine = (functools.partial(compute.remat_block(CondRefineBlock, self.remat), normalizer=norm)
              if self.conditional else compute.remat_block(RefineBlock, self.remat))
    h = None
    for i, (layer, mult) in enumerate(zip(reversed(layers), self.refine_mult)):
      xs = [layer] if h is None else [layer, h]
      h = refine(layer.shape[1:3], self.nf * mult, act=act, interpolation=self.interpolation,
                 start=i == 0, end=i == len(layers) - 1, flavour=self.flavour)(xs, *cond)

    h = compute.cast_out(ncsn_conv(act(norm()(h, *cond)), x.shape[-1]))
    if self.scale_by_sigma:
      sigmas = jnp.asarray(ve_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
      h = h / sigmas[labels.astype(jnp.int32)].reshape((-1, 1, 1, 1))
    return h


def ncsnv2_from_config(config, flavour: str = 'jax') -> NCSNv2:
  """The network named ``config.model.name`` ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256' or
  'ncsn') with the config's ``model.*`` fields.

  ``flavour='pytorch'`` gives the network of score_sde_pytorch (its architecture and numerics),
  the one to load a PyTorch checkpoint into.
  """
  m = config.model
  architectures = TORCH_ARCHITECTURES if flavour == 'pytorch' else ARCHITECTURES
  if m.name not in architectures:
    raise ValueError(f'model.name={m.name!r} is not an NCSN network; expected one of '
                     f'{sorted(architectures)}.')
  return NCSNv2(nf=m.nf, normalization=m.normalization, nonlinearity=m.nonlinearity,
                interpolation=m.interpolation, centered=config.data.centered,
                scale_by_sigma=m.scale_by_sigma, sigma_min=m.sigma_min, sigma_max=m.sigma_max,
                num_scales=m.num_scales, flavour=flavour, **architectures[m.name],
                **compute.options_from_config(m))
