"""What the one loop does differently for each family of methods.

The loop (:mod:`sparcl_jax.training.loop`) and its trainer
(:mod:`sparcl_jax.training.trainer`) are the same for every method; a
family says how a run starts, what happens at a task's and an epoch's start
and at a task's end, which parameters answer for a task, and what it adds to
checkpoints and results:

- :class:`RehearsalFamily` (ER, DER, DER++, ER-ACE, SparCL, SNIP, RigL,
  fine-tuning, joint): one optimizer built from the method (TDM/DGM
  inside), a fresh optimizer state per task for dense methods, the joint
  bound's fresh network per task, DDR's statistics and removals.
- :class:`TaskLevelFamily` (CLNP, EWC, SI, single-task): delegates to the
  method's task hooks (:class:`sparcl_jax.methods.task_level.
  TaskLevelMethod`), which receive the trainer as their ``runner``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax import ddr as ddr_lib
from sparcl_jax import methods
from sparcl_jax.replay import buffer as replay_buffer
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods import rehearsal_hooks
from sparcl_jax.methods import task_level
from sparcl_jax.models import registry
from sparcl_jax.training import run_state
from sparcl_jax.training.steps import TrainState

PyTree = Any


class RehearsalFamily:
  """Run hooks of the rehearsal family (see the module docstring)."""

  make_hooks = staticmethod(rehearsal_hooks.make_hooks)

  def check(self, trainer) -> None:
    """Raises ConfigError when the run cannot train this way."""
    for config, scenario in zip(trainer.configs, trainer.scenarios):
      run_state.check_sizes(config, scenario)

  def initial_state(self, trainer, config, scenario, data):
    """``(state, tx, kept_rows, extras)`` of one seed before its first step."""
    state, tx, kept_rows = run_state.initial_state(config, scenario,
                                                   trainer.model,
                                                   trainer.spec, data)
    buffer = None
    if config.method_object.replay:
      buffer = replay_buffer.buffer_init(config.buffer_size,
                                     trainer.spec.image_shape,
                                     scenario.num_outputs)
    state = state._replace(method_state=rehearsal_hooks.ReplayState(buffer,
                                                                    None))
    return state, tx, kept_rows, {}

  def start_task(self, trainer, state: TrainState, extras: dict, task: int,
                 resuming: bool) -> TrainState:
    """The state at a task's start: the joint bound's fresh network, a dense
    method's fresh optimizer state, DDR's statistics of the new task."""
    del extras
    if resuming:
      return state
    config = trainer.config
    if trainer.method.joint and task > 0:
      fresh = []
      for s in trainer.seeds:
        rng, init_rng = jax.random.split(trainer.seed_slice(state.rng, s))
        params, batch_stats, _ = run_state.init_variables(
            trainer.model, trainer.spec, init_rng)
        fresh.append((params, batch_stats, rng))
      params, batch_stats, rng = trainer.stack(fresh)
      state = state._replace(params=params, batch_stats=batch_stats, rng=rng)
    if not config.is_sparse:
      # A fresh optimizer per task, as in the papers' code. Sparse methods
      # keep theirs: it holds the masks (their base optimizer, SGD without
      # momentum, has no state of its own).
      state = state._replace(opt_state=trainer.stack([
          trainer.tx.init(trainer.seed_slice(state.params, s))
          for s in trainer.seeds]))
    if trainer.hooks.spec.track_forgetting:
      # One capacity for every task: the chunk compiles once.
      ddr = trainer.stack([
          ddr_lib.ddr_init(int(size), capacity=trainer.train_len)
          for size in trainer.task_sizes(task)])
      state = state._replace(method_state=state.method_state._replace(
          ddr=ddr))
    return state

  def start_epoch(self, trainer, state: TrainState, task: int, epoch: int):
    """``(state, order_keys, usable)``: DDR's removal, the epoch's keys."""
    keys = [jax.random.split(trainer.seed_slice(state.rng, s), 3)
            for s in trainer.seeds]
    state = state._replace(rng=trainer.stack([k[2] for k in keys]))
    usable = None
    if trainer.hooks.spec.track_forgetting:
      ddr = state.method_state.ddr
      removed = []
      for s, size in zip(trainer.seeds, trainer.task_sizes(task)):
        seed_ddr = trainer.seed_slice(ddr, s)
        count = trainer.ddr_schedule.removal_count(epoch, int(size))
        if count:
          seed_ddr = trainer.ddr_remove(seed_ddr, keys[s][1], jnp.int32(count))
        removed.append(seed_ddr)
      state = state._replace(method_state=state.method_state._replace(
          ddr=trainer.stack(removed)))
      usable = state.method_state.ddr.kept
    return state, [k[0] for k in keys], usable

  def end_task(self, trainer, state, extras, task):
    del trainer, extras, task
    return state

  def eval_params(self, trainer, params, extras, task):
    del trainer, extras, task
    return params

  def buffer_seen(self, trainer, state) -> np.ndarray:
    """Stream examples each seed's buffer has seen (0 without a buffer)."""
    if not trainer.hooks.spec.replay:
      return np.zeros(trainer.num_seeds, int)
    return np.atleast_1d(np.asarray(state.method_state.buffer.num_seen))

  def state_like(self, trainer, state, meta) -> TrainState:
    """The structure a checkpoint with ``meta`` restores the state into."""
    if meta.get("has_ddr"):
      state = state._replace(method_state=state.method_state._replace(
          ddr=ddr_lib.ddr_init(trainer.train_len)))
    return state

  def state_meta(self, state) -> dict:
    """JSON-able facts of the state a checkpoint's metadata holds."""
    return {"has_ddr": state.method_state.ddr is not None}

  def saved_extras(self, extras) -> dict:
    """The arrays of the run's extras a checkpoint holds."""
    del extras
    return {}

  def saved_extras_like(self, extras, params, tasks_done) -> dict:
    """The structure ``saved_extras`` has after ``tasks_done`` tasks."""
    del extras, params, tasks_done
    return {}

  def extras_meta(self, extras) -> dict:
    """JSON-able extras a checkpoint's metadata holds."""
    del extras
    return {}

  def restore_extras(self, extras, saved, meta) -> None:
    """Puts restored extras back."""
    del extras, saved, meta

  def results(self, trainer, state, extras) -> dict:
    """The family's own results keys."""
    del trainer, state, extras
    return {}


