"""Task-incremental runs of CLNP and its comparisons: EWC, SI, single-task.

:func:`run` is what ``loop.run`` calls for methods of the task-level family
(``sparcl_jax.methods.TASK_LEVEL``). Every method shares one jitted train
function (:mod:`sparcl_jax.training.task_level_steps`) whose loss is the
cross-entropy over the current task's outputs plus the method's penalty;
what differs between methods (CLNP's partition, prune and commit, EWC's
Fisher, SI's path integral, single-task's fresh networks) are the hooks of
its method object (:mod:`sparcl_jax.methods.task_level`,
:mod:`sparcl_jax.methods.clnp`), called at each task's start and end.

Every method trains and evaluates task-incrementally: the loss only sees the
logits of the current task's classes, and Task-IL accuracy takes the argmax
over the evaluated task's classes. Class-IL accuracy (argmax over all classes
seen so far) is reported for completeness; these methods do not aim at it.

The optimizer state is re-initialised at every task start (same shapes, no
recompilation).

With a :class:`~sparcl_jax.training.checkpoint.Checkpointer` a run saves at
the end of every task (after CLNP's commit) and every
``checkpoints.every_steps`` train steps, and resumes where it stopped, mid-
task included, with the same results as an uninterrupted run.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax import clnp as clnp_lib
from sparcl_jax import methods
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods.clnp import gate_shared_head, layer_specs  # pylint: disable=unused-import
from sparcl_jax.models import registry
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import steps
from sparcl_jax.training import tasks
from sparcl_jax.training import timing
from sparcl_jax.training.capacity_plot import (CAPACITY_PLOT,  # pylint: disable=unused-import
                                               capacity_plot_data,
                                               plot_capacity)
from sparcl_jax.training.config import RunConfig
from sparcl_jax.training.task_level_steps import (ChunkFacts, RunState,  # pylint: disable=unused-import
                                                  make_activity, make_fisher,
                                                  make_train_function)

__all__ = ["CAPACITY_PLOT", "ChunkFacts", "RunState", "capacity_plot_data",
           "gate_shared_head", "layer_specs", "make_activity", "make_fisher",
           "make_optimizer", "make_train_function", "plot_capacity", "run"]

PyTree = Any
LogFn = Callable[[dict], None]


def _check_setup(config: RunConfig, scenario: Scenario) -> None:
  if config.model not in ("mlp", "zenke_cnn"):
    raise ConfigError(f"--method={config.method} runs --model=mlp or "
                      f"zenke_cnn (models without batch norm), not "
                      f"{config.model!r}.")
  min_task = min(len(t.train_indices) for t in scenario.tasks)
  if config.batch_size > min_task:
    raise ConfigError(f"--batch_size={config.batch_size} is larger than the "
                      f"smallest task ({min_task} examples); lower it.")
  config.method_object.check(config, scenario)
  if config.head == "multi":
    start = 0
    for t, task in enumerate(scenario.tasks):
      block = np.arange(start, start + len(task.classes))
      if not np.array_equal(np.sort(task.classes), block):
        raise ConfigError(f"--head=multi needs task {t} to own classes "
                          f"{start}..{block[-1]} in order; this scenario "
                          "does not (drop --shuffle_classes or use "
                          "--head=shared).")
      start += len(task.classes)


def make_optimizer(config: RunConfig, steps_per_task: int,
                   peak_lr: Optional[float] = None
                   ) -> optax.GradientTransformation:
  """The optimizer of a task-level run: the method's wrapper around the base.

  The base optimizer's step count (and so the cosine schedule) restarts with
  the fresh optimizer state of every task (and of every fine-tuning).

  Args:
    config: the run configuration (method, optimizer, lr, schedule).
    steps_per_task: train steps of one task (the cosine schedule's length).
    peak_lr: learning rate instead of ``config.lr`` (fine-tuning).

  Returns:
    ``clnp_partition(base)`` for CLNP, else the base optimizer.

  Example:
    >>> tx = make_optimizer(RunConfig(workdir='/tmp/r', method='clnp',
    ...                               optimizer='adam', lr=1e-3), 2000)
  """
  return config.method_object.wrap_optimizer(
      _base_optimizer(config, steps_per_task, peak_lr))


def _base_optimizer(config: RunConfig, steps_per_task: int,
                    peak_lr: Optional[float] = None
                    ) -> optax.GradientTransformation:
  """``--optimizer`` at ``--lr`` (or ``peak_lr``) under ``--lr_schedule``."""
  lr = config.lr if peak_lr is None else peak_lr
  if config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, max(1, steps_per_task))
  return methods.base_optimizer(config, lr)


class _Runner:
  """Holds a run's compiled functions, device data and bookkeeping.

  The method hooks reach the run through it (see
  :mod:`sparcl_jax.methods.task_level`).
  """

  def __init__(self, config: RunConfig, scenario: Scenario,
               progress: tasks.Progress):
    self.config, self.scenario = config, scenario
    # The run's step and log counters, which checkpoints save.
    self.progress = progress
    self.log = progress.log
    self.num_tasks = scenario.num_tasks
    head_sizes = [len(t.classes) for t in scenario.tasks]
    self.model = registry.make_model(
        config.model, scenario.num_outputs, hidden_sizes=config.hidden_widths,
        nf=config.nf, head=config.head, head_sizes=head_sizes,
        conv_gradients=config.conv_gradients)
    self.spec = tasks.input_spec(scenario)
    self.arrays = tasks.TaskArrays(scenario, joint=False)
    self.class_masks = tasks.class_masks(scenario)
    self.batch_size = config.batch_size
    self.steps_per_call = max(1, min(config.steps_per_call,
                                     self.arrays.train_len // self.batch_size))
    # Tasks of one scenario differ by a few examples at most: the longest
    # sets the decay length.
    self.tx = make_optimizer(
        config, config.epochs * (self.arrays.train_len // self.batch_size))
    self.train_fn = make_train_function(self.model, self.tx, config,
                                        self.spec, self.batch_size,
                                        self.steps_per_call)
    # Fine-tuning after pruning has its own rate and schedule length, so its
    # own (same-shaped) optimizer and train function.
    self.finetune_tx, self.finetune_fn = self.tx, self.train_fn
    if config.finetune_epochs:
      self.finetune_tx = make_optimizer(
          config,
          config.finetune_epochs * (self.arrays.train_len // self.batch_size),
          config.finetune_lr or config.lr)
      self.finetune_fn = make_train_function(
          self.model, self.finetune_tx, config, self.spec, self.batch_size,
          self.steps_per_call)
    self.epoch_order = steps.make_epoch_order()
    self.evaluate_fn = steps.make_evaluate(self.model, self.spec,
                                           config.eval_batch_size,
                                           self.arrays.test_len)
    self.device_data = pipeline.to_device(scenario)
    # Built on first use: only some methods measure activity or Fisher.
    self._activity_fn = None
    self._fisher_fn = None
    self._init = None
    self.checkpoints: Optional[checkpoint_lib.Checkpointer] = None
    # Seconds net of compilation (see timing.CompileTimer); set by run().
    self.compiles = timing.CompileTimer()
    self.train_time = 0.0
    self.eval_time = 0.0

  @property
  def steps_done(self) -> int:
    """Train steps run so far, fine-tuning included."""
    return self.progress.steps_done

  def init_params(self, key: jax.Array) -> PyTree:
    """Fresh parameters from ``key`` (jitted: eager init is slow)."""
    if self._init is None:
      shape = (1,) + tuple(self.spec.image_shape)
      self._init = jax.jit(
          lambda k: registry.init_model(self.model, k, shape)["params"])
    return self._init(key)

  def train_epochs(self, state: RunState, task: int, epochs: int,
                   tag: str = "epoch",
                   train_fn: Optional[Callable] = None,
                   resume: Optional[dict] = None,
                   after_chunk: Optional[Callable[..., None]] = None
                   ) -> RunState:
    """Runs ``epochs`` epochs of ``task``'s training data.

    Args:
      state: the run state.
      task: the task index.
      epochs: epochs to run (counted from 0).
      tag: the ``event`` of the per-epoch log records.
      train_fn: the train function (default: the run's).
      resume: a mid-task checkpoint's position (``epoch``, ``step``,
        ``order``, ``count``, ``num_steps``, ``loss_sum``): the first epoch
        restarts there with the saved order.
      after_chunk: called as ``after_chunk(state, position, steps_before)``
        after every train chunk (checkpoints and stop requests).

    Returns:
      The state after training.
    """
    train_fn = train_fn or self.train_fn
    since = self.compiles.mark()
    ex_index, _, usable = self.arrays.train(task)
    data = (self.device_data, jax.device_put(ex_index))
    usable = jax.device_put(usable)
    mask = jnp.asarray(self.class_masks[task])
    for epoch in range(resume["epoch"] if resume else 0, epochs):
      if resume is not None:
        order, count = resume["order"], resume["count"]
        num_steps, first_step = resume["num_steps"], resume["step"]
        loss_sum = jnp.asarray(resume["loss_sum"], jnp.float32)
        resume = None
      else:
        order_rng, rng = jax.random.split(state.rng)
        state = state._replace(rng=rng)
        order, count = self.epoch_order(order_rng, usable)
        num_steps, first_step = int(count) // self.batch_size, 0
        loss_sum = jnp.zeros(())
      chunk_losses = []
      for first in range(first_step, num_steps, self.steps_per_call):
        facts = ChunkFacts(jnp.int32(task), jnp.int32(first),
                           jnp.int32(num_steps), mask)
        state, chunk_loss = train_fn(state, data, order, facts)
        loss_sum = loss_sum + chunk_loss
        chunk_losses.append((first, chunk_loss))
        done = min(self.steps_per_call, num_steps - first)
        before = self.progress.steps_done
        self.progress.steps_done += done
        if after_chunk is not None:
          after_chunk(state, {"epoch": epoch, "step": first + done,
                              "order": order, "count": int(count),
                              "num_steps": num_steps,
                              "loss_sum": float(loss_sum),
                              "chunk_losses": chunk_losses}, before)
      tasks.check_loss(loss_sum, chunk_losses, task, self.num_tasks, epoch,
                       num_steps, self.steps_per_call, self.checkpoints)
      self.log({"event": tag, "task": task, "epoch": epoch,
                "steps": num_steps, "examples": num_steps * self.batch_size,
                "loss": float(loss_sum) / max(num_steps, 1)})
    self.train_time += self.compiles.excluding_compiles(since)
    return state

  def accuracy(self, params: PyTree, task: int, split: str,
               seen: np.ndarray) -> tuple[float, float]:
    """(Class-IL, Task-IL) accuracy in percent of ``params`` on a task."""
    since = self.compiles.mark()
    info = self.scenario.tasks[task]
    index = info.test_indices if split == "test" else info.val_indices
    correct_class, correct_task = self.evaluate_fn(
        params, {}, self.device_data, split,
        jnp.asarray(tasks.pad(index, self.arrays.test_len)),
        jnp.int32(len(index)), jnp.int32(task), jnp.asarray(seen),
        jnp.asarray(self.class_masks[task]))
    accuracies = (100.0 * int(correct_class) / len(index),
                  100.0 * int(correct_task) / len(index))
    self.eval_time += self.compiles.excluding_compiles(since)
    return accuracies

  def val_accuracy(self, params: PyTree, task: int) -> float:
    """Task-IL accuracy on the task's validation split, percent."""
    return self.accuracy(params, task, "val", self.class_masks[task])[1]

  def activity(self, params: PyTree, task: int,
               layers) -> dict[str, jax.Array]:
    """Unit activity of ``layers`` on the task's validation split."""
    if self._activity_fn is None:
      self._activity_fn = make_activity(
          self.model, self.spec, layers, self.config.activity_reading,
          self.config.eval_batch_size)
    val = self.scenario.tasks[task].val_indices
    return self._activity_fn(
        params, self.device_data,
        jnp.asarray(tasks.pad(val, self.arrays.test_len)),
        jnp.int32(len(val)), jnp.int32(task))

  def fisher(self, params: PyTree, task: int, examples: int) -> PyTree:
    """Empirical diagonal Fisher over up to ``examples`` of the task's
    training examples, drawn with the run's seed and the task index."""
    if self._fisher_fn is None:
      self._fisher_fn = make_fisher(self.model, self.spec)
    train = self.scenario.tasks[task].train_indices
    n = min(examples, len(train))
    rows = np.random.default_rng((self.config.seed, task)).choice(
        train, n, replace=False)
    length = min(examples, self.arrays.train_len)
    return self._fisher_fn(params, self.device_data,
                           jnp.asarray(tasks.pad(rows, length)),
                           jnp.int32(n), jnp.int32(task),
                           jnp.asarray(self.class_masks[task]))


def run(config: RunConfig, scenario: Scenario, log_fn: LogFn,
        start_time: float,
        checkpoints: Optional[checkpoint_lib.Checkpointer] = None,
        compiles: Optional[timing.CompileTimer] = None) -> dict[str, Any]:
  """Trains a task-incremental method of the CLNP comparison on a scenario.

  Args:
    config: validated configuration; ``config.method`` of the task-level
      family (``config.CLNP_METHODS``).
    scenario: the scenario.
    log_fn: called with one JSON-able dict per epoch, prune and evaluation.
    start_time: ``time.perf_counter()`` at the start of the run.
    checkpoints: when given, the run resumes from its newest checkpoint (if
      any), saves one at the end of every task (after CLNP's prune and
      commit) and every ``checkpoints.every_steps`` train steps, and stops
      with :class:`~sparcl_jax.training.checkpoint.RunInterrupted` after
      saving when a stop is requested (see ``checkpoint.stop_on_signals``).
      A stop requested during CLNP's pruning search is honoured at the
      task's end.
    compiles: the run's active compile timer (``loop.run`` passes it); None
      times nothing as compilation (the timing keys then count it as
      training or evaluation).

  Returns:
    The results dict of ``loop.run`` (``acc_matrix``, ``final``,
    ``wall_time_s``, ``task_time_s``, the timing keys, ``scenario``,
    ``flags``) plus the method's own entries: for CLNP, ``clnp`` (per-task
    diagnostics: validation accuracy before and after pruning, chosen
    quantile and threshold, per-layer used / free / claimed / available /
    reused units) and ``capacity_plot_data``; with a validation split
    (``--val_fraction > 0``), ``val_final``: the final network's Task-IL
    accuracy on each task's validation split (``task_il_per_task``) and
    their mean (``task_il``). When a layer has no free
    units left for a new task the run stops cleanly: the matrices cover the
    tasks trained so far and ``stopped_early`` holds the reason.

  Raises:
    ConfigError: the model or scenario cannot run this method.
    RunInterrupted: a stop was requested; the newest checkpoint resumes it.

  Example:
    >>> results = run(config, scenario, print, time.perf_counter())
    ... # doctest: +SKIP
  """
  method = config.method_object
  if method.family != methods.TASK_LEVEL:
    raise ConfigError(f"clnp_runner runs {config_lib.CLNP_METHODS}, not "
                      f"{config.method!r}.")
  _check_setup(config, scenario)
  record = tasks.RunRecord(scenario.num_tasks, log_fn)
  log_fn = record.log
  runner = _Runner(config, scenario, record.progress)
  runner.checkpoints = checkpoints
  if compiles is not None:
    runner.compiles = compiles
  num_tasks = runner.num_tasks
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  params = runner.init_params(init_rng)
  extras = method.init_extras(runner, params)
  state = RunState(params, None, method.init_reg(params), rng)
  # The saved state holds the first task's optimizer state (for CLNP, its
  # partition masks): the structure a checkpoint restores into.
  state = method.start_task(runner, state, extras, 0)
  no_order = jnp.zeros(runner.arrays.train_len, jnp.int32)

  stopped, first_task, resume = None, 0, None
  if checkpoints is not None and checkpoints.exists():
    tree, meta = tasks.restore_checkpoint(
        checkpoints, config, lambda meta: {
            "train": state, "order": no_order,
            "extras": method.saved_extras_like(
                extras, params, len(meta["task_times"]))})
    state = tree["train"]
    method.restore_extras(extras, tree["extras"], meta)
    record.restore(meta)
    if meta["in_task"]:
      resume = dict(meta, order=tree["order"])
    first_task = meta["task"]

  def save_checkpoint(position: dict[str, Any], where: str,
                      order=no_order) -> None:
    tasks.save_checkpoint(
        checkpoints, config,
        {"train": state, "order": order,
         "extras": method.saved_extras(extras)},
        dict(position, **record.meta(), **method.extras_meta(extras)),
        state.params, where)

  def mid_task(t: int):

    def after_chunk(chunk_state, position, steps_before) -> None:
      nonlocal state
      if not (checkpoints.stop_requested or
              checkpoints.due(steps_before, runner.steps_done)):
        return
      tasks.check_loss(position["loss_sum"], position["chunk_losses"], t,
                       num_tasks, position["epoch"], position["num_steps"],
                       runner.steps_per_call, checkpoints)
      state = chunk_state
      save_checkpoint(
          {"task": t, "in_task": True,
           **{k: position[k] for k in ("epoch", "step", "count",
                                       "num_steps", "loss_sum")}},
          f"task {t + 1} of {num_tasks}, epoch {position['epoch'] + 1}, "
          f"step {position['step']} of {position['num_steps']}",
          position["order"])

    return after_chunk

  for t in range(first_task, num_tasks):
    task_start = time.perf_counter()
    try:
      if resume is not None:
        method.resume_task(runner, state, extras, t)
      elif t > 0:
        state = method.start_task(runner, state, extras, t)
    except clnp_lib.NoFreeUnitsError as err:
      stopped = f"stopped before task {t + 1} of {num_tasks}: {err}"
      log_fn({"event": "stopped", "task": t, "message": stopped})
      break
    state = runner.train_epochs(
        state, t, config.epochs, resume=resume,
        after_chunk=None if checkpoints is None else mid_task(t))
    resume = None
    state = method.end_task(runner, state, extras, t)

    seen = runner.class_masks[:t + 1].any(0)
    for j in range(num_tasks):
      record.set_accuracy(t, j, runner.accuracy(
          method.eval_params(runner, state.params, extras, j), j, "test",
          seen))
    record.end_task(t, time.perf_counter() - task_start)
    if checkpoints is not None:
      save_checkpoint({"task": t + 1, "in_task": False},
                      f"the end of task {t + 1} of {num_tasks}")

  if record.tasks_done == 0:
    raise ConfigError(stopped or "no task was trained")
  done, val = range(record.tasks_done), None
  if all(len(scenario.tasks[j].val_indices) for j in done):
    # What a sweep of a method's strength (EWC's lambda) chooses by, so that
    # no choice reads the test split; timed with the run's evaluation.
    val = [runner.val_accuracy(
        method.eval_params(runner, state.params, extras, j), j) for j in done]
  results = record.results(config, scenario, start_time, runner.compiles,
                           runner.train_time, runner.eval_time,
                           runner.steps_done)
  results.update(method.results(extras))
  if val is not None:
    results["val_final"] = {"task_il_per_task": val,
                            "task_il": float(np.mean(val))}
  if stopped:
    results["stopped_early"] = stopped
  return results
