"""Controllable generation with the predictor-corrector sampler (Song et al. 2021, sec. 5, app. I).

Two kinds of condition:

* **Linear measurements** ``y = mask * P^T x_0``: some coordinates of the data in an orthonormal
  basis ``P`` are known (mask 1 = known). Inpainting is ``P = I``; colorization is the original's
  fixed orthonormal channel mixing whose first axis is gray, ``(R + G + B) / sqrt(3)``.
  Because ``P`` is orthonormal, the forward noise stays isotropic in the new basis, and given
  ``y`` the known coordinates of ``x_t`` are ``N(m(t) y, s(t)^2 I)`` independently of the rest.
* **A class** ``y``: the score plus the gradient of ``log p_t(y | x_t)`` of a time-conditioned
  classifier.

Methods for linear measurements (``method=``):

* ``'replacement'`` (the paper): after every predictor and corrector step the known coordinates
  are replaced by a fresh draw from the forward process, ``m(t) y + s(t) z``. The unknown ones
  follow the *unconditional* score ``grad_u log p_t(x_t)``, which conditions on the noisy
  ``x_t^k`` instead of on ``y``: the result is biased toward the unconditional distribution
  (docs/controllable.md measures by how much).
* ``'tmpd'`` (Tweedie moment projection, Boys et al. 2023): replacement as above, but with the
  conditional score ``grad log p_t(x_t) + grad log p(y | x_t)``, where ``p(y | x_t)`` uses the
  Gaussian with the first two moments of ``p(x_0 | x_t)`` given by Tweedie's formulas:
  ``x0(x_t) = (x_t + s^2 score) / m`` and ``Sigma = Cov[x_0 | x_t] = (s^2 / m) d x0 / d x_t``.
  Then

    ``grad log p(y | x_t) = J^T A^T (A Sigma A^T)^{-1} (y - A x0)``,  ``J = d x0 / d x_t``,

  with ``A = mask * P^T`` and the linear system solved per example by ``solver_iters`` steps of
  GMRES (each one JVP of the score). For Gaussian data ``p(x_0 | x_t)`` *is* that Gaussian, so
  the guided score is the exact conditional score once GMRES has converged (``solver_iters`` at
  least the number of distinct eigenvalues of ``A Sigma A^T``).

Every sampler is jitted, runs one ``lax.scan`` over the N times and takes
``(key, score_fn, params, ...)``, with the per-example random streams of
:mod:`sde_jax.sampling.pc`; with nothing known (mask 0) the replacement sampler returns exactly
the unconditional PC sampler's samples.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax import rng, sampling
from sde_jax.sampling import pc
from sde_jax.sde import SDE, ScoreFn, batch_mul

Array = jax.Array
ParamScoreFn = pc.ParamScoreFn
# logit_fn(classifier_params, x, t) -> logits (B, num_classes)
LogitFn = Callable[[Any, Array, Array], Array]



# --------------------------------------------------------------------------------------------
# Bases of the linear measurements.


class Basis(NamedTuple):
  """An orthonormal change of basis of the channel axis.

  Attributes:
    decouple: ``x -> P^T x`` per pixel (channels last).
    couple: its inverse (and transpose), ``u -> P u``.
  """

  decouple: Callable[[Array], Array]
  couple: Callable[[Array], Array]


def _channel_basis(matrix: np.ndarray) -> Basis:
  m = jnp.asarray(matrix, jnp.float32)
  return Basis(lambda x: jnp.einsum('...i,ij->...j', x, m),
               lambda u: jnp.einsum('...j,ij->...i', u, m))


# The original's decoupling matrix (columns): gray (1, 1, 1) / sqrt(3), then (-2, 1, 1) / sqrt(6)
# and (0, 1, -1) / sqrt(2); written exactly here, the original's float32 digits round to it.
GRAY_MATRIX = np.stack([np.ones(3) / np.sqrt(3), np.array([-2.0, 1.0, 1.0]) / np.sqrt(6),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2)], axis=1)

BASES = {'identity': Basis(lambda x: x, lambda u: u), 'gray': _channel_basis(GRAY_MATRIX)}


def gray_mask(shape: tuple[int, ...]) -> Array:
  """The colorization mask in the gray basis: the first channel known, the others not."""
  return jnp.zeros(shape, jnp.float32).at[..., 0].set(1.0)


# --------------------------------------------------------------------------------------------
# Replacement and the Tweedie-moment guidance.


def _kernel(sde: SDE, t: Array) -> tuple[Array, Array]:
  """Mean scale ``m(t)`` and std ``s(t)`` of ``p_{0t}``, shape (B,); ``s(0) = 0`` (the data)."""
  scale, std = sde.marginal_prob(jnp.ones_like(t), t)
  return scale, jnp.where(t > 0, std, 0.0)


def _replace(basis: Basis, x: Array, y: Array, mask: Array, scale: Array, std: Array,
             z: Array) -> Array:
  """``x`` with its known coordinates set to ``m y + s z`` (in the basis)."""
  u = basis.decouple(x)
  known = batch_mul(scale, y) + batch_mul(std, z)
  return basis.couple(u + mask * (known - u))


def _dot(a: Array, b: Array) -> Array:
  """Per-example inner product, shape (B,)."""
  return jnp.sum((a * b).reshape(a.shape[0], -1), axis=-1)


def gmres(matvec: Callable[[Array], Array], b: Array, iters: int) -> Array:
  """``iters`` steps of GMRES for ``matvec(v) = b`` from 0, each example its own system.

  Arnoldi with modified Gram-Schmidt builds an orthonormal basis ``V`` of the Krylov space
  ``span(b, A b, ..., A^{iters-1} b)`` of each example, and the solution is ``V c`` with ``c``
  minimising ``|| beta e_1 - H c ||`` (``H`` the Hessenberg matrix of the Arnoldi relation). The
  residual never grows and the operator need not be symmetric, which the Jacobian of a learned
  score is not (conjugate gradients diverged on it). A breakdown (an exactly solved system) leaves
  zero basis vectors, which the least-squares step ignores.
  """
  batch = b.shape[0]
  safe = lambda n: jnp.where(n > 0, n, 1.0)
  beta = jnp.sqrt(_dot(b, b))
  basis = [batch_mul(1.0 / safe(beta), b)]
  hessenberg = jnp.zeros((batch, iters + 1, iters), b.dtype)
  for j in range(iters):  # unrolled: iters is small, and XLA:CPU is slow on loops of network passes
    w = matvec(basis[j])
    for i in range(j + 1):
      hij = _dot(w, basis[i])
      hessenberg = hessenberg.at[:, i, j].set(hij)
      w = w - batch_mul(hij, basis[i])
    norm = jnp.sqrt(_dot(w, w))
    hessenberg = hessenberg.at[:, j + 1, j].set(norm)
    basis.append(batch_mul(1.0 / safe(norm), w))
  coef = _hessenberg_lstsq(hessenberg, beta)
  return sum(batch_mul(coef[:, j], basis[j]) for j in range(iters))


def _hessenberg_lstsq(h: Array, beta: Array) -> Array:
  """``argmin_c || beta e_1 - H c ||`` for upper Hessenberg ``H`` of shape (B, m + 1, m).

  Givens rotations make ``H`` upper triangular (elementwise over the batch: a LAPACK call per
  example would cost more than the rest of a step on small data), then back substitution; a zero
  pivot (after a breakdown) gives a zero coefficient.
  """
  batch, _, m = h.shape
  g = jnp.zeros((batch, m + 1), h.dtype).at[:, 0].set(beta)
  for j in range(m):
    a, c = h[:, j, j], h[:, j + 1, j]
    norm = jnp.sqrt(a**2 + c**2)
    cos = jnp.where(norm > 0, a / jnp.where(norm > 0, norm, 1.0), 1.0)
    sin = jnp.where(norm > 0, c / jnp.where(norm > 0, norm, 1.0), 0.0)
    rows = jnp.stack([h[:, j], h[:, j + 1]], axis=1)  # (B, 2, m): rows j and j + 1
    pair = jnp.stack([g[:, j], g[:, j + 1]], axis=1)  # (B, 2)
    rotation = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], axis=1)
    rows = jnp.einsum('bij,bjm->bim', rotation, rows)
    pair = jnp.einsum('bij,bj->bi', rotation, pair)
    h = h.at[:, j].set(rows[:, 0]).at[:, j + 1].set(rows[:, 1])
    g = g.at[:, j].set(pair[:, 0]).at[:, j + 1].set(pair[:, 1])
  coef = [None] * m
  for j in reversed(range(m)):
    rest = g[:, j] - sum((h[:, j, k] * coef[k] for k in range(j + 1, m)), jnp.zeros_like(beta))
    pivot = h[:, j, j]
    coef[j] = jnp.where(pivot != 0, rest / jnp.where(pivot != 0, pivot, 1.0), 0.0)
  return jnp.stack(coef, axis=1)


def tweedie_guidance(sde: SDE, score: ScoreFn, basis: Basis, y: Array, mask: Array,
                     solver_iters: int) -> ScoreFn:
  """The conditional score ``score(x, t) + grad log p(y | x_t)`` of the module docstring.

  ``y`` holds the known coordinates in the basis (zero elsewhere). The moments of
  ``p(x_0 | x_t)`` are Tweedie's; their dependence on ``x_t`` through the covariance is ignored
  (it is constant for Gaussian data).
  """

  def guided(x, t):
    scale, std = sde.marginal_prob(jnp.ones_like(t), t)

    def denoise(v):
      s = score(v, t)
      return batch_mul(1.0 / scale, v + batch_mul(std**2, s)), s

    x0, jvp, s = jax.linearize(denoise, x, has_aux=True)
    to_image = lambda v: basis.couple(mask * v)
    cov = lambda v: mask * basis.decouple(batch_mul(std**2 / scale, jvp(to_image(v))))
    residual = mask * (y - basis.decouple(x0))
    weights = gmres(cov, residual, solver_iters)
    (grad,) = jax.linear_transpose(jvp, x)(to_image(weights))
    return s + grad

  return guided


# --------------------------------------------------------------------------------------------
# The samplers.


METHODS = ('replacement', 'tmpd')


def get_pc_linear_sampler(sde: SDE, shape: tuple[int, ...], basis: str = 'identity',
                          method: str = 'replacement', predictor: str = 'reverse_diffusion',
                          corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                          probability_flow: bool = False, denoise: bool = True,
                          eps: float = 1e-3, solver_iters: int = 5):
  """Builds a PC sampler of ``p(x_0 | mask * P^T x_0 = mask * P^T data)``.

  From ``x ~ p_T`` with its known coordinates replaced, and for each ``t_n`` of
  ``linspace(T, eps, N)``: corrector at ``t_n``, replace at ``t_n``; predictor from ``t_n``,
  replace at ``t_{n+1}`` (the time the predictor stepped to; 0 after the last step, where the
  known coordinates become ``y`` itself). The returned ``x_mean`` is the last predictor step's
  ``x_mean`` on the unknown coordinates and ``y`` on the known ones.

  Args:
    sde: the forward SDE; ``sde.N`` steps.
    shape: ``(B, ...)``; for ``basis='gray'`` the last axis has 3 channels.
    basis: ``'identity'`` (inpainting) or ``'gray'`` (colorization), see :data:`BASES`.
    method: ``'replacement'`` (the paper) or ``'tmpd'`` (module docstring).
    predictor, corrector, snr, n_steps, probability_flow, denoise, eps: as in
      :func:`sde_jax.sampling.get_pc_sampler`.
    solver_iters: GMRES steps per guided score evaluation (``'tmpd'`` only).

  Returns:
    ``sampler(key, score_fn, params, data, mask, first_index=0) -> (x, nfe)``. ``data`` and
    ``x`` are in model space with ``shape``; ``mask`` (broadcastable to ``shape``) is in the
    basis, 1 where known. ``nfe`` counts network passes: a guided evaluation is a
    linearisation, ``solver_iters`` JVPs and one VJP, counted ``2 + solver_iters``.
  """
  shape, pred, corr = pc.pc_steps(sde, shape, predictor, corrector, snr, n_steps,
                                  probability_flow)
  space = pc.lookup(BASES, basis, 'basis')
  if method not in METHODS:
    raise ValueError(f'method={method!r} is not known; expected one of {list(METHODS)}.')
  if basis == 'gray' and shape[-1] != 3:
    raise ValueError(f"basis='gray' needs 3 channels (last axis); got shape {shape}.")
  if method == 'tmpd' and solver_iters < 1:
    raise ValueError(f"method='tmpd' needs solver_iters >= 1, got {solver_iters}.")
  cost = 2 + solver_iters if method == 'tmpd' else 1
  nfe = sde.N * (pred.evals + corr.evals) * cost

  def sample(key, score_fn, params, data, mask, first_index):
    score = functools.partial(score_fn, params)
    mask = jnp.broadcast_to(mask.astype(data.dtype), shape)
    y = mask * space.decouple(data)
    if method == 'tmpd':
      score = tweedie_guidance(sde, score, space, y, mask, solver_iters)
    keys = rng.per_example_keys(key, shape[0], first_index)
    streams = {stage: rng.fold_in_all(keys, stage) for stage in (
        rng.CORRECTOR, rng.PREDICTOR, rng.REPLACE_CORRECTOR, rng.REPLACE_PREDICTOR)}
    times = jnp.linspace(sde.T, eps, sde.N)
    next_times = jnp.concatenate([times[1:], jnp.zeros((1,), times.dtype)])

    def replace(x, stage, n, t):
      z = rng.normal(rng.fold_in_all(streams[stage], n), shape, x.dtype)
      return _replace(space, x, y, mask, *_kernel(sde, t), z)

    def step(carry, n):
      x, _ = carry
      t, t_next = jnp.full(shape[:1], times[n]), jnp.full(shape[:1], next_times[n])
      x, _ = corr.update(score, rng.fold_in_all(streams[rng.CORRECTOR], n), x, t)
      x = replace(x, rng.REPLACE_CORRECTOR, n, t)
      x, x_mean = pred.update(score, rng.fold_in_all(streams[rng.PREDICTOR], n), x, t)
      x = replace(x, rng.REPLACE_PREDICTOR, n, t_next)
      x_mean = _replace(space, x_mean, y, mask, _kernel(sde, t_next)[0], jnp.zeros_like(t),
                        jnp.zeros_like(x))
      return (x, x_mean), None

    x = pc.prior_sample(sde, keys, shape)
    z = rng.normal(rng.fold_in_all(keys, rng.REPLACE_PRIOR), shape, x.dtype)
    x = _replace(space, x, y, mask, *_kernel(sde, jnp.full(shape[:1], sde.T)), z)
    (x, x_mean), _ = jax.lax.scan(step, (x, x), jnp.arange(sde.N))
    return x_mean if denoise else x

  compiled = jax.jit(sample, static_argnums=1)

  def sampler(key: Array, score_fn: ParamScoreFn, params: Any, data: Array, mask: Array,
              first_index: int | Array = 0) -> tuple[Array, int]:
    if tuple(data.shape) != shape:
      raise ValueError(f'data has shape {tuple(data.shape)}; this sampler was built for {shape}.')
    return compiled(key, score_fn, params, data, jnp.asarray(mask), first_index), nfe

  return sampler


def get_pc_inpainter(sde: SDE, shape: tuple[int, ...], **options):
  """Inpainting: :func:`get_pc_linear_sampler` with ``basis='identity'``.

  Returns:
    ``inpainter(key, score_fn, params, data, mask, first_index=0) -> (x, nfe)``, ``mask`` 1 on
    known pixels (same shape as ``data``, or broadcastable to it).
  """
  return get_pc_linear_sampler(sde, shape, basis='identity', **options)


def get_pc_colorizer(sde: SDE, shape: tuple[int, ...], **options):
  """Colorization: the gray channel ``(R + G + B) / sqrt(3)`` of the original's basis is known.

  Returns:
    ``colorizer(key, score_fn, params, gray, first_index=0) -> (x, nfe)``: ``gray`` has
    ``shape`` (3 equal channels, model space); only its projection on the gray axis is used.
  """
  linear = get_pc_linear_sampler(sde, shape, basis='gray', **options)
  mask = gray_mask(shape)

  def colorizer(key, score_fn, params, gray, first_index=0):
    return linear(key, score_fn, params, gray, mask, first_index)

  return colorizer


@functools.lru_cache(maxsize=None)
def _guided_score_fn(score_fn: ParamScoreFn, logit_fn: LogitFn, scale: float) -> ParamScoreFn:
  """``(params, x, t) -> score + scale grad log p_t(labels | x)`` with
  ``params = (score_params, classifier_params, labels)``; cached so that it stays one static
  argument of the jitted sampler."""

  def guided(params, x, t):
    score_params, classifier_params, labels = params

    def log_prob(v):
      logp = jax.nn.log_softmax(logit_fn(classifier_params, v, t), axis=-1)
      return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return score_fn(score_params, x, t) + scale * jax.grad(log_prob)(x)

  return guided


def get_pc_conditional_sampler(sde: SDE, shape: tuple[int, ...], guidance_scale: float = 1.0,
                               **options):
  """Class-conditional PC sampler: the score ``grad log p_t(x) + w grad log p_t(y | x)``.

  ``w = guidance_scale`` (1: the exact conditional score given an exact classifier; ``w > 1``
  sharpens ``p(y | x)`` as a temperature ``1 / w`` would). With ``w = 0`` the samples are those
  of :func:`sde_jax.sampling.get_pc_sampler` with the same options and key.

  Args:
    sde, shape: as for the PC sampler.
    guidance_scale: the weight ``w`` of the classifier gradient.
    **options: the options of :func:`sde_jax.sampling.get_pc_sampler`.

  Returns:
    ``sampler(key, score_fn, params, logit_fn, classifier_params, labels, first_index=0) ->
    (x, nfe)`` with ``logit_fn(classifier_params, x, t) -> logits`` (build it once, e.g. with
    :func:`get_logit_fn`: it is a static argument) and ``labels`` int (B,). ``nfe`` counts
    score evaluations; the classifier is differentiated as many times.
  """
  base = sampling.get_pc_sampler(sde, shape, **options)
  scale = float(guidance_scale)

  def sampler(key, score_fn, params, logit_fn, classifier_params, labels, first_index=0):
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (shape[0],):
      raise ValueError(f'labels has shape {labels.shape}; expected ({shape[0]},).')
    return base(key, _guided_score_fn(score_fn, logit_fn, scale),
                (params, classifier_params, labels), first_index=first_index)

  return sampler


def classifier_noise_level(sde: SDE, t: Array) -> Array:
  """The noise level a classifier sees: ``s(t) / m(t)``, shape (B,).

  ``x_t / m(t) = x_0 + (s / m) z``, so this is the VE sigma that gives the same
  signal-to-noise ratio: ``sigma(t)`` itself for VE, ``sqrt(1 - m^2) / m`` for VP. Training
  (:mod:`sde_jax.train_classifier`) and sampling both use this function.
  """
  scale, std = sde.marginal_prob(jnp.ones_like(t), t)
  return std / scale


def get_logit_fn(sde: SDE, classifier) -> LogitFn:
  """``logit_fn(classifier_params, x, t)``: the classifier at the noise level of ``sde`` at t."""

  def logit_fn(params, x, t):
    return classifier.apply({'params': params}, x, classifier_noise_level(sde, t), train=False)

  return logit_fn


# --------------------------------------------------------------------------------------------
# Factories.

TASKS = {'inpaint': get_pc_inpainter, 'colorize': get_pc_colorizer,
         'class': get_pc_conditional_sampler}
_PC_OPTIONS = ('predictor', 'corrector', 'snr', 'n_steps', 'probability_flow', 'denoise', 'eps')
_TASK_OPTIONS = {'inpaint': _PC_OPTIONS + ('method', 'solver_iters'),
                 'colorize': _PC_OPTIONS + ('method', 'solver_iters'),
                 'class': _PC_OPTIONS + ('guidance_scale',)}


def get_controllable_sampler(task: str, sde: SDE, shape: tuple[int, ...], **options):
  """Builds ``TASKS[task](sde, shape, **options)``.

  Raises:
    ValueError: for an unknown task (or unknown names in the options).
    TypeError: for an option the task does not take (all of them named).
  """
  factory = pc.lookup(TASKS, task, 'task')
  valid = _TASK_OPTIONS[task]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(f'task={task!r} takes no option(s) {unknown}; valid options: {list(valid)}.')
  return factory(sde, shape, **options)


def options_from_config(config, task: str, sde: SDE) -> dict:
  """The options of ``task``: the PC sampler's from ``config.sampling`` (read as
  ``sde_jax.sampling.options_from_config`` reads them) and ``config.controllable``'s
  (``method``, ``solver_iters``, ``guidance_scale``; the defaults where a config lacks them).

  Raises:
    ValueError: if ``config.sampling.method`` is not ``'pc'``: these samplers are PC samplers.
  """
  method, options = sampling.options_from_config(config, sde)
  if method != 'pc':
    raise ValueError(f'config.sampling.method={method!r}: inpainting, colorization and class-'
                     "conditional sampling run the PC sampler; set --config.sampling.method=pc "
                     '(its predictor, corrector, snr and n_steps_each are used).')
  c = config.get('controllable', {})
  if task == 'class':
    options['guidance_scale'] = float(c.get('guidance_scale', 1.0))
  else:
    options.update(method=str(c.get('method', 'replacement')).lower(),
                   solver_iters=int(c.get('solver_iters', 5)))
  return options


def get_controllable_sampler_from_config(config, task: str, sde: SDE, shape: tuple[int, ...],
                                         **overrides):
  """:func:`get_controllable_sampler` with :func:`options_from_config`, then ``overrides``."""
  options = {**options_from_config(config, task, sde), **overrides}
  return get_controllable_sampler(task, sde, shape, **options)


# --------------------------------------------------------------------------------------------
# Jobs: what `sde-jax inpaint | colorize | sample --class K` run. Single device; images are
# uint8 NHWC in and out, example i of a job draws from fold_in(key(seed), i).

OUTPUT_DIR = 'controllable'


def _known_columns(h, w, fraction_known):
  return np.broadcast_to(np.arange(w)[None, :] < round(w * fraction_known), (h, w))


MASKS = {
    'right_half': lambda h, w: _known_columns(h, w, 0.5),  # the left half is known
    'left_half': lambda h, w: _known_columns(h, w, 0.5)[:, ::-1],
    'bottom_half': lambda h, w: _known_columns(w, h, 0.5).T,  # the top half is known
    'center': lambda h, w: ~(np.abs(np.arange(h)[:, None] - (h - 1) / 2) < h / 4)
                           | ~(np.abs(np.arange(w)[None, :] - (w - 1) / 2) < w / 4),
    'random': lambda h, w: np.random.default_rng(0).random((h, w)) < 0.5,
}


def make_mask(kind: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """A float32 mask of ``image_shape`` (H, W, C), 1 on known pixels, the same for all channels.

  ``kind`` names the *unknown* region: ``'right_half'``, ``'left_half'``, ``'bottom_half'``,
  ``'center'`` (the central square of half the side), or ``'random'`` (half of the pixels, a
  fixed draw).
  """
  h, w, c = image_shape
  known = pc.lookup(MASKS, kind, 'mask')(h, w)
  return np.repeat(np.asarray(known, np.float32)[..., None], c, axis=-1)


def load_images(config, num_images: int, folder: str | None = None) -> np.ndarray:
  """``num_images`` uint8 images (N, H, W, C) at the config's size and channels.

  From ``folder`` (PNG / JPEG / BMP files in name order, centre-cropped to a square and resized
  with Lanczos filtering) or, without one, the first images of the config's eval split.
  """
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  if folder is None:
    from sde_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    batch = next(data_lib.get_dataset(config, 'eval', batch_size=num_images, seed=config.seed))
    return data_lib.to_uint8_data(np.asarray(batch['image'])[np.asarray(batch['mask'])])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = sorted(f for f in os.listdir(folder)
                 if f.lower().endswith(('.png', '.jpg', '.jpeg', '.bmp')))[:num_images]
  if not files:
    raise FileNotFoundError(f'no PNG, JPEG or BMP images in {folder}.')
  out = []
  for name in files:
    with Image.open(os.path.join(folder, name)) as image:
      image = image.convert('L' if channels == 1 else 'RGB')
      side = min(image.size)
      left, top = (image.width - side) // 2, (image.height - side) // 2
      image = image.crop((left, top, left + side, top + side)).resize(
          (size, size), Image.Resampling.LANCZOS)
      out.append(np.asarray(image, np.uint8).reshape(size, size, channels))
  return np.stack(out)


def gray_images(images: np.ndarray) -> np.ndarray:
  """The gray version ``(R + G + B) / 3`` of uint8 RGB images, in 3 equal channels (uint8)."""
  gray = np.round(np.asarray(images, np.float64).mean(-1, keepdims=True))
  return np.repeat(gray.astype(np.uint8), 3, axis=-1)


def masked_view(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """uint8 images with their unknown pixels (mask 0) shown in mid-gray."""
  return np.where(np.broadcast_to(mask, images.shape) > 0, images, 128).astype(np.uint8)


def zoom(images: np.ndarray, factor: int | None = None) -> np.ndarray:
  """Nearest-neighbour enlargement of (N, H, W, C) images by ``factor`` (default: to at least
  64 pixels high), so that 16 px digits are visible in a grid."""
  images = np.asarray(images)
  factor = factor or max(1, -(-64 // images.shape[1]))
  return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def write_rows_png(path: str, *columns: np.ndarray) -> None:
  """Writes one row per example, ``columns`` side by side (uint8 (N, H, W, C) each; 1-channel
  columns are shown in gray next to 3-channel ones), enlarged by :func:`zoom`."""
  columns = [zoom(c) for c in columns]
  if max(c.shape[-1] for c in columns) == 3:
    columns = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c for c in columns]
  rows = np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])
  from sde_jax import viz  # pylint: disable=g-import-not-at-top
  viz.image_grid_png(path, rows, ncol=len(columns))


def _restore_score_model(config, workdir: str):
  """(job, EMA params, step) of ``workdir``'s latest score-model checkpoint, on one device."""
  from sde_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  job = train.Job.from_config(config)
  params, step = checkpoints.restore_params(workdir,
                                            checkpoints.on_one_device(job.abstract_params()))
  return job, params, step


