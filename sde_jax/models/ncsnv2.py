"""NCSNv2 (Song & Ermon 2020) and NCSN (Song & Ermon 2019): RefineNets with dilated ResNet
backbones, as re-implemented by score_sde, and their PyTorch checkpoint layouts.

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
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.models.layers import get_act, ve_sigmas
from sde_jax.models.normalization import get_normalization

Array = jax.Array

FLAVOURS = ('jax', 'pytorch')
INTERPOLATIONS = ('bilinear', 'nearest_neighbor')


def _torch_uniform(scale: float, fan_in: int):
  """U(-a, a) with ``a = sqrt(scale / fan_in)``: PyTorch's default for convolutions (scale 1)."""
  def init(key, shape, dtype=jnp.float32):
    a = np.sqrt(scale / fan_in)
    return jax.random.uniform(key, shape, dtype, -a, a)
  return init


def ncsn_conv(x: Array, features: int, kernel: int = 3, bias: bool = True, dilation: int = 1,
              init_scale: float = 1.0) -> Array:
  """A stride-1 'SAME' convolution (padding ``dilation`` for 3x3) with PyTorch's default
  initialisation, kernel and bias ``U(+-sqrt(init_scale / fan_in))``; created in the caller
  (auto-named ``Conv_k``)."""
  init_scale = 1e-10 if init_scale == 0 else init_scale
  init = _torch_uniform(init_scale, kernel * kernel * x.shape[-1])
  return nn.Conv(features, kernel_size=(kernel, kernel), padding='SAME', use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=init, bias_init=init)(x)


def resize_bilinear(x: Array, shape: Sequence[int], flavour: str) -> Array:
  """Bilinear resize of the spatial axes to ``shape``.

  'jax': ``jax.image.resize`` (half-pixel centres), as score_sde. 'pytorch': corner pixels
  aligned, ``src = dst (n_in - 1) / (n_out - 1)``, as ``F.interpolate(align_corners=True)``.
  """
  if flavour == 'jax':
    return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), 'bilinear')
  for axis, n_out in zip((1, 2), shape):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac_shape = [1] * x.ndim
    frac_shape[axis] = n_out
    frac = (src - lo).astype(np.float32).reshape(frac_shape)
    x_lo, x_hi = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
    x = x_lo + (x_hi - x_lo) * frac
  return x


class ConvMeanPool(nn.Module):
  """Convolution, then 2x2 mean pooling."""

  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    h = nn.Conv(self.output_dim, kernel_size=(k, k), padding='SAME', use_bias=self.biases)(x)
    return (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2]) / 4.0


def _residual(x: Array, norm: Callable[[Array], Array], output_dim: int, resample: Optional[str],
              act: Callable, dilation: int) -> Array:
  """The body of the (conditional) residual block; ``norm(h)`` creates and applies one norm.

  'down' halves the resolution with mean pooling, or (dilation > 1) keeps it and only changes
  the width. The creation order of the convolutions is the original's.
  """
  h = act(norm(x))
  if resample == 'down':
    h = act(norm(ncsn_conv(h, x.shape[-1], dilation=dilation)))
    if dilation > 1:
      h = ncsn_conv(h, output_dim, dilation=dilation)
      return h + ncsn_conv(x, output_dim, dilation=dilation)
    h = ConvMeanPool(output_dim)(h)
    return h + ConvMeanPool(output_dim, kernel_size=1)(x)
  if resample is not None:
    raise ValueError(f'resample={resample!r}; expected None or "down".')
  shortcut = x
  if output_dim != x.shape[-1]:
    shortcut = ncsn_conv(x, output_dim, kernel=3 if dilation > 1 else 1, dilation=dilation)
  h = act(norm(ncsn_conv(h, output_dim, dilation=dilation)))
  return ncsn_conv(h, output_dim, dilation=dilation) + shortcut


class _ResidualFields(nn.Module):
  """Fields of the two residual blocks (separate classes: their names are parameter names)."""

  output_dim: int
  normalization: Callable
  resample: Optional[str] = None
  act: Callable = nn.elu
  dilation: int = 1


