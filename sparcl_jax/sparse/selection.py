"""Exact top-k selection: which positions of an array rank first.

Every mask in the library keeps an exact number of weights, whatever the
ties, so picking them is a selection problem, not a threshold. ``rank_mask``
marks the first ``count`` positions in the lexicographic order of several
sort keys (ties going to the lower flat index) by a radix-style search over
digit histograms: a multi-operand ``lax.sort`` of a large layer costs
hundreds of ms on CPU. ``topk_mask`` is the common "largest scores first"
case; ``hash_bits`` gives the cheap random keys that break ties at random.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np


def _ordinal(key: jax.Array) -> jax.Array:
  """uint32 whose unsigned order is the ascending sort order of ``key``.

  Floats follow ``lax.sort``: ``-0.0`` equals ``0.0`` and every NaN sorts
  last, as one value.
  """
  if key.dtype == jnp.bool_:
    return key.astype(jnp.uint32)
  if jnp.issubdtype(key.dtype, jnp.floating):
    x = key.astype(jnp.float32)
    x = jnp.where(x == 0, jnp.zeros_like(x), x)
    x = jnp.where(jnp.isnan(x), jnp.full_like(x, jnp.nan), x)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))
  if jnp.issubdtype(key.dtype, jnp.signedinteger):
    bits = jax.lax.bitcast_convert_type(key.astype(jnp.int32), jnp.uint32)
    return bits ^ jnp.uint32(0x80000000)
  return key.astype(jnp.uint32)


_DIGIT_BITS = 16
# Histogram blocks: small enough to stay in cache, so the digits are never
# written to memory as a full-size array (on a VM each fresh page of such a
# temporary costs a page fault on every call).
_BLOCK = 1 << 14
# Sub-histograms that consecutive positions rotate over: a run of equal
# digits (the zeros of a pruned layer) would otherwise chain every increment
# on one counter.
_LANES = 4


def _histogram(digits_fn: Callable[..., tuple[jax.Array, jax.Array]],
               arrays: Sequence[jax.Array]) -> jax.Array:
  """Counts of the digits (in ``[0, 2**_DIGIT_BITS)``) of selected positions.

  ``digits_fn(*blocks)`` maps flat blocks of ``arrays`` (all of one shape) to
  ``(digit, selected)``; it runs block by block inside a loop. Unselected
  positions are counted in an extra bin that is then discarded: a scatter
  that skips them branches on a mask that is often random (a layer's weight
  mask), which costs more than the increments.
  """
  size = 1 << _DIGIT_BITS
  flat = [a.reshape(-1) for a in arrays]
  n = flat[0].shape[0]
  num_blocks = n // _BLOCK

  def add(counts, blocks):
    digit, selected = digits_fn(*blocks)
    lane = jnp.arange(digit.shape[0], dtype=jnp.int32) % _LANES
    # Digits are in [0, size) by construction, so every index is in bounds.
    index = jnp.where(selected, digit, size) * _LANES + lane
    return counts.at[index].add(1, mode='promise_in_bounds')

  def body(i, counts):
    return add(counts, [jax.lax.dynamic_slice(a, (i * _BLOCK,), (_BLOCK,))
                        for a in flat])

  counts = jnp.zeros((size + 1) * _LANES, jnp.int32)
  if num_blocks:
    counts = jax.lax.fori_loop(0, num_blocks, body, counts)
  if n % _BLOCK:
    counts = add(counts, [a[num_blocks * _BLOCK:] for a in flat])
  return counts.reshape(size + 1, _LANES).sum(axis=1)[:size]


def _first_reaching(counts: jax.Array, offset: jax.Array,
                    need: jax.Array) -> tuple[jax.Array, jax.Array]:
  """First bucket whose running count (plus ``offset``) reaches ``need``.

  Returns the bucket and the running count before it (``offset`` included).
  """
  running = offset + jnp.cumsum(counts)
  bucket = jnp.minimum(jnp.sum(running < need, dtype=jnp.int32),
                       counts.shape[0] - 1)
  return bucket, running[bucket] - counts[bucket]


class _Split(NamedTuple):
  """How one sort key splits the candidates around the threshold value."""

  below: jax.Array
  equal: jax.Array
  below_count: jax.Array
  equal_count: jax.Array


def _split_bool(key: jax.Array, candidates: jax.Array, need: jax.Array,
                num_candidates: jax.Array) -> _Split:
  """Threshold of a bool key: one counting pass."""
  false_pos = candidates & jnp.logical_not(key)
  false_count = jnp.sum(false_pos, dtype=jnp.int32)
  enough = false_count >= need
  return _Split(below=false_pos & jnp.logical_not(enough),
                equal=jnp.where(enough, false_pos, candidates & key),
                below_count=jnp.where(enough, 0, false_count),
                equal_count=jnp.where(enough, false_count,
                                      num_candidates - false_count))


def _split_radix(key: jax.Array, candidates: jax.Array,
                 need: jax.Array) -> _Split:
  """Threshold of any other key: two 16-bit digit histograms.

  The threshold is the smallest value ``v`` with ``#{key <= v} >= need``
  among the candidates; the high digit's histogram picks its upper 16 bits
  and a histogram of the low digits inside that bucket the rest. Two
  scatter-add passes replace the up to 32 counting passes of a binary search.
  Needs ``0 < need < #candidates``.
  """
  mask_low = jnp.uint32((1 << _DIGIT_BITS) - 1)
  high_of = lambda k: (_ordinal(k) >> _DIGIT_BITS).astype(jnp.int32)
  high_bucket, before = _first_reaching(
      _histogram(lambda k, c: (high_of(k), c), [key, candidates]),
      jnp.zeros((), jnp.int32), need)

  def low_digits(k, c):
    return ((_ordinal(k) & mask_low).astype(jnp.int32),
            c & (high_of(k) == high_bucket))

  low_counts = _histogram(low_digits, [key, candidates])
  low_bucket, below_count = _first_reaching(low_counts, before, need)
  key = _ordinal(key)
  value = ((high_bucket.astype(jnp.uint32) << _DIGIT_BITS)
           | low_bucket.astype(jnp.uint32))
  return _Split(below=candidates & (key < value),
                equal=candidates & (key == value), below_count=below_count,
                equal_count=low_counts[low_bucket])


def _settle(sort_keys: list[jax.Array], selected: jax.Array,
            candidates: jax.Array, need: jax.Array,
            num_candidates: jax.Array) -> jax.Array:
  """Adds the ``need`` first candidates (by the remaining keys) to selected.

  Keys are only looked at while the candidates still tie: once all of them
  are needed (or none), the rest of the keys and the index tie-break are
  skipped.
  """

  def take_all():
    return selected | candidates

  def take_none():
    return selected

  def resolve():
    if not sort_keys:
      # Remaining ties go to the lower flat index.
      flat = candidates.reshape(-1)
      first = jnp.cumsum(flat.astype(jnp.int32)) <= need
      return selected | (flat & first).reshape(candidates.shape)
    key = sort_keys[0]
    if key.dtype == jnp.bool_:
      split = _split_bool(key, candidates, need, num_candidates)
    else:
      split = _split_radix(key, candidates, need)
    return _settle(sort_keys[1:], selected | split.below, split.equal,
                   need - split.below_count, split.equal_count)

  branch = jnp.where(need >= num_candidates, 0, jnp.where(need <= 0, 1, 2))
  return jax.lax.switch(branch, [take_all, take_none, resolve])


@jax.jit
def rank_mask(sort_keys: list[jax.Array], count: Union[int, jax.Array]
              ) -> jax.Array:
  """Marks the ``count`` first positions in lexicographic ascending order.

  Jitted with a traced ``count``: the shapes never depend on it. Callers add
  a random key as last sort key to break ties at random; remaining ties go to
  the lower flat index.

  The result equals ranking by ``lax.sort`` over ``(*sort_keys, index)``,
  but it is found by a radix-style selection (two histogram passes per key,
  one counting pass for a bool key; keys after the ties are resolved are
  skipped) because a multi-operand sort of a large layer costs hundreds of
  ms on CPU. Pass two-valued keys as bool: they take the cheap path.

  Args:
    sort_keys: arrays of one shape, most significant first, sorted ascending.
    count: how many positions to mark (int or int32 scalar).

  Returns:
    A bool array of the keys' shape with exactly ``count`` True entries
    (clipped to ``[0, size]``).

  Examples:
    >>> rank_mask([-jnp.array([1., 5., 3.])], 2)
    Array([False,  True,  True], dtype=bool)
  """
  shape = sort_keys[0].shape
  size = int(np.prod(shape)) if shape else 1
  return _settle(list(sort_keys), jnp.zeros(shape, jnp.bool_),
                 jnp.ones(shape, jnp.bool_), jnp.asarray(count, jnp.int32),
                 jnp.asarray(size, jnp.int32))


def hash_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Pseudo-random uint32 per position from one uint32 seed.

  A murmur3 finalizer over a seeded Weyl sequence. It only breaks ties and
  picks grown positions, where it is as good as threefry, and it compiles in
  a fraction of the time of a full-shape ``jax.random.bits`` per leaf.

  Args:
    seed: uint32 scalar (e.g. drawn with ``jax.random.bits``).
    shape: shape of the result.

  Returns:
    A uint32 array of ``shape``; the same seed gives the same bits.

  Examples:
    >>> hash_bits(jnp.uint32(7), (3,))
    Array([ 415870660,  588686121, 1937383562], dtype=uint32)
  """
  size = int(np.prod(shape)) if shape else 1
  x = jax.lax.iota(jnp.uint32, size) * jnp.uint32(0x9E3779B9) + seed
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  x = x ^ (x >> 16)
  return x.reshape(shape)


def _random_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return hash_bits(jax.random.bits(rng, (), jnp.uint32), shape)


def topk_mask(scores: jax.Array, count: Union[int, jax.Array],
              rng: Optional[jax.Array] = None) -> jax.Array:
  """Marks exactly ``count`` largest entries of ``scores``.

  Args:
    scores: array of any shape.
    count: number of entries to keep (static or traced).
    rng: optional key; when given, ties are broken uniformly at random,
      otherwise towards the lower flat index.

  Returns:
    A bool array with exactly ``count`` True entries.

  Examples:
    >>> topk_mask(jnp.array([[0.1, 0.9], [0.5, 0.2]]), 2)
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  keys = [-scores.astype(jnp.float32)]
  if rng is not None:
    keys.append(_random_bits(rng, scores.shape))
  return rank_mask(keys, count)



__all__ = ['hash_bits', 'rank_mask', 'topk_mask']