def _in_batches(config, inputs: dict[str, np.ndarray], run) -> np.ndarray:
  """``run(batch_inputs, first_index) -> images in [0, 1]`` over ``eval.batch_size`` chunks; the
  last chunk is padded (by repeating its last example) so that one program serves all."""
  n = len(next(iter(inputs.values())))
  size = min(int(config.eval.batch_size), n)
  out = []
  for first in range(0, n, size):
    chunk = {k: v[first:first + size] for k, v in inputs.items()}
    pad = size - len(next(iter(chunk.values())))
    chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
    images = np.asarray(run(chunk, first))[:size - pad]
    out.append(np.round(np.clip(images * 255.0, 0, 255)).astype(np.uint8))
  return np.concatenate(out)


def _conditioned(config, task: str, job, params, inputs: dict[str, np.ndarray], conditions,
                 method: str | None, seed: int | None) -> np.ndarray:
  """Runs ``task``'s sampler (options from the config, ``method`` overriding
  ``controllable.method``) over ``inputs`` in batches of :func:`_in_batches`; ``conditions(chunk)``
  gives the sampler's arrays after ``params``. Example i draws from ``fold_in(key(seed), i)``.

  Returns:
    uint8 images.
  """
  overrides = {} if method is None else {'method': method}
  key = jax.random.key(config.seed if seed is None else seed)
  samplers = {}

  def run(chunk, first):
    shape = next(iter(chunk.values())).shape
    if shape not in samplers:
      samplers[shape] = get_controllable_sampler_from_config(config, task, job.sde, shape,
                                                             **overrides)
    x, _ = samplers[shape](key, job.score_fn, params, *conditions(chunk), first_index=first)
    return job.inverse_scaler(x)

  return _in_batches(config, inputs, run)