class ResidualBlock(_ResidualFields):
  """Pre-activation residual block of the NCSNv2 backbone."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda h: self.normalization()(h)  # noqa: E731
    return _residual(x, norm, self.output_dim, self.resample, self.act, self.dilation)


class ConditionalResidualBlock(_ResidualFields):
  """:class:`ResidualBlock` with noise-conditional normalisations (NCSN)."""

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    norm = lambda h: self.normalization()(h, y)  # noqa: E731
    return _residual(x, norm, self.output_dim, self.resample, self.act, self.dilation)


def _rcu(x: Array, norm: Optional[Callable], features: int, n_blocks: int, n_stages: int,
         act: Callable) -> Array:
  """Residual conv units: ``n_blocks`` times ``x + (act -> conv) ** n_stages``."""
  for _ in range(n_blocks):
    residual = x
    for _ in range(n_stages):
      x = ncsn_conv(act(x if norm is None else norm(x)), features, bias=False)
    x = x + residual
  return x


class RCUBlock(nn.Module):
  """Residual conv units of RefineNet."""

  features: int
  n_blocks: int
  n_stages: int
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _rcu(x, None, self.features, self.n_blocks, self.n_stages, self.act)


class CondRCUBlock(nn.Module):
  """Residual conv units with a conditional normalisation before each activation (NCSN)."""

  features: int
  n_blocks: int
  n_stages: int
  normalizer: Callable
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    norm = lambda h: self.normalizer()(h, y)  # noqa: E731
    return _rcu(x, norm, self.features, self.n_blocks, self.n_stages, self.act)


def _fuse(xs: Sequence[Array], norm: Optional[Callable], shape: Sequence[int], features: int,
          interpolation: str, flavour: str) -> Array:
  """Multi-resolution fusion: sum of ``resize(conv(x_i))`` at ``shape``.

  The PyTorch networks ignore ``interpolation`` and always resize bilinearly."""
  total = jnp.zeros((xs[0].shape[0], *shape, features), xs[0].dtype)
  for x in xs:
    h = ncsn_conv(x if norm is None else norm(x), features)
    if interpolation == 'nearest_neighbor' and flavour == 'jax':
      h = jax.image.resize(h, (h.shape[0], *shape, h.shape[-1]), 'nearest')
    else:
      h = resize_bilinear(h, shape, flavour)
    total = total + h
  return total


class MSFBlock(nn.Module):
  """Multi-resolution fusion of RefineNet."""

  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    return _fuse(xs, None, self.shape, self.features, self.interpolation, self.flavour)


class CondMSFBlock(nn.Module):
  """Multi-resolution fusion with a conditional normalisation of each input (NCSN)."""

  shape: Sequence[int]
  features: int
  normalizer: Callable
  interpolation: str = 'bilinear'
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    norm = lambda h: self.normalizer()(h, y)  # noqa: E731
    return _fuse(xs, norm, self.shape, self.features, self.interpolation, self.flavour)


def _chained_pool(x: Array, norm: Optional[Callable], features: int, n_stages: int,
                  pool: Callable) -> Array:
  """Chained residual pooling: ``x + sum_i path_i``, ``path_i = conv(pool(path_{i-1}))``."""
  path = x
  for _ in range(n_stages):
    path = pool(path if norm is None else norm(path), window_shape=(5, 5), strides=(1, 1),
                padding='SAME')
    path = ncsn_conv(path, features, bias=False)
    x = path + x
  return x


class CRPBlock(nn.Module):
  """Chained residual (max) pooling of RefineNet."""

  features: int
  n_stages: int
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _chained_pool(self.act(x), None, self.features, self.n_stages, nn.max_pool)


class CondCRPBlock(nn.Module):
  """Chained residual (average) pooling with conditional normalisations (NCSN).

  Average pooling counts the zero padding, as PyTorch's ``AvgPool2d`` does by default."""

  features: int
  n_stages: int
  normalizer: Callable
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    norm = lambda h: self.normalizer()(h, y)  # noqa: E731
    return _chained_pool(self.act(x), norm, self.features, self.n_stages, nn.avg_pool)


class RefineBlock(nn.Module):
  """RefineNet block: RCUs on each input, fusion at ``output_shape``, CRP, output RCUs."""

  output_shape: Sequence[int]
  features: int
  act: Callable = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array]) -> Array:
    hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
    h = hs[0] if self.start else MSFBlock(self.output_shape, self.features, self.interpolation,
                                          self.flavour)(hs)
    h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
    return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act)(h)


