"""The run skeleton both runners share: tasks, record, checkpoints, checks.

Index arrays padded to one length per run (so no shape depends on the task),
per-task class masks, the record of accuracies, times and counters that
every checkpoint saves and that becomes the results, checkpoint save and
restore, the progress bar and the check that stops a run whose loss is not
finite.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, Callable

import numpy as np

from sparcl_jax import metrics as metrics_lib
from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import divergence
from sparcl_jax.training import resume_checks
from sparcl_jax.training import steps
from sparcl_jax.training import timing

LogFn = Callable[[dict], None]


def input_spec(scenario: Scenario) -> steps.InputSpec:
  """The static input facts of a scenario the jitted steps specialise on.

  Args:
    scenario: the scenario.

  Returns:
    Its :class:`~sparcl_jax.training.steps.InputSpec`.

  Examples:
    >>> from sparcl_jax.data import scenarios, sources
    >>> digits = sources.load_dataset("digits", "digits", None)
    >>> input_spec(scenarios.build_scenario("split", digits, 5)).image_shape
    (8, 8, 1)
  """
  return steps.InputSpec(tuple(scenario.image_shape),
                         pipeline.needs_permutation(scenario),
                         bool(scenario.augment), tuple(scenario.mean),
                         tuple(scenario.std))


def pad(values: np.ndarray, length: int) -> np.ndarray:
  """``values`` as int32, zero-padded to ``length`` (one shape per run).

  Args:
    values: 1-D integers, at most ``length`` of them.
    length: the padded length.

  Returns:
    int32 [length].

  Examples:
    >>> pad(np.array([3, 1]), 4)
    array([3, 1, 0, 0], dtype=int32)
  """
  out = np.zeros(length, np.int32)
  out[:len(values)] = values
  return out


class TaskArrays:
  """Host-side index arrays of every task, padded to common lengths."""

  def __init__(self, scenario: Scenario, joint: bool):
    tasks = scenario.tasks
    sizes = [len(t.train_indices) for t in tasks]
    self.train_len = sum(sizes) if joint else max(sizes)
    self.test_len = max(max(len(t.test_indices) for t in tasks),
                        max(len(t.val_indices) for t in tasks))
    self.joint = joint
    self.scenario = scenario

  def train(self, task_id: int):
    """(example_index, example_task, usable) for training task ``task_id``."""
    tasks = range(task_id + 1) if self.joint else [task_id]
    index = np.concatenate(
        [self.scenario.tasks[t].train_indices for t in tasks])
    owner = np.concatenate(
        [np.full(len(self.scenario.tasks[t].train_indices), t) for t in tasks])
    usable = np.zeros(self.train_len, bool)
    usable[:len(index)] = True
    return (pad(index, self.train_len), pad(owner, self.train_len), usable)


def class_masks(scenario: Scenario) -> np.ndarray:
  """[tasks, outputs] bool: row ``t`` marks task ``t``'s classes.

  Args:
    scenario: the scenario.

  Returns:
    The masks.

  Examples:
    >>> from sparcl_jax.data import scenarios, sources
    >>> digits = sources.load_dataset("digits", "digits", None)
    >>> class_masks(scenarios.build_scenario("split", digits, 5))[1].nonzero()
    (array([2, 3]),)
  """
  masks = np.zeros((scenario.num_tasks, scenario.num_outputs), bool)
  for t, task in enumerate(scenario.tasks):
    masks[t, np.asarray(task.classes)] = True
  return masks


def bars_drawable() -> bool:
  """Whether a tqdm bar can be drawn where this process writes.

  On a terminal, and in a Jupyter kernel (Colab, JupyterLab) that has
  ipywidgets, where ``tqdm.auto`` draws a widget; not into a file, a pipe or
  a cluster's log, where the progress lines say the same once per epoch.

  Returns:
    True on a terminal or in a kernel with widgets.

  Examples:
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()):  # a file, say
    ...   print(bars_drawable())
    False
  """
  if sys.stderr.isatty():
    return True
  return ("ipykernel" in sys.modules and
          importlib.util.find_spec("ipywidgets") is not None)


def progress_bar(total: int, desc: str, enabled: bool):
  """A tqdm bar of train steps, drawn when ``enabled`` and :func:`bars_drawable`."""
  from tqdm import auto as tqdm_auto  # pylint: disable=import-outside-toplevel
  return tqdm_auto.tqdm(total=total, desc=desc, unit="step", leave=False,
                        disable=not (enabled and bars_drawable()))


class Progress:
  """Counts train steps and log records (both are saved in checkpoints)."""

  def __init__(self, log: LogFn):
    self._log = log
    self.steps_done = 0
    self.logged = 0

  def log(self, record: dict) -> None:
    self.logged += 1
    self._log(record)


def check_loss(loss_sum, chunk_losses, task: int, num_tasks: int,
                epoch: int, num_steps: int, steps_per_call: int,
                checkpoints) -> None:
  """Stops the run, naming where, when the loss is no longer finite."""
  total = float(loss_sum)
  if np.isfinite(total):
    return
  where = f"task {task + 1} of {num_tasks}, epoch {epoch + 1}"
  for first, loss in chunk_losses:
    if not np.isfinite(float(loss)):
      last = min(first + steps_per_call, num_steps)
      span = (f"step {first + 1}" if last == first + 1 else
              f"steps {first + 1}-{last}")
      where += f", {span} of {num_steps}"
      if last > first + 1:
        # The chunk is one compiled call: its steps' losses come back summed.
        where += " (one compiled chunk; --steps_per_call=1 names the step)"
      break
  divergence.check_finite(total, where, checkpoints)


class RunRecord:
  """What a run has measured so far; every checkpoint saves it.

  Holds the accuracy matrices, the task times and the step and log-record
  counters, and turns them into the results every runner returns.

  Examples:
    >>> record = RunRecord(2, lambda entry: None)
    >>> record.set_accuracy(0, 1, (50.0, 75.0))
    >>> record.meta()["acc_task"]
    [[0.0, 75.0], [0.0, 0.0]]
  """

  def __init__(self, num_tasks: int, log: LogFn):
    self.acc_class = np.zeros((num_tasks, num_tasks))
    self.acc_task = np.zeros((num_tasks, num_tasks))
    self.task_times: list[float] = []
    self.progress = Progress(log)
    self.log = self.progress.log

  @property
  def tasks_done(self) -> int:
    return len(self.task_times)

  def set_accuracy(self, task: int, evaluated: int,
                   accuracy: tuple[float, float]) -> None:
    """Row ``task``, column ``evaluated``: (Class-IL, Task-IL) percent."""
    self.acc_class[task, evaluated], self.acc_task[task, evaluated] = accuracy

  def end_task(self, task: int, seconds: float) -> None:
    """Records a finished task's time and logs its evaluation."""
    self.task_times.append(seconds)
    self.log({"event": "eval", "task": task,
              "class_il": self.acc_class[task, :task + 1].tolist(),
              "task_il": self.acc_task[task, :task + 1].tolist(),
              "task_time_s": seconds,
              "global_step": self.progress.steps_done})

  def meta(self) -> dict[str, Any]:
    """The checkpoint metadata of the record (JSON-able)."""
    return {"acc_class": self.acc_class.tolist(),
            "acc_task": self.acc_task.tolist(),
            "task_times": list(self.task_times),
            "steps_done": self.progress.steps_done,
            "logged": self.progress.logged}

  def restore(self, meta: dict[str, Any]) -> None:
    """Puts a checkpoint's record back."""
    self.acc_class = np.asarray(meta["acc_class"], np.float64)
    self.acc_task = np.asarray(meta["acc_task"], np.float64)
    self.task_times = list(meta["task_times"])
    self.progress.steps_done = meta["steps_done"]
    self.progress.logged = meta["logged"]

  def results(self, config, scenario: Scenario, start: float, compiles,
              train_time: float, eval_time: float,
              steps: int) -> dict[str, Any]:
    """The results keys every runner returns (see docs/reference/results-json.md).

    Args:
      config: the run configuration.
      scenario: the scenario.
      start: ``time.perf_counter()`` at the run's start.
      compiles: the run's ``timing.CompileTimer``.
      train_time: seconds of training, net of compilation.
      eval_time: seconds of evaluation, net of compilation.
      steps: train steps this process ran.

    Returns:
      ``acc_matrix``, ``final``, ``wall_time_s``, ``task_time_s``, the
      timing keys, ``scenario`` and ``flags``, over the tasks done.
    """
    done = self.tasks_done
    acc_class = self.acc_class[:done, :done]
    acc_task = self.acc_task[:done, :done]
    final = metrics_lib.summarize(acc_class, acc_task)
    return {
        "acc_matrix": {"class_il": acc_class.tolist(),
                       "task_il": acc_task.tolist()},
        "final": {k: float(v) for k, v in final.items()},
        "wall_time_s": time.perf_counter() - start,
        "task_time_s": list(self.task_times),
        **timing.results_keys(compiles, train_time, eval_time, steps),
        "scenario": {"name": scenario.name, "num_tasks": scenario.num_tasks,
                     "num_outputs": scenario.num_outputs,
                     "train_examples_per_task":
                         [len(t.train_indices) for t in scenario.tasks]},
        "flags": config_lib.to_dict(config),
    }


