"""When TDM updates the masks, and to which sparsities.

The schedule of the official SparCL code, per task: a drop-and-grow at the
start of every ``update_interval``-th epoch, growing ``extra_growth`` more
density at the task start, swapping ``swap_fraction`` of the connections in
the middle, and pruning back without growth at the last update, after which
the mask stays fixed for the task's last interval. ``tdm`` and
``grouped_tdm`` both follow it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.sparsity import keep_count

# Phases of an epoch, the index of ``MaskSchedule.phase_sparsities``: no
# mask update, a task's start, a swap in its middle, its final update.
NO_UPDATE, TASK_START, SWAP, FINAL = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class MaskSchedule:
  """When TDM updates the masks and to which sparsities.

  Attributes:
    update_interval: epochs between mask updates (the epoch counter restarts
      every task).
    epochs_per_task: epochs per task; the last update happens at epoch
      ``epochs_per_task - update_interval`` and does not grow. An epoch at
      or past it is read modulo ``epochs_per_task`` (a global epoch counter
      over tasks of this many epochs), whether it is given to ``tdm`` or
      derived from ``steps_per_epoch``.
    extra_growth: extra density grown at the task start (``s - extra_growth``).
    swap_fraction: share of connections swapped at the middle updates (prune
      to ``s + swap_fraction``, grow back to ``s``).
    static: never update: the initial mask stays for the whole run (e.g. a
      SNIP mask set into the state).

  Examples:
    >>> MaskSchedule().targets(5, 0.75)
    (True, 0.76, 0.75)
  """

  update_interval: int = 5
  epochs_per_task: int = 50
  extra_growth: float = 0.01
  swap_fraction: float = 0.01
  static: bool = False

  def __post_init__(self):
    if int(self.update_interval) < 1:
      raise ConfigError(
          f'update_interval must be >= 1, got {self.update_interval}.')
    if int(self.epochs_per_task) < 1:
      raise ConfigError(
          f'epochs_per_task must be >= 1, got {self.epochs_per_task}.')
    for name in ('extra_growth', 'swap_fraction'):
      value = getattr(self, name)
      if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f'{name} must be in [0, 1), got {value}.')

  @property
  def last_update_epoch(self) -> int:
    """Epoch of the final (prune-only) update of a task."""
    return self.epochs_per_task - self.update_interval

  def phase(self, epoch_in_task: Union[int, jax.Array]) -> jax.Array:
    """Phase of an epoch: 0 none, 1 task start, 2 swap, 3 final.

    One rule for every epoch: it is read modulo ``epochs_per_task``, so a
    global epoch counter (tasks of ``epochs_per_task`` epochs each) starts
    every task with its task-start update, as ``tdm``'s ``steps_per_epoch``
    fallback does, instead of freezing the masks past the first task.

    Args:
      epoch_in_task: epoch counter within the task (int or traced int); one
        at or past ``epochs_per_task`` counts as ``epoch_in_task %
        epochs_per_task``.

    Returns:
      An int32 scalar.

    Examples:
      >>> int(MaskSchedule().phase(45))
      3
      >>> int(MaskSchedule().phase(50))  # epoch 0 of the next task
      1
    """
    e = jnp.asarray(epoch_in_task, jnp.int32) % self.epochs_per_task
    if self.static:
      return jnp.zeros_like(e) + NO_UPDATE
    on_grid = (e % self.update_interval == 0) & (e >= 0)
    return jnp.where(
        e == 0, TASK_START,
        jnp.where(on_grid & (e == self.last_update_epoch), FINAL,
                  jnp.where(on_grid & (e < self.last_update_epoch), SWAP,
                            NO_UPDATE))).astype(jnp.int32)

  def phase_sparsities(self, s: float) -> tuple[tuple[float, float], ...]:
    """``(prune_to, grow_to)`` for phases 0..3, clipped to ``[0, 1]``.

    Args:
      s: target sparsity of one layer.

    Returns:
      Four ``(prune_to, grow_to)`` pairs; phase 0 repeats ``(s, s)``.

    Examples:
      >>> MaskSchedule().phase_sparsities(0.5)[1]
      (0.5, 0.49)
    """
    clip = lambda x: float(min(max(x, 0.0), 1.0))
    return ((clip(s), clip(s)),
            (clip(s), clip(s - self.extra_growth)),
            (clip(s + self.swap_fraction), clip(s)),
            (clip(s), clip(s)))

  def targets(self, epoch_in_task: Union[int, jax.Array],
              target_sparsity: float) -> tuple[Any, Any, Any]:
    """The schedule's table: whether to update and to which sparsities.

    Args:
      epoch_in_task: epoch within the task; a Python int gives Python values,
        a traced int gives jnp scalars.
      target_sparsity: the layer's target sparsity ``s``.

    Returns:
      ``(update, prune_to, grow_to)``; when ``update`` is False the
      sparsities are ``(s, s)``.

    Examples:
      >>> MaskSchedule().targets(0, 0.75)
      (True, 0.75, 0.74)
      >>> MaskSchedule().targets(7, 0.75)
      (False, 0.75, 0.75)
    """
    table = self.phase_sparsities(target_sparsity)
    if isinstance(epoch_in_task, (int, np.integer)):
      phase = int(self.phase(int(epoch_in_task)))
      prune, grow = table[phase]
      return phase != NO_UPDATE, round(prune, 10), round(grow, 10)
    phase = self.phase(epoch_in_task)
    values = jnp.asarray(table, jnp.float32)[phase]
    return phase != NO_UPDATE, values[0], values[1]


def schedule_position(count: jax.Array, extra: dict,
                      steps_per_epoch: Optional[int],
                      schedule: MaskSchedule, name: str
                      ) -> tuple[jax.Array, jax.Array]:
  """The epoch within the task and the step within the epoch of an update.

  Pops the extra args ``epoch`` and ``step_in_epoch`` from ``extra``; a
  missing one is derived from the update counter when ``steps_per_epoch``
  is known.

  Args:
    count: the transform's update counter.
    extra: the update's extra args (modified: the two are removed).
    steps_per_epoch: the fallback's epoch length, or None.
    schedule: gives the epochs per task.
    name: the transform's name, for the error.

  Returns:
    ``(epoch, step_in_epoch)`` as int32 scalars.

  Raises:
    ConfigError: an arg is missing and there is no fallback.

  Examples:
    >>> schedule_position(jnp.int32(7), {}, 3, MaskSchedule(), 'tdm')
    (Array(2, dtype=int32), Array(1, dtype=int32))
  """
  epoch = extra.pop('epoch', None)
  step = extra.pop('step_in_epoch', None)
  if epoch is None or step is None:
    if steps_per_epoch is None:
      raise ConfigError(
          f'{name} update needs extra args epoch= and step_in_epoch= '
          f'(or build {name} with steps_per_epoch=).')
    derived_epoch = (count // steps_per_epoch) % schedule.epochs_per_task
    derived_step = count % steps_per_epoch
    epoch = derived_epoch if epoch is None else epoch
    step = derived_step if step is None else step
  return jnp.asarray(epoch, jnp.int32), jnp.asarray(step, jnp.int32)


def most_kept(size: int, s: float, schedule: MaskSchedule) -> int:
  """The most weights a mask keeps at any point of a TDM schedule.

  A dgm run by tdm acts on a leaf only if it keeps fewer gradient entries
  than this (``sparse.dgm.check_dgm_acts``).

  Args:
    size: the leaf's number of weights.
    s: the leaf's target sparsity.
    schedule: tdm's schedule.

  Returns:
    The largest kept count over the schedule's phases (a task start's
    growth included).

  Examples:
    >>> most_kept(1000, 0.9, MaskSchedule())  # 0.89 at a task start
    110
  """
  if schedule.static:
    return keep_count(size, s)
  return max(max(keep_count(size, p), keep_count(size, g))
             for p, g in schedule.phase_sparsities(s))


__all__ = ['FINAL', 'MaskSchedule', 'NO_UPDATE', 'SWAP', 'TASK_START',
           'most_kept', 'schedule_position']
