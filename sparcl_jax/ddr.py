"""Dynamic data removal (DDR): forgetting statistics and removal of easy data.

All functions are pure and jittable over a small ``DDRState`` for the ``n``
training examples of ONE task, addressed by their position ``0..n-1`` within
the task. An example's score is its number of forgetting events (correct at
one presentation, wrong at the next, Toneva et al. 2019); examples never
classified correctly get the maximum score and are never removed.

Static shapes across tasks: ``ddr_init(n, capacity=C)`` sizes every array to
``C`` (at least the largest task) and marks only positions ``0..n-1`` kept,
so tasks of different sizes share one shape and a jitted step that carries
the state compiles once. Positions ``n..C-1`` are padding: never kept, so
never ordered (:func:`ddr_order` counts only kept positions) and never
removed (:func:`ddr_remove`); :func:`ddr_reset` keeps them unkept. Pass the
removal count as an int32 array (``jnp.int32(k)``) to a jitted
:func:`ddr_remove` so that it too compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.data import pipeline
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.selection import rank_mask

NEVER_LEARNED_SCORE = int(np.iinfo(np.int32).max)


class DDRState(NamedTuple):
  """Per-example statistics of one task's training set.

  Every array has one entry per position, ``C`` in all: the task's ``n``
  examples, then ``C - n`` padding positions when built with a capacity
  (see :func:`ddr_init`).

  Attributes:
    prev_correct: bool [C], correctness at the last presentation.
    forgetting_events: int32 [C], correct-then-wrong transitions.
    ever_correct: bool [C], classified correctly at least once.
    presented: bool [C], presented at least once since the last reset.
    kept: bool [C], still in the training set (False for padding).

  Examples:
    >>> ddr_init(2, capacity=3).kept
    Array([ True,  True, False], dtype=bool)
  """

  prev_correct: jax.Array
  forgetting_events: jax.Array
  ever_correct: jax.Array
  presented: jax.Array
  kept: jax.Array


def ddr_init(n: int, capacity: Optional[int] = None) -> DDRState:
  """Fresh statistics for a task of ``n`` examples, all kept.

  With a ``capacity``, the arrays have ``capacity`` entries whatever ``n``:
  positions ``0..n-1`` are the task's examples (kept), the rest padding
  (never kept). Give every task the same capacity (the largest task's size)
  and a jitted function of the state compiles once for all tasks.

  Args:
    n: number of training examples of the task.
    capacity: length of the state's arrays, at least ``n``; None gives
      ``n`` (no padding).

  Returns:
    A ``DDRState`` with zeroed statistics.

  Raises:
    ConfigError: if ``n`` is not positive or exceeds ``capacity``.

  Examples:
    >>> int(ddr_init(4).kept.sum())
    4
    >>> s = ddr_init(3, capacity=5)
    >>> s.kept.shape, int(s.kept.sum())
    ((5,), 3)
  """
  if int(n) < 1:
    raise ConfigError(f'DDR needs a positive number of examples, got {n}.')
  size = int(n) if capacity is None else int(capacity)
  if size < int(n):
    raise ConfigError(
        f'DDR capacity {capacity} is smaller than the task ({n} examples); '
        'pass capacity >= the largest task size.')
  false = jnp.zeros((size,), jnp.bool_)
  return DDRState(prev_correct=false,
                  forgetting_events=jnp.zeros((size,), jnp.int32),
                  ever_correct=false, presented=false,
                  # Built on the host and put: no compilation.
                  kept=jax.device_put(np.arange(size) < int(n)))


def ddr_update(state: DDRState, positions: jax.Array, correct: jax.Array,
               valid: jax.Array) -> DDRState:
  """Records one batch of presentations.

  Args:
    state: current statistics.
    positions: int32 [B], positions of the batch examples within the task
      (``0..n-1``; the state's capacity does not change them).
    correct: bool [B], whether each was classified correctly (before the
      update).
    valid: bool [B], False for padding entries of the batch, which are
      ignored.

  Returns:
    The updated state, of the same shapes. A position repeated within one
    batch is undefined.

  Examples:
    >>> s = ddr_init(3)
    >>> s = ddr_update(s, jnp.array([0, 1]), jnp.array([True, True]),
    ...                jnp.array([True, True]))
    >>> s = ddr_update(s, jnp.array([0, 1]), jnp.array([False, True]),
    ...                jnp.array([True, True]))
    >>> s.forgetting_events
    Array([1, 0, 0], dtype=int32)
  """
  n = state.kept.shape[0]
  positions = jnp.asarray(positions, jnp.int32)
  correct = jnp.asarray(correct, jnp.bool_)
  # Invalid entries scatter out of bounds and are dropped.
  target = jnp.where(valid, positions, n)
  safe = jnp.clip(positions, 0, n - 1)
  forgot = state.presented[safe] & state.prev_correct[safe] & ~correct
  return state._replace(
      prev_correct=state.prev_correct.at[target].set(correct, mode='drop'),
      forgetting_events=state.forgetting_events.at[target].add(
          forgot.astype(jnp.int32), mode='drop'),
      ever_correct=state.ever_correct.at[target].max(correct, mode='drop'),
      presented=state.presented.at[target].set(True, mode='drop'))


def ddr_scores(state: DDRState) -> jax.Array:
  """Removal scores: forgetting events, never-learned examples maximal.

  Args:
    state: current statistics.

  Returns:
    int32 [C], one per position; ``NEVER_LEARNED_SCORE`` for examples never
    classified correctly since the last reset (padding positions included).

  Examples:
    >>> ddr_scores(ddr_init(2))
    Array([2147483647, 2147483647], dtype=int32)
  """
  return jnp.where(state.ever_correct, state.forgetting_events,
                   NEVER_LEARNED_SCORE).astype(jnp.int32)


def ddr_reset(state: DDRState) -> DDRState:
  """Clears the statistics but keeps the ``kept`` set.

  Args:
    state: current statistics.

  Returns:
    The state with statistics zeroed, of the same capacity; padding stays
    unkept.

  Examples:
    >>> int(ddr_reset(ddr_init(3)).forgetting_events.sum())
    0
    >>> ddr_reset(ddr_init(1, capacity=2)).kept
    Array([ True, False], dtype=bool)
  """
  fresh = ddr_init(state.kept.shape[0])
  return fresh._replace(kept=state.kept)


def ddr_remove(state: DDRState, rng: jax.Array,
               remove_count: Union[int, jax.Array]) -> DDRState:
  """Removes the lowest-scoring kept examples, then resets the statistics.

  Candidates are kept examples that were classified correctly at least once;
  among them the ``remove_count`` lowest scores go (ties at random). If there
  are fewer candidates than ``remove_count``, only the candidates are removed:
  never-learned examples are always kept. Padding positions (past the task's
  ``n`` in a state built with a capacity) are never kept, so never
  candidates. The tie-breaking draw has the state's shape: a padded state
  breaks ties differently from an unpadded one of the same task.

  Args:
    state: current statistics.
    rng: PRNG key for tie-breaks.
    remove_count: how many examples to remove (int or int32 scalar; an int32
      array keeps a jitted ``ddr_remove`` to one compilation for any count).

  Returns:
    The new state: ``kept`` shrunk, statistics reset.

  Raises:
    ConfigError: if a static ``remove_count`` is negative.

  Examples:
    >>> s = ddr_init(3)
    >>> s = ddr_update(s, jnp.arange(3), jnp.array([True, True, False]),
    ...                jnp.ones(3, bool))
    >>> ddr_remove(s, jax.random.key(0), 5).kept
    Array([False, False,  True], dtype=bool)
  """
  if isinstance(remove_count, (int, np.integer)) and remove_count < 0:
    raise ConfigError(f'remove_count must be >= 0, got {remove_count}.')
  candidate = state.kept & state.ever_correct
  count = jnp.minimum(jnp.asarray(remove_count, jnp.int32),
                      candidate.sum().astype(jnp.int32))
  removed = rank_mask(
      [jnp.logical_not(candidate), ddr_scores(state),
       jax.random.bits(rng, candidate.shape, jnp.uint32)], count)
  return ddr_reset(state._replace(kept=state.kept & ~removed))


def ddr_order(state: DDRState, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A random epoch order of the kept positions, with a fixed shape.

  The library's one epoch order (:func:`sparcl_jax.data.pipeline.epoch_order`)
  over the kept positions.

  Args:
    state: current statistics.
    rng: PRNG key.

  Returns:
    ``(order, num_kept)``: int32 [C], the kept positions shuffled first and
    the removed (and padding) ones after them; and the int32 number of kept
    positions, so ``order[:num_kept]`` is the epoch.

  Examples:
    >>> s = ddr_init(4)._replace(kept=jnp.array([True, False, True, True]))
    >>> order, k = ddr_order(s, jax.random.key(0))
    >>> sorted(order[:int(k)].tolist())
    [0, 2, 3]
  """
  return pipeline.epoch_order(rng, state.kept)


@dataclasses.dataclass(frozen=True)
class DDRSchedule:
  """At which epochs of a task DDR removes data and how much.

  Attributes:
    removal_epochs: epochs (within the task) at whose start data is removed.
    removal_fraction: share of the task's initial training set removed at
      each removal epoch.

  Examples:
    >>> DDRSchedule().removal_count(5, 10000)
    750
  """

  removal_epochs: tuple[int, ...] = (5, 10, 15, 20)
  removal_fraction: float = 0.075

  def __post_init__(self):
    if not 0.0 <= float(self.removal_fraction) <= 1.0:
      raise ConfigError(
          f'removal_fraction must be in [0, 1], got {self.removal_fraction}.')
    if any(int(e) < 0 for e in self.removal_epochs):
      raise ConfigError(
          f'removal_epochs must be >= 0, got {self.removal_epochs}.')
    total = float(self.removal_fraction) * len(set(self.removal_epochs))
    if total > 1.0 + 1e-9:
      raise ConfigError(
          f'DDR would remove {total:.0%} of a task; lower removal_fraction.')

  def removal_count(self, epoch: int, n: int) -> int:
    """Examples to remove at the start of ``epoch`` for a task of ``n``.

    Args:
      epoch: epoch within the task.
      n: the task's initial number of training examples.

    Returns:
      ``round(removal_fraction * n)`` at removal epochs, else 0.

    Examples:
      >>> DDRSchedule().removal_count(6, 10000)
      0
    """
    if int(epoch) in self.removal_epochs:
      return int(round(self.removal_fraction * n))
    return 0


__all__ = ['DDRSchedule', 'DDRState', 'NEVER_LEARNED_SCORE', 'ddr_init',
           'ddr_order', 'ddr_remove', 'ddr_reset', 'ddr_scores', 'ddr_update']
