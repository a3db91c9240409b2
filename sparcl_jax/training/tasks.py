"""Host-side bookkeeping both runners share: tasks, progress, loss checks.

Index arrays padded to one length per run (so no shape depends on the task),
per-task class masks, the step and log counters that checkpoints save, the
progress bar and the check that stops a run whose loss is not finite.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario
from sparcl_jax.training import checkpoint as checkpoint_lib
from sparcl_jax.training import steps

LogFn = Callable[[dict], None]


def input_spec(scenario: Scenario) -> steps.InputSpec:
  return steps.InputSpec(tuple(scenario.image_shape),
                         pipeline.needs_permutation(scenario),
                         bool(scenario.augment), tuple(scenario.mean),
                         tuple(scenario.std))


def pad(values: np.ndarray, length: int) -> np.ndarray:
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
  masks = np.zeros((scenario.num_tasks, scenario.num_outputs), bool)
  for t, task in enumerate(scenario.tasks):
    masks[t, np.asarray(task.classes)] = True
  return masks


def progress_bar(total: int, desc: str, enabled: bool):
  from tqdm import auto as tqdm_auto  # pylint: disable=import-outside-toplevel
  return tqdm_auto.tqdm(total=total, desc=desc, unit="step", leave=False,
                        disable=not (enabled and sys.stderr.isatty()))


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
      break
  checkpoint_lib.check_finite(total, where, checkpoints)
