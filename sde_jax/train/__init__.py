"""Training: the train state and step (``state``), restore-or-init and saves (``resume``), the
check of a resume's config (``config_guard``), the metric log, preemption, a training schedule's
checks (``schedule``) and the flat loop every trainer runs (``loop``). ``sde-jax train`` is
:mod:`sde_jax.jobs.train`. See docs/training.md."""

from sde_jax.train.config_guard import SCHEDULE_ONLY, ConfigChangeError
from sde_jax.train.loop import Trainer, final_step, fit
from sde_jax.train.metric_log import MetricLog, format_duration
from sde_jax.train.preemption import Preemption
from sde_jax.train.resume import restore_or_init, save_state
from sde_jax.train.schedule import PERIODS, schedule_problems
from sde_jax.train.state import (TrainState, all_finite, compile_eval_step, compile_train_step,
                                 init_train_state, learning_rate_schedule, make_optimizer,
                                 make_train_step, state_initializer)

__all__ = ['ConfigChangeError', 'MetricLog', 'PERIODS', 'Preemption', 'SCHEDULE_ONLY',
           'TrainState', 'Trainer', 'all_finite', 'compile_eval_step', 'compile_train_step',
           'final_step', 'fit', 'format_duration', 'init_train_state', 'learning_rate_schedule',
           'make_optimizer', 'make_train_step', 'restore_or_init', 'save_state',
           'schedule_problems', 'state_initializer']