def inpaint_images(config, workdir: str, images: np.ndarray, mask: np.ndarray, *,
                   method: str | None = None, seed: int | None = None) -> np.ndarray:
  """Inpaints uint8 ``images`` (N, H, W, C) where ``mask`` (H, W, C or N, H, W, C) is 0, with
  the EMA weights of ``workdir``'s latest checkpoint and the sampler of ``config.sampling`` /
  ``config.controllable`` (``method`` overrides ``controllable.method``).

  Returns:
    uint8 images (N, H, W, C); the known pixels are the input's.
  """
  job, params, _ = _restore_score_model(config, workdir)
  images = np.asarray(images)
  mask = np.broadcast_to(np.asarray(mask, np.float32), images.shape)
  to_model = lambda u8: job.scaler(jnp.asarray(u8, jnp.float32) / 255.0)
  result = _conditioned(config, 'inpaint', job, params, {'image': images, 'mask': mask},
                        lambda c: (to_model(c['image']), jnp.asarray(c['mask'])), method, seed)
  return np.where(mask > 0, images, result)


def colorize_images(config, workdir: str, images: np.ndarray, *, method: str | None = None,
                    seed: int | None = None) -> np.ndarray:
  """Colours the gray versions (:func:`gray_images`) of uint8 RGB ``images`` (N, H, W, 3) with
  ``workdir``'s RGB model; the result's channel mean is the gray input's.

  Returns:
    uint8 RGB images (N, H, W, 3).
  """
  if int(config.data.num_channels) != 3:
    raise ValueError(f'colorization needs an RGB model; this config has '
                     f'data.num_channels={config.data.num_channels}.')
  job, params, _ = _restore_score_model(config, workdir)
  gray = gray_images(images)
  to_model = lambda u8: job.scaler(jnp.asarray(u8, jnp.float32) / 255.0)
  return _conditioned(config, 'colorize', job, params, {'gray': gray},
                      lambda c: (to_model(c['gray']),), method, seed)


