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

Modules: ``bases`` (the orthonormal bases), ``linear`` (the replacement rule and the samplers of
linear measurements), ``tweedie`` (the Tweedie-moment guidance), ``gmres`` (its solver),
``class_guidance`` (class-conditional sampling), ``factory`` (samplers by task, options from a
config), ``masks`` (inpainting masks), ``classifier_loss`` (the classifier's loss and accuracy on
noisy data), ``classifier_checkpoint`` (the trained classifier). The jobs are
:mod:`sde_jax.jobs.train_classifier` (``sde-jax train-classifier``) and
:mod:`sde_jax.jobs.controllable` (``sde-jax inpaint | colorize | sample --class``).
"""

from sde_jax.controllable.bases import BASES, GRAY_MATRIX, Basis, gray_mask
from sde_jax.controllable.class_guidance import (LogitFn, get_logit_fn,
                                                 get_pc_conditional_sampler)
from sde_jax.controllable.classifier_checkpoint import restore_classifier
from sde_jax.controllable.classifier_loss import classifier_loss_fn, make_accuracy_fn
from sde_jax.controllable.factory import (TASKS, get_controllable_sampler,
                                          get_controllable_sampler_from_config,
                                          options_from_config)
from sde_jax.controllable.gmres import gmres
from sde_jax.controllable.linear import (METHODS, get_pc_colorizer, get_pc_inpainter,
                                         get_pc_linear_sampler)
from sde_jax.controllable.masks import MASKS, make_mask
from sde_jax.controllable.tweedie import tweedie_guidance
from sde_jax.models.classifier import classifier_noise_level

__all__ = ['BASES', 'GRAY_MATRIX', 'MASKS', 'METHODS', 'TASKS', 'Basis', 'LogitFn',
           'classifier_loss_fn', 'classifier_noise_level', 'get_controllable_sampler',
           'get_controllable_sampler_from_config', 'get_logit_fn', 'get_pc_colorizer',
           'get_pc_conditional_sampler', 'get_pc_inpainter', 'get_pc_linear_sampler', 'gmres',
           'gray_mask', 'make_accuracy_fn', 'make_mask', 'options_from_config',
           'restore_classifier', 'tweedie_guidance']
