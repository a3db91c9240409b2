"""Tests for the jittable reservoir buffer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax.replay import buffer as replay_buffer
from sparcl_jax.errors import ConfigError
from sparcl_jax.replay.buffer import (buffer_init, buffer_len, buffer_sample,
                                  buffer_sample_indices, reservoir_add)


def _items(start, count, num_outputs=3):
  # Numpy keeps these helpers free of per-shape XLA compiles.
  ids = np.arange(start, start + count, dtype=np.int32)
  inputs = np.stack([ids, -ids], axis=1).astype(np.float32)  # [B, 2]
  logits = np.repeat(ids[:, None], num_outputs, axis=1).astype(np.float32)
  return inputs, ids, logits


def test_init_shapes_and_bad_size():
  buf = buffer_init(4, (2,), 3)
  assert buf.inputs.shape == (4, 2) and buf.inputs.dtype == jnp.float32
  assert buf.labels.dtype == jnp.int32 and buf.task_ids.dtype == jnp.int32
  assert buf.logits.shape == (4, 3) and buf.logits.dtype == jnp.float32
  assert buf.num_seen.shape == () and int(buf.num_seen) == 0
  assert int(buffer_len(buf)) == 0
  with pytest.raises(ConfigError):
    buffer_init(0, (2,), 3)


def _filled(size, count):
  """A buffer whose first `count` slots hold items 0..count-1 (task 2)."""
  x, y, z = _items(0, count)
  pad = size - count
  return replay_buffer.Buffer(
      inputs=jnp.asarray(np.pad(x, ((0, pad), (0, 0)))),
      labels=jnp.asarray(np.pad(y, (0, pad))),
      logits=jnp.asarray(np.pad(z, ((0, pad), (0, 0)))),
      task_ids=jnp.asarray(np.where(np.arange(size) < count, 2, 0),
                           dtype=jnp.int32),
      num_seen=jnp.asarray(count, jnp.int32))


# The next tests share one shape (S=5, B=4, explicit valid and task ids) so
# reservoir_add compiles once for all of them.
ALL = np.ones(4, bool)


def test_first_items_fill_slots_in_order():
  buf = buffer_init(5, (2,), 3)
  x, y, z = _items(0, 4)
  buf = reservoir_add(buf, jax.random.key(0), x, y, z, np.full(4, 7), ALL)
  assert int(buf.num_seen) == 4 and int(buffer_len(buf)) == 4
  np.testing.assert_array_equal(buf.labels, [0, 1, 2, 3, 0])
  np.testing.assert_array_equal(buf.task_ids, [7, 7, 7, 7, 0])
  x, y, z = _items(4, 4)
  buf = reservoir_add(buf, jax.random.key(1), x, y, z, np.arange(8, 12),
                      np.array([True, False, False, False]))
  assert int(buf.num_seen) == 5 and int(buffer_len(buf)) == 5
  np.testing.assert_array_equal(buf.labels, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(buf.task_ids, [7, 7, 7, 7, 8])
  np.testing.assert_array_equal(np.asarray(buf.inputs)[:, 1],
                                [0, -1, -2, -3, -4])
  np.testing.assert_array_equal(np.asarray(buf.logits)[:, 2], [0, 1, 2, 3, 4])


def test_valid_mask_skips_items_and_does_not_count_them():
  buf = buffer_init(5, (2,), 3)
  x, y, z = _items(10, 4)
  valid = np.array([True, False, True, False])
  buf = reservoir_add(buf, jax.random.key(0), x, y, z, np.ones(4), valid)
  assert int(buf.num_seen) == 2
  np.testing.assert_array_equal(buf.labels, [10, 12, 0, 0, 0])
  # Once full, invalid items can neither replace anything nor count.
  full = _filled(5, 5)
  out = reservoir_add(full, jax.random.key(0), x, y, z, np.ones(4),
                      np.zeros(4, bool))
  np.testing.assert_array_equal(out.labels, full.labels)
  assert int(out.num_seen) == 5


def test_batched_add_equals_sequential_offers():
  # A batch far larger than the buffer makes several items pick the same slot
  # in one call; the later item must win, as with one-by-one offers.
  size, batch, rng = 4, 60, jax.random.key(3)
  buf = _filled(size, size)
  x, y, z = _items(100, batch)
  valid = np.arange(batch) % 7 != 3
  new = reservoir_add(buf, rng, x, y, z, np.ones(batch), valid)
  slots = np.asarray(jax.jit(replay_buffer._reservoir_slots, static_argnums=1)(
      buf.num_seen, size, rng, valid))
  kept = slots[slots < size]
  assert len(kept) > len(set(kept.tolist())), "test needs duplicate slots"
  expected = np.asarray(buf.labels).copy()
  for item, slot in enumerate(slots):
    if slot < size:
      expected[slot] = 100 + item
  np.testing.assert_array_equal(new.labels, expected)
  np.testing.assert_array_equal(np.asarray(new.inputs)[:, 1], -expected)
  np.testing.assert_array_equal(np.asarray(new.logits)[:, 0], expected)
  assert int(new.num_seen) == size + int(valid.sum())


def _inclusion_counts(num_trials, num_items, size, chunk):
  """Offers items 0..num_items-1 in chunks; counts, per item, the trials
  whose final buffer holds it."""

  def one_trial(rng):
    buf = buffer_init(size, (1,), 1)

    def step(buf, start_and_key):
      start, key = start_and_key
      ids = start + jnp.arange(chunk, dtype=jnp.int32)
      buf = reservoir_add(buf, key, ids[:, None].astype(jnp.float32), ids,
                          None, 0)
      return buf, None

    starts = jnp.arange(0, num_items, chunk, dtype=jnp.int32)
    keys = jax.random.split(rng, starts.shape[0])
    buf, _ = jax.lax.scan(step, buf, (starts, keys))
    return buf.labels, buf.num_seen

  labels, seen = jax.jit(jax.vmap(one_trial))(
      jax.random.split(jax.random.key(1234), num_trials))
  return np.asarray(labels), np.asarray(seen)


def _chi_square(counts, num_trials, p):
  # Each count is Binomial(num_trials, p), so this is close to chi-square
  # with len(counts) - 1 degrees of freedom (the total is fixed).
  return float(np.sum((counts - num_trials * p)**2)
               / (num_trials * p * (1 - p)))


def test_reservoir_inclusion_is_uniform():
  trials, items, size = 400, 1000, 100
  labels, seen = _inclusion_counts(trials, items, size, chunk=50)
  assert (seen == items).all()
  # Every trial's buffer holds `size` distinct offered items.
  assert all(len(set(row.tolist())) == size for row in labels)
  counts = np.bincount(labels.ravel(), minlength=items)
  assert counts.sum() == trials * size
  p = size / items
  # df = 999: mean 999, sd sqrt(2 * 999) = 44.7; accept mean +- 5 sd.
  stat = _chi_square(counts, trials, p)
  assert 775 < stat < 1223, stat
  # Each block of 100 consecutive items: mean 4000, sd about
  # sqrt(100 * 400 * 0.1 * 0.9) = 60; accept +- 5 sd. This catches a bias
  # towards early or late items that the global statistic could dilute.
  blocks = counts.reshape(10, 100).sum(axis=1)
  assert np.all(np.abs(blocks - 4000) < 300), blocks
  # The same checks reject a broken buffer that keeps the first `size` items.
  broken = np.zeros(items)
  broken[:size] = trials
  assert _chi_square(broken, trials, p) > 1223


def test_sample_returns_distinct_filled_slots():
  buf = _filled(10, 7)
  for seed in range(5):
    bx, by, bz, bt = map(np.asarray,
                         buffer_sample(buf, jax.random.key(seed), 5))
    assert bx.shape == (5, 2) and bz.shape == (5, 3) and bt.shape == (5,)
    assert len(set(by.tolist())) == 5 and by.max() < 7
    np.testing.assert_array_equal(bx[:, 1], -by)
    np.testing.assert_array_equal(bz[:, 0], by)
    np.testing.assert_array_equal(bt, 2)
  # Asking for more than are filled: every filled slot once, in the first
  # positions, then repeats of filled slots.
  for seed in range(3):
    idx = np.asarray(buffer_sample_indices(buf, jax.random.key(seed), 12))
    assert sorted(idx[:7].tolist()) == list(range(7))
    assert idx.shape == (12,) and (idx[7:] < 7).all()


def test_sample_is_uniform_over_filled_slots():
  buf = _filled(12, 10)
  draws = 2000
  idx = jax.jit(jax.vmap(
      functools.partial(buffer_sample_indices, buf, n=3)))(
          jax.random.split(jax.random.key(5), draws))
  idx = np.asarray(idx)
  assert all(len(set(row.tolist())) == 3 for row in idx)
  counts = np.bincount(idx.ravel(), minlength=12)
  assert counts[10:].sum() == 0
  # Each slot is Binomial(2000, 0.3): mean 600, sd 20.5; accept +- 5 sd.
  assert np.all(np.abs(counts[:10] - 600) < 103), counts


def test_buffer_ready_gates_replay_on_an_empty_buffer():

  @jax.jit
  def replay_term(buffer, rng):
    bx, by, _, _ = buffer_sample(buffer, rng, 2)
    term = 1.0 + jnp.abs(bx).sum()  # nonzero even on an empty buffer's zeros
    return jnp.where(replay_buffer.buffer_ready(buffer, 2), term, 0.0), bx, by

  key = jax.random.key(0)
  # Empty: the draw is zeros, silently; the gate drops the term.
  term, bx, _ = replay_term(_filled(5, 0), key)
  assert np.asarray(bx).tolist() == [[0, 0], [0, 0]] and float(term) == 0.0
  assert not bool(replay_buffer.buffer_ready(_filled(5, 0)))
  # One item: a draw of 2 would repeat it; not ready for 2, ready for 1.
  term, _, by = replay_term(_filled(5, 1), key)
  assert np.asarray(by).tolist() == [0, 0] and float(term) == 0.0
  assert bool(replay_buffer.buffer_ready(_filled(5, 1), 1))
  # Two items (0 and 1, inputs [i, -i]): both drawn, 1 + 0 + 0 + 1 + 1.
  term, _, by = replay_term(_filled(5, 2), key)
  assert sorted(np.asarray(by).tolist()) == [0, 1] and float(term) == 3.0
  # The gate is the library's rule: num_seen >= n, traced or static.
  assert [bool(replay_buffer.buffer_ready(_filled(5, c), jnp.int32(2)))
          for c in range(4)] == [False, False, True, True]
  assert replay_term._cache_size() == 1
