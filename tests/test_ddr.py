"""Tests for sparcl_jax.ddr (dynamic data removal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax import ddr
from sparcl_jax.errors import ConfigError


def _present(state, correct_by_pos, batch=4, pad_to=None):
  """Presents every position once, in batches, padded with invalid entries."""
  n = state.kept.shape[0]
  update = jax.jit(ddr.ddr_update)
  for start in range(0, n, batch):
    pos = np.arange(start, min(start + batch, n))
    valid = np.ones(batch, bool)
    valid[len(pos):] = False
    pos = np.pad(pos, (0, batch - len(pos)), constant_values=0)
    correct = np.asarray(correct_by_pos)[pos] & valid
    state = update(state, jnp.asarray(pos, jnp.int32), jnp.asarray(correct),
                   jnp.asarray(valid))
  return state


def test_forgetting_events_and_scores():
  s = ddr.ddr_init(6)
  # Presentation pattern per example over 3 passes.
  passes = np.array([[1, 1, 0, 0, 1, 0],
                     [0, 1, 1, 0, 1, 0],
                     [1, 0, 0, 0, 1, 0]], bool)
  for p in passes:
    s = _present(s, p)
  assert s.forgetting_events.tolist() == [1, 1, 1, 0, 0, 0]
  assert s.ever_correct.tolist() == [True, True, True, False, True, False]
  m = ddr.NEVER_LEARNED_SCORE
  assert ddr.ddr_scores(s).tolist() == [1, 1, 1, m, 0, m]
  assert bool(s.presented.all())


def test_invalid_entries_are_ignored():
  s = ddr.ddr_init(3)
  s = ddr.ddr_update(s, jnp.array([0, 1, 2]), jnp.array([True, True, True]),
                     jnp.array([True, False, False]))
  assert s.presented.tolist() == [True, False, False]
  assert s.ever_correct.tolist() == [True, False, False]


def test_remove_lowest_scores_never_learned_kept_and_reset():
  n = 40
  s = ddr.ddr_init(n)
  events = np.arange(n) % 5
  never = np.zeros(n, bool)
  never[[3, 17, 38]] = True
  s = s._replace(forgetting_events=jnp.asarray(events, jnp.int32),
                 ever_correct=jnp.asarray(~never),
                 presented=jnp.ones(n, bool), prev_correct=jnp.ones(n, bool))
  out = ddr.ddr_remove(s, jax.random.key(0), 10)
  removed = ~np.asarray(out.kept)
  assert removed.sum() == 10
  # Events 0 occur at 8 learned positions, events 1 at 8: the 8 zeros go,
  # then 2 of the events-1 examples, chosen at random.
  assert np.all(removed[(events == 0)])
  assert removed[events == 1].sum() == 2
  assert not removed[never].any()
  # Statistics reset, kept preserved.
  assert int(out.forgetting_events.sum()) == 0
  assert not bool(out.ever_correct.any())
  assert not bool(out.presented.any()) and not bool(out.prev_correct.any())
  other = ddr.ddr_remove(s, jax.random.key(1), 10)
  assert not np.array_equal(np.asarray(other.kept), np.asarray(out.kept))
  # Asking for more than the learned examples removes only those.
  out = ddr.ddr_remove(s, jax.random.key(0), 100)
  assert np.asarray(out.kept).tolist() == never.tolist()


def test_remove_only_from_kept_examples():
  s = ddr.ddr_init(5)._replace(
      kept=jnp.array([False, True, True, True, True]),
      ever_correct=jnp.ones(5, bool),
      forgetting_events=jnp.array([0, 3, 1, 2, 4], jnp.int32))
  out = ddr.ddr_remove(s, jax.random.key(0), 2)
  assert out.kept.tolist() == [False, True, False, False, True]


def test_schedule_counts_10000_to_7000():
  sched = ddr.DDRSchedule()
  n = 10000
  s = ddr.ddr_init(n)
  s = s._replace(ever_correct=jnp.ones(n, bool))
  remove = jax.jit(ddr.ddr_remove)
  sizes = []
  rng = jax.random.key(0)
  for epoch in range(25):
    count = sched.removal_count(epoch, n)
    if count:
      rng, sub = jax.random.split(rng)
      s = remove(s, sub, count)
      s = s._replace(ever_correct=jnp.ones(n, bool))
      sizes.append(int(s.kept.sum()))
  assert sizes == [9250, 8500, 7750, 7000]
  assert [sched.removal_count(e, n) for e in (0, 4, 5, 20, 25)] == [
      0, 0, 750, 750, 0]


def test_order_puts_kept_first():
  kept = np.zeros(10, bool)
  kept[[1, 4, 5, 9]] = True
  s = ddr.ddr_init(10)._replace(kept=jnp.asarray(kept))
  order, num = ddr.ddr_order(s, jax.random.key(0))
  assert int(num) == 4
  assert sorted(np.asarray(order[:4]).tolist()) == [1, 4, 5, 9]
  assert sorted(np.asarray(order).tolist()) == list(range(10))


def test_validation():
  with pytest.raises(ConfigError, match='positive'):
    ddr.ddr_init(0)
  with pytest.raises(ConfigError, match='removal_fraction'):
    ddr.DDRSchedule(removal_fraction=1.5)
  with pytest.raises(ConfigError, match='would remove'):
    ddr.DDRSchedule(removal_epochs=(1, 2, 3), removal_fraction=0.5)
  with pytest.raises(ConfigError, match='remove_count'):
    ddr.ddr_remove(ddr.ddr_init(3), jax.random.key(0), -1)


def test_capacity_one_compilation_across_tasks_and_equal_to_unpadded():
  capacity = 8
  traces = []

  @jax.jit
  def task(state, positions, valid, passes, remove_count, rng):
    traces.append(state.kept.shape[0])
    for p in passes:
      state = ddr.ddr_update(state, positions, p, valid)
    scores = ddr.ddr_scores(state)
    state = ddr.ddr_remove(state, rng, remove_count)
    order, num_kept = ddr.ddr_order(state, rng)
    return state, scores, order, num_kept

  m = ddr.NEVER_LEARNED_SCORE
  # Per example, its correctness at 4 presentations; the scores are its
  # correct-then-wrong transitions. Removing the learned examples of score
  # <= 1 cuts no tie, so the result does not depend on the tie-breaking draw.
  cases = [
      # n = 5: scores [2, 0, m, 1, 1]; 3 removed.
      (['1010', '1111', '0000', '0101', '1001'], [2, 0, m, 1, 1],
       [True, False, True, False, False]),
      # n = 8 (the capacity): scores [0, 2, 1, m, 1, 2, 1, 1]; 5 removed.
      (['0111', '1010', '1011', '0000', '1101', '1010', '0010', '1110'],
       [0, 2, 1, m, 1, 2, 1, 1],
       [False, True, False, True, False, True, False, False]),
  ]
  tasks = []
  for rows, want_scores, want_kept in cases:
    n = len(rows)
    passes = np.array([[c == '1' for c in r] for r in rows]).T
    remove = n - sum(want_kept)
    pad = capacity - n
    out = task(ddr.ddr_init(n, capacity=capacity),
               jnp.asarray(np.pad(np.arange(n), (0, pad)), jnp.int32),
               jnp.asarray(np.arange(capacity) < n),
               jnp.asarray(np.pad(passes, ((0, 0), (0, pad)))),
               jnp.int32(remove), jax.random.key(n))
    state, scores, order, k = out
    assert state.kept.shape == (capacity,)
    assert np.asarray(scores).tolist() == want_scores + [m] * pad
    assert np.asarray(state.kept).tolist() == want_kept + [False] * pad
    assert int(k) == sum(want_kept)
    assert sorted(np.asarray(order[:int(k)]).tolist()) == (
        np.flatnonzero(want_kept).tolist())
    tasks.append((n, passes, remove, out))
  # Both task sizes ran on one compilation.
  assert traces == [capacity] and task._cache_size() == 1

  for n, passes, remove, (state, scores, order, k) in tasks:
    ref_state, ref_scores, ref_order, ref_k = task(
        ddr.ddr_init(n), jnp.arange(n, dtype=jnp.int32), jnp.ones(n, bool),
        jnp.asarray(passes), jnp.int32(remove), jax.random.key(n))
    for padded, ref in zip(state, ref_state):
      np.testing.assert_array_equal(np.asarray(padded)[:n], np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(scores)[:n], ref_scores)
    assert int(k) == int(ref_k)
    assert sorted(np.asarray(order[:int(k)]).tolist()) == sorted(
        np.asarray(ref_order[:int(ref_k)]).tolist())
  # Without a capacity, the smaller task compiled anew.
  assert traces == [capacity, 5]


def test_capacity_validation():
  with pytest.raises(ConfigError, match='capacity 3 is smaller'):
    ddr.ddr_init(4, capacity=3)
  assert ddr.ddr_init(3, capacity=3).kept.tolist() == [True] * 3
