"""Task-incremental methods of the CLNP comparison: EWC, SI, single-task.

They train task by task with the loss over the current task's outputs only,
a fresh optimizer state per task, and no buffer;
``sparcl_jax.training.families`` calls the hooks below at
each task's start and end. Per-run data a method keeps between tasks (CLNP's
used units, single-task's networks) lives in an ``extras`` dict the runner
checkpoints. CLNP, which uses the same hooks, is in ``methods/clnp.py``.

The ``runner`` passed to the hooks offers ``config``, ``scenario``,
``class_masks``, ``tx``, ``finetune_tx``, ``finetune_fn``, ``log``,
``init_params(key)``, ``train_epochs(...)``, ``val_accuracy(params, task)``,
``activity(params, task, layers)`` and ``fisher(params, task, examples)``.

Examples:
  >>> from sparcl_jax import methods
  >>> methods.get("ewc").family
  'task_level'
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from sparcl_jax import regularizers
from sparcl_jax.methods import register
from sparcl_jax.methods.base import TASK_LEVEL, Method, StepHooks
from sparcl_jax.methods import settings as settings_lib

PyTree = Any


class PenaltyHooks(StepHooks):
  """Step hooks of a task-level method: the stream loss over the current
  task's outputs, the method's penalty added (``Method.penalty``), only
  the stream loss reported; SI's path integral after each update.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> hooks = make_hooks(RunConfig(method="si", si_c=0.1))
    >>> hooks.keeps_stream_gradient
    True
  """

  def __init__(self, method: "TaskLevelMethod", config):
    self.method = method
    self.penalty = method.penalty(config)
    self.keeps_stream_gradient = method.accumulates_task_gradient

  def init_state(self, params):
    return self.method.init_reg(params)

  def stream_class_mask(self, facts):
    return facts.task_class_mask

  def gather_task(self, facts, example_task):
    # One task per run of steps: one permutation row serves the batch (a
    # take, not a take_along_axis with a [batch, pixels] index).
    del example_task
    return facts.task_id

  def loss_term(self, forward, params, batch_stats, opt_state, method_state,
                drawn, keys, facts):
    del forward, drawn, keys, facts
    return self.penalty(params, opt_state, method_state), batch_stats

  def reported_loss(self, stream, total):
    del total
    return stream

  def after_update(self, method_state, keys, batch, stream_grads, old_params,
                   new_params):
    if not self.keeps_stream_gradient:
      return method_state
    # SI's path integral takes the task gradient alone.
    return regularizers.si_accumulate(method_state, stream_grads, old_params,
                                      new_params)


def make_hooks(config) -> PenaltyHooks:
  """The step hooks a configuration's task-level method trains with.

  Args:
    config: the run configuration.

  Returns:
    Its :class:`PenaltyHooks`.

  Examples:
    >>> from sparcl_jax.training.config import RunConfig
    >>> make_hooks(RunConfig(method="ewc")).method.name
    'ewc'
  """
  return PenaltyHooks(config.method_object, config)


class TaskLevelMethod(Method):
  """Hooks of a task-level method; the defaults are plain task-by-task
  fine-tuning with the task-masked cross-entropy.

  Attributes:
    accumulates_task_gradient: the train step keeps the task loss's
      gradient apart from the penalty's (SI's path integral needs it).
  """

  family = TASK_LEVEL
  accumulates_task_gradient = False
  settings = settings_lib.TaskLevelSettings

  def check(self, config, scenario) -> None:
    """Raises ConfigError when the scenario cannot run this method."""
    del config, scenario

  def wrap_optimizer(self, base):
    """The optimizer of a task around the base one (unchanged here)."""
    return base

  def penalty(self, config) -> Callable[[PyTree, Any, Any], jax.Array]:
    """``penalty(params, opt_state, reg)`` added to the task loss."""
    del config
    return lambda p, opt, reg: jnp.zeros((), jnp.float32)

  def init_reg(self, params: PyTree) -> Any:
    """The regulariser state carried through the steps (None: none)."""
    del params
    return None

  def init_extras(self, runner, params: PyTree) -> dict:
    """Per-run data kept between tasks, before the first task."""
    del runner, params
    return {}

  def saved_extras(self, extras: dict) -> dict:
    """The arrays of ``extras`` a checkpoint holds."""
    del extras
    return {}

  def saved_extras_like(self, extras: dict, params: PyTree,
                        tasks_done: int) -> dict:
    """The structure ``saved_extras`` has after ``tasks_done`` tasks."""
    del extras, params, tasks_done
    return {}

  def restore_extras(self, extras: dict, saved: dict, meta: dict) -> None:
    """Puts restored arrays and JSON metadata back into ``extras``."""
    del extras, saved, meta

  def extras_meta(self, extras: dict) -> dict:
    """JSON-able per-run data a checkpoint's metadata holds."""
    del extras
    return {}

  def start_task(self, runner, state, extras: dict, task: int):
    """The run state at a task's start (its optimizer state fresh)."""
    del extras, task
    return state._replace(opt_state=runner.tx.init(state.params))

  def resume_task(self, runner, state, extras: dict, task: int) -> None:
    """Rebuilds what ``start_task`` derived, for a run resumed mid-task."""
    del runner, state, extras, task

  def end_task(self, runner, state, extras: dict, task: int):
    """The run state after a trained task's consolidation."""
    del runner, extras, task
    return state

  def eval_params(self, runner, params: PyTree, extras: dict,
                  task: int) -> PyTree:
    """The parameters that answer for ``task`` after the latest task."""
    del runner, extras, task
    return params

  def results(self, extras: dict) -> dict:
    """Method-specific entries of ``results.json``."""
    del extras
    return {}