def sample_class(config, workdir: str, labels, *, guidance_scale: float | None = None,
                 seed: int | None = None) -> np.ndarray:
  """Class-conditional samples, one per entry of ``labels``, from ``workdir``'s score model and
  the classifier under ``workdir/classifier`` (``sde-jax train-classifier``).

  Returns:
    uint8 images (N, H, W, C).
  """
  from sde_jax import train_classifier  # pylint: disable=g-import-not-at-top
  job, params, _ = _restore_score_model(config, workdir)
  classifier, classifier_params, _ = train_classifier.restore_classifier(config, workdir)
  labels = np.asarray(labels, np.int32).reshape(-1)
  num_classes = int(config.classifier.num_classes)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}); got {labels.tolist()}.')
  logit_fn = get_logit_fn(job.sde, classifier)
  overrides = {} if guidance_scale is None else {'guidance_scale': guidance_scale}
  key = jax.random.key(config.seed if seed is None else seed)
  image_shape = job.image_shape
  samplers = {}

  def run(chunk, first):
    shape = (len(chunk['label']),) + image_shape
    if shape not in samplers:
      samplers[shape] = get_controllable_sampler_from_config(config, 'class', job.sde, shape,
                                                             **overrides)
    x, _ = samplers[shape](key, job.score_fn, params, logit_fn, classifier_params,
                           jnp.asarray(chunk['label']), first_index=first)
    return job.inverse_scaler(x)

  return _in_batches(config, {'label': labels}, run)


