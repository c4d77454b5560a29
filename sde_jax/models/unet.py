"""The U-Net skeleton that DDPM and NCSN++ / DDPM++ share (score_sde's ddpm.py and ncsnpp.py).

Both networks run the same stages at each resolution: ``num_res_blocks`` residual blocks (with
attention at ``attn_resolutions``) going down, three blocks at the bottom, and one block more per
level going up, each fed the skip connection of its twin. They differ in the blocks, the
resampling between levels and what joins the paths (NCSN++'s progressive growing).

The methods of :class:`UNet` run inside the subclass's compact ``__call__``: the submodules they
create belong to the network and get the automatic names (``ResnetBlockDDPM_3`` ...) and the
creation order of the original, on which checkpoint import depends.

Fields both networks have but declare after their own (``centered``, ``sigma_min``, ``sigma_max``,
``num_scales``, ``dtype``, ``remat``) stay with each: a base class's fields come first, so moving
them here would reorder the networks' fields.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.models.layers import default_init

Array = jax.Array
# ``resnet(out_ch=None)(h, temb, train)`` and ``attn()(h)``: block constructors, settings bound.
BlockFn = Callable[..., nn.Module]


class UNet(nn.Module):
  """Fields and stages common to :class:`~sde_jax.models.ddpm.DDPM` and
  :class:`~sde_jax.models.ncsnpp.NCSNpp` (the original config's ``model.*`` names).

  Attributes:
    nf: channels of the first level; level ``i`` has ``nf * ch_mult[i]``.
    ch_mult: the channel multiplier of each resolution level.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attn_resolutions: the spatial sizes at which a self-attention block follows a block.
    dropout: dropout rate in the residual blocks.
    resamp_with_conv: resample between levels with a convolution.
    conditional: condition on the time (or noise level) embedding.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True

  def embedding_mlp(self, emb: Array, act: Callable) -> Array:
    """``Dense(act(Dense(emb)))``, both ``4 nf`` wide: the time embedding fed to the blocks."""
    temb = nn.Dense(self.nf * 4, kernel_init=default_init())(emb)
    return nn.Dense(self.nf * 4, kernel_init=default_init())(act(temb))

  def down_level(self, level: int, resnet: BlockFn, attn: BlockFn, hs: list[Array],
                 temb: Optional[Array], train: bool) -> None:
    """The blocks of one level of the downsampling path, each applied to ``hs[-1]``; appends
    every output to ``hs`` (the skip connections)."""
    for _ in range(self.num_res_blocks):
      h = resnet(out_ch=self.nf * self.ch_mult[level])(hs[-1], temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)
      hs.append(h)

  def bottleneck(self, resnet: BlockFn, attn: BlockFn, h: Array, temb: Optional[Array],
                 train: bool) -> Array:
    """Block, attention, block at the lowest resolution."""
    h = resnet()(h, temb, train)
    h = attn()(h)
    return resnet()(h, temb, train)

  def up_level(self, level: int, resnet: BlockFn, attn: BlockFn, h: Array, hs: list[Array],
               temb: Optional[Array], train: bool) -> Array:
    """The blocks of one level of the upsampling path, each on ``h`` joined (channel-wise) with
    the skip connection popped from ``hs``; then attention at ``attn_resolutions``."""
    for _ in range(self.num_res_blocks + 1):
      h = resnet(out_ch=self.nf * self.ch_mult[level])(
          jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
    if h.shape[1] in self.attn_resolutions:
      h = attn()(h)
    return h