def fisher_mean(fisher: PyTree) -> float:
  """The mean of a diagonal Fisher over every parameter.

  Args:
    fisher: a pytree of float arrays.

  Returns:
    Their entries' mean, as a Python float.

  Examples:
    >>> fisher_mean({'w': jnp.array([1., 2., 3.]), 'b': jnp.array([6.])})
    3.0
  """
  leaves = jax.tree.leaves(fisher)
  total = sum(float(jnp.sum(x, dtype=jnp.float32)) for x in leaves)
  return total / sum(int(x.size) for x in leaves)


@register
class Ewc(TaskLevelMethod):
  """Elastic weight consolidation (Kirkpatrick et al. 2017).

  The penalty ``--ewc_lambda / 2 * sum_t F_t (theta - theta*_t)^2`` is kept
  as one merged slot (summed Fisher at the Fisher-weighted mean anchor: the
  same gradient, so a step's cost does not grow with the tasks). The Fisher
  is the empirical one, from the per-example gradients of up to
  ``fisher_examples`` training examples of the task.
  """

  name = "ewc"
  order = 31
  settings = settings_lib.EwcSettings
  # 1000 keeps the estimate cheap and stable.
  fisher_examples = 1000

  def penalty(self, config):
    return lambda p, opt, reg: regularizers.ewc_penalty(p, reg,
                                                        config.ewc_lambda)

  def init_reg(self, params):
    return regularizers.EwcState(*(jax.tree.map(
        lambda p: jnp.zeros((1,) + p.shape, jnp.float32), params)
                                   for _ in range(2)))

  def end_task(self, runner, state, extras, task):
    if task + 1 == runner.scenario.num_tasks:
      return state  # nothing would read the consolidated state
    fisher = runner.fisher(state.params, task, self.fisher_examples)
    # The empirical Fisher shrinks as a task's training loss falls (the
    # squared gradients of well-fit examples vanish), so the lambda a run
    # needs depends on how long it trains; the logged scale lets lambdas be
    # compared across settings.
    runner.log({"event": "fisher", "task": task,
                "mean": fisher_mean(fisher)})
    return state._replace(method_state=regularizers.ewc_consolidate(
        state.method_state, state.params, fisher, merged=True))


@register
class Si(TaskLevelMethod):
  """Synaptic intelligence (Zenke et al. 2017): ``--si_c * sum Omega (theta -
  theta*)^2``, the path integral taken over the task loss's gradient."""

  name = "si"
  order = 32
  settings = settings_lib.SiSettings
  accumulates_task_gradient = True

  def penalty(self, config):
    return lambda p, opt, reg: regularizers.si_penalty(p, reg, config.si_c)

  def init_reg(self, params):
    return regularizers.si_init(params)

  def end_task(self, runner, state, extras, task):
    if task + 1 == runner.scenario.num_tasks:
      return state
    return state._replace(method_state=regularizers.si_consolidate(
        state.method_state, state.params, runner.config.si_xi))


@register
class SingleTask(TaskLevelMethod):
  """A fresh network per task, each kept to answer for its own task."""

  name = "single_task"
  order = 33

  def init_extras(self, runner, params):
    return {"task_params": []}

  def saved_extras(self, extras):
    return {"task_params": list(extras["task_params"])}

  def saved_extras_like(self, extras, params, tasks_done):
    return {"task_params": [params] * tasks_done}

  def restore_extras(self, extras, saved, meta):
    extras["task_params"] = list(saved["task_params"])

  def start_task(self, runner, state, extras, task):
    if task > 0:
      rng, init_rng = jax.random.split(state.rng)
      state = state._replace(params=runner.init_params(init_rng), rng=rng)
    return super().start_task(runner, state, extras, task)

  def end_task(self, runner, state, extras, task):
    extras["task_params"].append(state.params)
    return state

  def eval_params(self, runner, params, extras, task):
    if task < len(extras["task_params"]):
      return extras["task_params"][task]
    return params