def _output(workdir: str, name: str) -> str:
  """``WORKDIR/controllable/<name>``; an earlier run's file of that name and its ``.npz`` move
  to ``controllable/previous-<time>/`` first (nothing written is lost)."""
  from sde_jax import train  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, OUTPUT_DIR)
  os.makedirs(directory, exist_ok=True)
  train.keep_previous_outputs(directory, (name, os.path.splitext(name)[0] + '.npz'))
  return os.path.join(directory, name)


def inpaint_job(config, workdir: str, *, num_images: int = 8, folder: str | None = None,
                mask: str | None = None, method: str | None = None) -> str:
  """``sde-jax inpaint``: inpaints ``num_images`` images (the eval split or ``folder``).

  ``mask`` (default ``config.controllable.mask``, else 'right_half') names the unknown region,
  see :func:`make_mask`. Writes ``WORKDIR/controllable/inpaint-<method>.png`` (rows: input |
  known pixels | result) and ``.npz`` (``images``, ``mask``, ``result``).

  Returns:
    The path of the PNG.
  """
  c = config.get('controllable', {})
  method = (method or c.get('method', 'replacement')).lower()
  kind = mask or c.get('mask', 'right_half')
  images = load_images(config, num_images, folder)
  known = make_mask(kind, images.shape[1:])
  result = inpaint_images(config, workdir, images, known, method=method)
  path = _output(workdir, f'inpaint-{method}.png')
  np.savez(path[:-4] + '.npz', images=images, mask=known, result=result)
  write_rows_png(path, images, masked_view(images, known), result)
  return path