def restore_checkpoint(checkpoints, config, like: Any):
  """Restores a run's newest checkpoint, after checking its flags.

  Args:
    checkpoints: the run's ``checkpoint.Checkpointer``.
    config: the run configuration (must match the checkpoint's).
    like: a function ``like(meta) -> tree`` giving the structure to restore
      into (it may depend on the metadata, e.g. on the tasks done).

  Returns:
    ``(tree, meta)``; prints where the run resumes from.
  """
  meta = checkpoints.read_meta()
  resume_checks.check_config(meta["config"], config_lib.to_dict(config),
                              checkpoints.directory)
  resume_checks.check_data(meta.get("data"), checkpoints.data,
                            checkpoints.directory)
  # A function of the metadata: a fallback to an older checkpoint (the
  # newest one corrupt) restores into that one's structure.
  tree, meta = checkpoints.restore(like)
  print(f"resuming from {checkpoints.last_saved} ({meta['where']})",
        flush=True)
  return tree, meta


def save_checkpoint(checkpoints, config, tree: Any, meta: dict[str, Any],
                    params: Any, where: str) -> None:
  """Saves a checkpoint if the weights are finite; stops on request.

  Args:
    checkpoints: the run's ``checkpoint.Checkpointer``.
    config: the run configuration (saved with the metadata).
    tree: the arrays to save.
    meta: JSON-able metadata (``where`` and the flags are added).
    params: the weights, checked for NaN and infinities first.
    where: the position, e.g. "the end of task 2 of 5".

  Raises:
    RunInterrupted: a stop was requested; the checkpoint just saved resumes
      the run.
  """
  divergence.check_finite_tree(params, where, checkpoints)
  extra = {} if checkpoints.data is None else {"data": checkpoints.data}
  checkpoints.save(tree, dict(meta, config=config_lib.to_dict(config),
                              where=where, **extra))
  if checkpoints.stop_requested:
    raise checkpoints.interrupted(where)