class CondRefineBlock(nn.Module):
  """:class:`RefineBlock` with conditional normalisations (NCSN)."""

  output_shape: Sequence[int]
  features: int
  normalizer: Callable
  act: Callable = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  flavour: str = 'jax'

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Array) -> Array:
    rcu = functools.partial(CondRCUBlock, n_stages=2, normalizer=self.normalizer, act=self.act)
    hs = [rcu(x.shape[-1], n_blocks=2)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = CondMSFBlock(self.output_shape, self.features, self.normalizer, self.interpolation,
                       self.flavour)(hs, y)
    h = CondCRPBlock(self.features, n_stages=2, normalizer=self.normalizer, act=self.act)(h, y)
    return rcu(self.features, n_blocks=3 if self.end else 1)(h, y)


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
    block = ConditionalResidualBlock if self.conditional else ResidualBlock
    h = ncsn_conv(x if self.centered else 2 * x - 1.0, self.nf)

    layers = []
    for stage, (mult, dilation) in enumerate(zip(self.ch_mult, self.dilations)):
      resample = 'down' if stage > 0 else None
      h = block(self.nf * mult, norm, resample, act, dilation)(h, *cond)
      h = block(self.nf * mult, norm, None, act, dilation)(h, *cond)
      layers.append(h)

    refine = (functools.partial(CondRefineBlock, normalizer=norm) if self.conditional
              else RefineBlock)
    h = None
    for i, (layer, mult) in enumerate(zip(reversed(layers), self.refine_mult)):
      xs = [layer] if h is None else [layer, h]
      h = refine(layer.shape[1:3], self.nf * mult, act=act, interpolation=self.interpolation,
                 start=i == 0, end=i == len(layers) - 1, flavour=self.flavour)(xs, *cond)

    h = ncsn_conv(act(norm()(h, *cond)), x.shape[-1])
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
                num_scales=m.num_scales, flavour=flavour, **architectures[m.name])


# ---------------------------------------------------------------------------------------------
# PyTorch checkpoints (score_sde_pytorch): modules are named attributes.

TORCH_BUFFERS = frozenset({'sigmas'})
"""State-dict keys of the PyTorch NCSNv2 networks that are buffers (NCSN has none)."""

# Stage names of the PyTorch networks (shallow to deep) and of their RefineBlocks (deep first).
_TORCH_STAGES = {
    4: (('res1', 'res2', 'res3', 'res4'), ('refine1', 'refine2', 'refine3', 'refine4')),
    5: (('res1', 'res2', 'res3', 'res4', 'res5'),
        ('refine1', 'refine2', 'refine3', 'refine4', 'refine5')),
    6: (('res1', 'res2', 'res3', 'res31', 'res4', 'res5'),
        ('refine1', 'refine2', 'refine31', 'refine3', 'refine4', 'refine5')),
}


def _split(name: str) -> tuple[str, int]:
  """'ResidualBlock_3' -> ('ResidualBlock', 3)."""
  kind, index = name.rsplit('_', 1)
  return kind, int(index)


def _residual_child(name: str, siblings, down: bool) -> str:
  """Torch attribute of a submodule of a residual block (creation order of the original)."""
  kind, i = _split(name)
  if 'Norm' in kind:
    return f'normalize{i + 1}'
  if kind == 'ConvMeanPool':
    return ('conv2', 'shortcut')[i]
  n_convs = sum(1 for k in siblings if k.startswith('Conv_'))
  if down:
    return ('conv1', 'conv2', 'shortcut')[i]
  # Without resampling, the shortcut (if any) is created before the two convolutions.
  return (('conv1', 'conv2') if n_convs == 2 else ('shortcut', 'conv1', 'conv2'))[i]


def _refine_child(name: str, siblings) -> str:
  """Torch attribute of a submodule of a RefineBlock: input RCUs, fusion, CRP, output RCU."""
  kind, i = _split(name)
  if 'MSF' in kind:
    return 'msf'
  if 'CRP' in kind:
    return 'crp'
  n_rcu = sum(1 for k in siblings if 'RCUBlock' in k)
  return 'output_convs' if i == n_rcu - 1 else f'adapt_convs.{i}'