def colorize_job(config, workdir: str, *, num_images: int = 8, folder: str | None = None,
                 method: str | None = None) -> str:
  """``sde-jax colorize``: colours the gray versions of ``num_images`` RGB images.

  Writes ``WORKDIR/controllable/colorize-<method>.png`` (rows: input | gray | result) and
  ``.npz`` (``images``, ``gray``, ``result``).

  Returns:
    The path of the PNG.
  """
  method = (method or config.get('controllable', {}).get('method', 'replacement')).lower()
  images = load_images(config, num_images, folder)
  result = colorize_images(config, workdir, images, method=method)
  gray = gray_images(images)
  path = _output(workdir, f'colorize-{method}.png')
  np.savez(path[:-4] + '.npz', images=images, gray=gray, result=result)
  write_rows_png(path, images, gray, result)
  return path


def class_job(config, workdir: str, label: int, *, num_samples: int = 16,
              guidance_scale: float | None = None) -> str:
  """``sde-jax sample --class K``: ``num_samples`` samples of class ``label``.

  Writes ``WORKDIR/controllable/class-<label>.png`` (a grid, enlarged by :func:`zoom`) and
  ``.npz`` (``samples``).

  Returns:
    The path of the PNG.
  """
  samples = sample_class(config, workdir, np.full(num_samples, label),
                         guidance_scale=guidance_scale)
  path = _output(workdir, f'class-{label}.png')
  np.savez(path[:-4] + '.npz', samples=samples)
  from sde_jax import viz  # pylint: disable=g-import-not-at-top
  viz.image_grid_png(path, zoom(samples))
  return path