class TaskLevelFamily(RehearsalFamily):
  """Run hooks of the task-level family: the method's own task hooks."""

  make_hooks = staticmethod(task_level.make_hooks)

  def __init__(self, method: task_level.TaskLevelMethod):
    self.method = method

  def check(self, trainer) -> None:
    config = trainer.config
    if registry.get(config.model).batch_norm:
      without = [n for n in registry.names()
                 if not registry.get(n).batch_norm]
      raise ConfigError(f"--method={config.method} runs --model="
                        f"{' or '.join(without)} (models without batch "
                        f"norm), not {config.model!r}.")
    for scenario in trainer.scenarios:
      min_task = min(len(t.train_indices) for t in scenario.tasks)
      if config.batch_size > min_task:
        raise ConfigError(f"--batch_size={config.batch_size} is larger than "
                          f"the smallest task ({min_task} examples); lower "
                          "it.")
      trainer.method.check(config, scenario)
      if config.head == "multi":
        start = 0
        for t, task in enumerate(scenario.tasks):
          block = np.arange(start, start + len(task.classes))
          if not np.array_equal(np.sort(task.classes), block):
            raise ConfigError(
                f"--head=multi needs task {t} to own classes {start}.."
                f"{block[-1]} in order; this scenario does not (drop "
                "--shuffle_classes or use --head=shared).")
          start += len(task.classes)

  def initial_state(self, trainer, config, scenario, data):
    del scenario, data
    method = trainer.method
    steps_per_task = config.epochs * (trainer.train_len // config.batch_size)
    tx = make_task_optimizer(config, steps_per_task)
    trainer.finetune_tx = tx
    if config.finetune_epochs:
      trainer.finetune_tx = make_task_optimizer(
          config,
          config.finetune_epochs * (trainer.train_len // config.batch_size),
          config.finetune_lr or config.lr)
    trainer.tx = tx
    rng, init_rng = jax.random.split(jax.random.key(config.seed))
    params = trainer.init_params(init_rng)
    extras = method.init_extras(trainer, params)
    state = TrainState(params, {}, None, trainer.hooks.init_state(params),
                       rng)
    # The saved state holds the first task's optimizer state (for CLNP, its
    # partition masks): the structure a checkpoint restores into.
    state = method.start_task(trainer, state, extras, 0)
    return state, tx, None, extras

  def start_task(self, trainer, state, extras, task, resuming):
    if resuming:
      trainer.method.resume_task(trainer, state, extras, task)
      return state
    if task == 0:
      return state
    return trainer.method.start_task(trainer, state, extras, task)

  def start_epoch(self, trainer, state, task, epoch):
    del task, epoch
    order_rng, rng = jax.random.split(state.rng)
    return state._replace(rng=rng), [order_rng], None

  def end_task(self, trainer, state, extras, task):
    return trainer.method.end_task(trainer, state, extras, task)

  def eval_params(self, trainer, params, extras, task):
    return trainer.method.eval_params(trainer, params, extras, task)

  def buffer_seen(self, trainer, state):
    del state
    return np.zeros(trainer.num_seeds, int)

  def state_like(self, trainer, state, meta):
    del trainer, meta
    return state

  def state_meta(self, state):
    del state
    return {}

  def saved_extras(self, extras):
    return self.method.saved_extras(extras)

  def saved_extras_like(self, extras, params, tasks_done):
    return self.method.saved_extras_like(extras, params, tasks_done)

  def extras_meta(self, extras):
    return self.method.extras_meta(extras)

  def restore_extras(self, extras, saved, meta):
    self.method.restore_extras(extras, saved, meta)

  def results(self, trainer, state, extras):
    results = self.method.results(extras)
    done = range(trainer.records[0].tasks_done)
    if all(len(trainer.scenario.tasks[j].val_indices) for j in done):
      # What a sweep of a method's strength (EWC's lambda) chooses by, so
      # that no choice reads the test split; timed with the evaluation.
      val = [trainer.val_accuracy(
          self.method.eval_params(trainer, state.params, extras, j), j)
             for j in done]
      results["val_final"] = {"task_il_per_task": val,
                              "task_il": float(np.mean(val))}
    return results


def make_task_optimizer(config, steps_per_task: int,
                        peak_lr: Optional[float] = None
                        ) -> optax.GradientTransformationExtraArgs:
  """The optimizer of a task-level run: the method's wrapper around the base.

  The base optimizer's step count (and so the cosine schedule) restarts with
  the fresh optimizer state of every task (and of every fine-tuning).

  Args:
    config: the run configuration (method, optimizer, lr, schedule).
    steps_per_task: train steps of one task (the cosine schedule's length).
    peak_lr: learning rate instead of ``config.lr`` (fine-tuning).

  Returns:
    ``clnp_partition(base)`` for CLNP, else the base optimizer, accepting
    (and ignoring) the step's extra args.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> tx = make_task_optimizer(RunConfig(workdir='/tmp/r', method='clnp',
    ...                                    optimizer='adam', lr=1e-3), 2000)
  """
  lr = config.lr if peak_lr is None else peak_lr
  if config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, max(1, steps_per_task))
  return optax.with_extra_args_support(
      config.method_object.wrap_optimizer(methods.base_optimizer(config, lr)))


def family_of(config):
  """The family object that runs ``config.method``.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> type(family_of(RunConfig(method="ewc"))).__name__
    'TaskLevelFamily'
  """
  method = config.method_object
  if method.family == methods.TASK_LEVEL:
    return TaskLevelFamily(method)
  return RehearsalFamily()