def _child(parent: str, name: str, siblings, stages) -> str:
  """Torch attribute of the Flax submodule ``name`` of module ``parent`` ('' at the top)."""
  kind, i = _split(name)
  if not parent:
    if 'ResidualBlock' in kind:
      return f'{stages[0][i // 2]}.{i % 2}'
    if 'RefineBlock' in kind:
      return stages[1][i]
    return 'normalizer' if 'Norm' in kind else ('begin_conv', 'end_conv')[i]
  parent_kind, parent_index = _split(parent)
  if 'ResidualBlock' in parent_kind:
    return _residual_child(name, siblings, down=parent_index % 2 == 0 and parent_index > 0)
  if 'RefineBlock' in parent_kind:
    return _refine_child(name, siblings)
  if 'RCUBlock' in parent_kind:  # two stages per unit: '{unit}_{stage}_conv'
    return f'{i // 2 + 1}_{i % 2 + 1}_{"norm" if "Norm" in kind else "conv"}'
  if 'MSF' in parent_kind or 'CRP' in parent_kind:
    return f'{"norms" if "Norm" in kind else "convs"}.{i}'
  if parent_kind == 'ConvMeanPool':
    return 'conv'
  if parent_kind == 'ConditionalInstanceNorm2dPlus':
    return 'embed'
  raise ValueError(f'{parent}/{name} has no counterpart in the PyTorch networks.')


def _reshape_norm(v: np.ndarray) -> np.ndarray:
  """(C,) PyTorch normalisation parameter -> (1, 1, 1, C)."""
  return np.reshape(v, (1, 1, 1, -1))


def _leaf(module: str, leaf: str):
  """Torch name and conversion (or None) of parameter ``leaf`` of Flax module ``module``."""
  kind = _split(module)[0]
  if kind in ('Conv', 'Embed'):
    return {'kernel': 'weight', 'bias': 'bias', 'embedding': 'weight'}[leaf], None
  if kind == 'InstanceNorm2dPlus':
    return leaf, _reshape_norm
  if kind == 'VarianceNorm2d' and leaf == 'scale':
    return 'alpha', _reshape_norm
  raise ValueError(f'{module}/{leaf} has no counterpart in the PyTorch networks (they support '
                   'the InstanceNorm++ and VarianceNorm normalisations only).')


def torch_layout(template, torch_keys: Sequence[str]) -> dict[tuple[str, ...], Any]:
  """Where each Flax parameter of an :class:`NCSNv2` lies in a score_sde_pytorch state dict.

  The Module should be the PyTorch one, ``ncsnv2_from_config(config, flavour='pytorch')``.

  Args:
    template: the nested dict of the Flax params (arrays or ``jax.ShapeDtypeStruct``).
    torch_keys: the state-dict keys, ``module.`` prefix removed.

  Returns:
    ``{flax leaf path: torch key}``, or ``(torch key, fn)`` where the value needs ``fn`` (a
    numpy function) instead of the generic conversion: the (C,) InstanceNorm++ / VarianceNorm
    parameters become (1, 1, 1, C).
  """
  n_stages = sum(1 for k in template if 'RefineBlock' in k)
  if n_stages not in _TORCH_STAGES:
    raise ValueError(f'No PyTorch network has {n_stages} RefineBlocks.')
  stages = _TORCH_STAGES[n_stages]
  layout = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]:
    names = tuple(p.key for p in path)
    parts, node, parent = [], template, ''
    for name in names[:-1]:
      parts.append(_child(parent, name, node, stages))
      node, parent = node[name], name
    torch_leaf, fn = _leaf(names[-2], names[-1])
    key = '.'.join(parts + [torch_leaf])
    layout[names] = key if fn is None else (key, fn)
  _check_available(layout, torch_keys)
  return layout


def _check_available(layout: dict, torch_keys: Sequence[str]) -> None:
  """Raises KeyError naming the Flax leaves whose PyTorch source is missing."""
  available = set(torch_keys)
  missing = {'/'.join(path): source if isinstance(source, str) else source[0]
             for path, source in layout.items()}
  missing = {path: key for path, key in missing.items() if key not in available}
  if missing:
    shown = ', '.join(f'{p} <- {k!r}' for p, k in list(missing.items())[:5])
    raise KeyError(f'{len(missing)} parameters have no source in the PyTorch state dict: '
                   f'{shown}{", ..." if len(missing) > 5 else ""}')
