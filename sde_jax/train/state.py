"""The train state, the optimizer, and the compiled train and eval steps.

One code path for one CPU, one GPU and a TPU pod: the state is created sharded over the mesh of
:mod:`sde_jax.parallel` (``jax.eval_shape`` + ``jit(init, out_shardings=...)``), the step is one
jitted program with in/out shardings and a donated state, and ``n_jitted_steps`` optimizer steps
run in one ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from sde_jax import models, parallel, rng

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything a training job carries from one step to the next.

  ``key`` is the base of the random stream: step ``s`` draws from ``fold_in(key, s)``, so a
  resumed job repeats the stream of an uninterrupted one.
  """

  step: Array
  params: Any
  opt_state: Any
  params_ema: Any
  key: Array


def learning_rate_schedule(optim) -> optax.Schedule:
  """``lr * min(step / warmup, 1)``, the original's linear warm-up (constant if warmup is 0).

  ``optim`` is a config's optimizer section (``config.optim``, ``config.classifier.optim``).
  """
  if optim.warmup > 0:
    return optax.linear_schedule(0.0, float(optim.lr), int(optim.warmup))
  return optax.constant_schedule(float(optim.lr))


def make_optimizer(optim) -> optax.GradientTransformation:
  """The original's optimizer: Adam, global-norm clipping, linear warm-up, decoupled decay.

  The original (flax.optim.Adam) decays as ``p <- p - lr (adam_update + weight_decay p)``, which
  is ``optax.adamw`` with the same learning rate; beta2 is flax's 0.999. Gradients are clipped to
  global norm ``grad_clip`` unless it is negative. ``optim`` is a config's optimizer section.
  """
  if optim.get('optimizer', 'Adam') != 'Adam':
    raise ValueError(f"optim.optimizer={optim.optimizer!r}; only 'Adam' is supported.")
  adam = optax.adamw(learning_rate_schedule(optim), b1=float(optim.beta1), b2=0.999,
                     eps=float(optim.eps), weight_decay=float(optim.weight_decay))
  if optim.grad_clip < 0:
    return adam
  return optax.chain(optax.clip_by_global_norm(float(optim.grad_clip)), adam)


def init_train_state(model, optimizer, shape: tuple[int, ...], key: Array) -> TrainState:
  """Step 0: fresh parameters (the EMA starts at them) and the base key of the random stream.

  Args:
    model: the flax module to train.
    optimizer: its optax optimizer.
    shape: an input shape to initialise with, (1, *example_shape).
    key: the job's key.

  Returns:
    The state at step 0.
  """
  k_params, k_train = jax.random.split(key)
  params = models.init_params(model, k_params, shape)
  ema = jax.tree_util.tree_map(jnp.copy, params)  # its own buffers: the state is donated
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), ema, k_train)


def state_initializer(model, optimizer, example_shape: tuple[int, ...]) -> Callable:
  """``init(key) -> TrainState`` for ``model`` on examples of ``example_shape``."""
  return functools.partial(init_train_state, model, optimizer, (1, *example_shape))


def abstract_state(init_fn: Callable, seed: int, mesh,
                   fsdp_min_size: int = parallel.FSDP_MIN_SIZE) -> tuple[Any, Any]:
  """``(abstract, shardings)``: the state ``init_fn(key(seed))`` would make, as
  ``ShapeDtypeStruct`` leaves (nothing computed), and where each leaf lives on ``mesh``
  (:func:`sde_jax.parallel.param_shardings`)."""
  abstract = jax.eval_shape(init_fn, jax.random.key(seed))
  return abstract, parallel.param_shardings(mesh, abstract, fsdp_min_size)


def make_train_step(loss_fn, optimizer, ema_rate: float, schedule: optax.Schedule,
                    unroll: bool = False):
  """``train_steps(state, batches) -> (state, metrics)``: one optimizer step per leading index of
  ``batches`` in one ``lax.scan``.

  Step ``s`` draws its randomness from ``fold_in(state.key, s)``; the EMA follows
  ``e <- r e + (1 - r) p`` with the updated parameters. ``metrics`` holds per-step ``loss``,
  ``grad_norm`` (before clipping) and ``lr``, each of shape ``(n_steps,)``.

  Args:
    loss_fn: ``(params, key, batch) -> (loss, aux)``; ``batch`` is one step's slice of
      ``batches`` (an array or a dict of arrays, leading axis the batch).
    optimizer: the optax optimizer.
    ema_rate: r above.
    schedule: the learning rate, for the metrics.
    unroll: unroll the scan. XLA:CPU runs convolution gradients inside a loop many times
      slower (13x for the digits DDPM++ on 2 cores), at the price of a compile time that grows
      with n_steps.

  Returns:
    The ``train_steps`` function, to be jitted (:func:`compile_train_step`).
  """
  def one_step(state: TrainState, batch):
    key = jax.random.fold_in(state.key, state.step)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                 state.params_ema, params)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         params_ema=ema), metrics

  def train_steps(state: TrainState, batches):
    # unroll=0 unrolls every step; unroll=True would keep a one-trip loop when n_steps is 1.
    return jax.lax.scan(one_step, state, batches, unroll=0 if unroll else 1)

  return train_steps


def compile_train_step(train_steps, state_shardings, mesh):
  """``train_steps`` jitted with in/out shardings; the input state is donated."""
  return jax.jit(train_steps, in_shardings=(state_shardings, parallel.steps_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=0)


def compile_eval_step(loss_fn, state_shardings, mesh):
  """``eval_step(state, batch) -> loss``: the EMA parameters' mean loss over the examples of
  ``batch`` (``{'image', 'mask'}``) whose mask is set (eval batches are padded); its draws come
  from ``fold_in(fold_in(state.key, state.step), rng.TRAIN_EVAL)``."""
  def eval_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), rng.TRAIN_EVAL)
    per_example = loss_fn(state.params_ema, key, batch['image'])[1]['per_example']
    mask = batch['mask'].astype(per_example.dtype)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  return jax.jit(eval_step, in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


@jax.jit
def all_finite(tree) -> Array:
  """Whether every element of every array of ``tree`` is finite."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
