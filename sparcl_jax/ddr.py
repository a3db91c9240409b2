"""Dynamic data removal (DDR): forgetting statistics and removal of easy data.

All functions are pure and jittable over a small ``DDRState`` for the ``n``
training examples of ONE task, addressed by their position ``0..n-1`` within
the task. An example's score is its number of forgetting events (correct at
one presentation, wrong at the next, Toneva et al. 2019); examples never
classified correctly get the maximum score and are never removed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax import masks as masks_lib
from sparcl_jax.data import pipeline
from sparcl_jax.errors import ConfigError

NEVER_LEARNED_SCORE = int(np.iinfo(np.int32).max)


class DDRState(NamedTuple):
  """Per-example statistics of one task's training set.

  Attributes:
    prev_correct: bool [n], correctness at the last presentation.
    forgetting_events: int32 [n], correct-then-wrong transitions.
    ever_correct: bool [n], classified correctly at least once.
    presented: bool [n], presented at least once since the last reset.
    kept: bool [n], still in the training set.
  """

  prev_correct: jax.Array
  forgetting_events: jax.Array
  ever_correct: jax.Array
  presented: jax.Array
  kept: jax.Array


def ddr_init(n: int) -> DDRState:
  """Fresh statistics for a task of ``n`` examples, all kept.

  Args:
    n: number of training examples of the task.

  Returns:
    A ``DDRState`` with zeroed statistics.

  Raises:
    ConfigError: if ``n`` is not positive.

  Example:
    >>> int(ddr_init(4).kept.sum())
    4
  """
  if int(n) < 1:
    raise ConfigError(f'DDR needs a positive number of examples, got {n}.')
  false = jnp.zeros((n,), jnp.bool_)
  return DDRState(prev_correct=false,
                  forgetting_events=jnp.zeros((n,), jnp.int32),
                  ever_correct=false, presented=false,
                  kept=jnp.ones((n,), jnp.bool_))


def ddr_update(state: DDRState, positions: jax.Array, correct: jax.Array,
               valid: jax.Array) -> DDRState:
  """Records one batch of presentations.

  Args:
    state: current statistics.
    positions: int32 [B], positions of the batch examples within the task.
    correct: bool [B], whether each was classified correctly (before the
      update).
    valid: bool [B], False for padding entries, which are ignored.

  Returns:
    The updated state. A position repeated within one batch is undefined.

  Example:
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
    int32 [n]; ``NEVER_LEARNED_SCORE`` for examples never classified
    correctly since the last reset.

  Example:
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
    The state with statistics zeroed.

  Example:
    >>> int(ddr_reset(ddr_init(3)).forgetting_events.sum())
    0
  """
  fresh = ddr_init(state.kept.shape[0])
  return fresh._replace(kept=state.kept)


def ddr_remove(state: DDRState, rng: jax.Array,
               remove_count: Union[int, jax.Array]) -> DDRState:
  """Removes the lowest-scoring kept examples, then resets the statistics.

  Candidates are kept examples that were classified correctly at least once;
  among them the ``remove_count`` lowest scores go (ties at random). If there
  are fewer candidates than ``remove_count``, only the candidates are removed:
  never-learned examples are always kept.

  Args:
    state: current statistics.
    rng: PRNG key for tie-breaks.
    remove_count: how many examples to remove (int or int32 scalar).

  Returns:
    The new state: ``kept`` shrunk, statistics reset.

  Raises:
    ConfigError: if a static ``remove_count`` is negative.

  Example:
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
  removed = masks_lib.rank_mask(
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
    ``(order, num_kept)``: int32 [n], the kept positions shuffled first and
    the removed ones after them; and the int32 number of kept positions.

  Example:
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

  Example:
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

    Example:
      >>> DDRSchedule().removal_count(6, 10000)
      0
    """
    if int(epoch) in self.removal_epochs:
      return int(round(self.removal_fraction * n))
    return 0


__all__ = ['DDRSchedule', 'DDRState', 'NEVER_LEARNED_SCORE', 'ddr_init',
           'ddr_order', 'ddr_remove', 'ddr_reset', 'ddr_scores', 'ddr_update']
