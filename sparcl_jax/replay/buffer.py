"""A jittable reservoir buffer with mammoth's semantics (ER, DER, DER++).

The buffer is a NamedTuple of fixed-shape arrays, so it can be carried through
``jax.jit``, ``lax.scan`` and ``vmap``. Reservoir sampling keeps every item
offered so far with the same probability ``size / num_seen``.

Examples:
  >>> buf = buffer_init(200, (32, 32, 3), 10)
  >>> buf = reservoir_add(buf, key, x, y, logits, task_ids)  # doctest: +SKIP
  >>> bx, by, bz, bt = buffer_sample(buf, key2, 32)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError


class Buffer(NamedTuple):
  """Reservoir buffer state.

  Slots ``[0, min(num_seen, S))`` are filled; the rest hold zeros.

  Attributes:
    inputs: [S, ...] stored examples (float32 unless chosen otherwise).
    labels: int32 [S].
    logits: float32 [S, C], the network's logits when the item was added.
    task_ids: int32 [S].
    num_seen: int32 scalar, every valid item ever offered.

  Examples:
    >>> buffer_init(4, (2,), 3).labels.shape
    (4,)
  """

  inputs: jax.Array
  labels: jax.Array
  logits: jax.Array
  task_ids: jax.Array
  num_seen: jax.Array


def buffer_init(size: int, input_shape: Sequence[int], num_outputs: int,
                input_dtype: jnp.dtype = jnp.float32) -> Buffer:
  """Creates an empty buffer.

  Args:
    size: number of slots S (>= 1).
    input_shape: shape of one input, without the batch axis.
    num_outputs: number of logits C stored per item.
    input_dtype: storage dtype of inputs (uint8 saves memory for raw images).

  Returns:
    A ``Buffer`` of zeros with ``num_seen == 0``.

  Examples:
    >>> buffer_init(500, (32, 32, 3), 10).inputs.shape
    (500, 32, 32, 3)
  """
  if size < 1:
    raise ConfigError(f"buffer_size must be >= 1, got {size}.")
  if num_outputs < 1:
    raise ConfigError(f"num_outputs must be >= 1, got {num_outputs}.")
  return Buffer(
      inputs=jnp.zeros((size, *tuple(input_shape)), input_dtype),
      labels=jnp.zeros((size,), jnp.int32),
      logits=jnp.zeros((size, num_outputs), jnp.float32),
      task_ids=jnp.zeros((size,), jnp.int32),
      num_seen=jnp.zeros((), jnp.int32),
  )


def buffer_len(buffer: Buffer) -> jax.Array:
  """Number of filled slots, ``min(num_seen, S)``.

  Args:
    buffer: a ``Buffer``.

  Returns:
    int32 scalar.

  Examples:
    >>> int(buffer_len(buffer_init(4, (2,), 3)))
    0
  """
  return jnp.minimum(buffer.num_seen, buffer.labels.shape[0])


def buffer_ready(buffer: Buffer, n: int = 1) -> jax.Array:
  """Whether replaying ``n`` items from the buffer is meaningful yet.

  ``buffer_sample`` on a buffer with fewer filled slots than asked repeats
  items, and on an empty buffer returns zeros, without complaint. Gate the
  replay term of the loss with this: it is the library's own rule (its
  training step replays once ``num_seen >= replay_batch_size``), jittable
  and free of shape changes, e.g.
  ``loss = stream_loss + jnp.where(buffer_ready(buf, n), replay_loss, 0.0)``.

  Args:
    buffer: a ``Buffer``.
    n: the replay batch size (static or traced int).

  Returns:
    bool scalar: True once at least ``n`` valid items were offered, so that
    (for ``n <= S``) a draw of ``n`` gives ``n`` distinct stored items.

  Examples:
    >>> buf = buffer_init(4, (2,), 3)
    >>> bool(buffer_ready(buf))
    False
    >>> buf = reservoir_add(buf, jax.random.key(0), jnp.ones((2, 2)),
    ...                     jnp.array([1, 2]), None, 0)
    >>> bool(buffer_ready(buf, 2)), bool(buffer_ready(buf, 3))
    (True, False)
  """
  return buffer.num_seen >= n


def _reservoir_slots(num_seen: jax.Array, size: int, rng: jax.Array,
                     valid: jax.Array) -> jax.Array:
  """Slot each offered item would take if offered alone, in order.

  With n items seen before it, an item goes to slot n while n < size,
  otherwise to a uniform j in [0, n], kept only if j < size. Returns ``size``
  (out of range, i.e. dropped) for rejected or invalid items.
  """
  v = valid.astype(jnp.int32)
  seen_before = num_seen + jnp.cumsum(v) - v
  draw = jax.random.randint(rng, valid.shape, 0, seen_before + 1,
                            dtype=jnp.int32)
  slot = jnp.where(seen_before < size, seen_before, draw)
  return jnp.where(valid & (slot < size), slot, size)


def _last_writer_only(slots: jax.Array, size: int) -> jax.Array:
  """Drops writes that a later item of the same batch overwrites.

  XLA scatters apply duplicate indices in no fixed order; keeping only the
  last writer per slot makes the batched write equal to sequential offers.
  """
  b = slots.shape[0]
  same = (slots[:, None] == slots[None, :]) & (slots[:, None] < size)
  later = jnp.arange(b)[None, :] > jnp.arange(b)[:, None]
  overwritten = jnp.any(same & later, axis=1)
  return jnp.where(overwritten, size, slots)


# Jitted at definition so eager callers compile once per shape instead of once
# per primitive; inside a caller's jit this is inlined.
@jax.jit
def reservoir_add(buffer: Buffer, rng: jax.Array, inputs: jax.Array,
                  labels: jax.Array, logits: Optional[jax.Array],
                  task_ids: jax.Array,
                  valid: Optional[jax.Array] = None) -> Buffer:
  """Offers a batch of items to the reservoir, one after the other.

  Exactly reservoir sampling: with n valid items seen before an item, it is
  stored at slot n if n < S, else at a uniform j in [0, n] when j < S. The
  batch is processed in one vectorised step that gives the same result as
  offering the items sequentially.

  Args:
    buffer: current ``Buffer``.
    rng: PRNG key.
    inputs: [B, ...] un-augmented inputs.
    labels: int [B].
    logits: float [B, C] network outputs for DER, or None to store zeros.
    task_ids: int [B] or a scalar task id for the whole batch.
    valid: optional bool [B]; False items (padding, removed data) are neither
      stored nor counted.

  Returns:
    The updated ``Buffer``; ``num_seen`` grows by the number of valid items.

  Examples:
    >>> buf = reservoir_add(buf, key, x, y, z, 0)  # doctest: +SKIP
  """
  size = buffer.labels.shape[0]
  b = labels.shape[0]
  valid = (jnp.ones((b,), bool) if valid is None
           else jnp.asarray(valid, bool).reshape(b))
  slots = _last_writer_only(
      _reservoir_slots(buffer.num_seen, size, rng, valid), size)
  if logits is None:
    logits = jnp.zeros((b, buffer.logits.shape[1]), jnp.float32)
  task_ids = jnp.broadcast_to(jnp.asarray(task_ids, jnp.int32), (b,))

  def put(store: jax.Array, values: jax.Array) -> jax.Array:
    return store.at[slots].set(values.astype(store.dtype), mode="drop")

  return Buffer(
      inputs=put(buffer.inputs, inputs),
      labels=put(buffer.labels, labels),
      logits=put(buffer.logits, logits),
      task_ids=put(buffer.task_ids, task_ids),
      num_seen=buffer.num_seen + jnp.sum(valid, dtype=jnp.int32),
  )


@functools.partial(jax.jit, static_argnames="n")
def buffer_sample_indices(buffer: Buffer, rng: jax.Array, n: int) -> jax.Array:
  """Draws n slot indices uniformly from the filled slots.

  The first ``min(n, buffer_len)`` indices are distinct (a uniformly random
  subset in random order). If fewer than n slots are filled, the remaining
  positions repeat filled slots drawn with replacement; an empty buffer gives
  slot 0 (zeros), so gate the result with :func:`buffer_ready`.

  Args:
    buffer: a ``Buffer``.
    rng: PRNG key.
    n: static number of indices.

  Returns:
    int32 [n] slot indices.

  Examples:
    >>> idx = buffer_sample_indices(buf, key, 32)  # doctest: +SKIP
  """
  size = buffer.labels.shape[0]
  filled = buffer_len(buffer)
  k_perm, k_extra = jax.random.split(rng)
  perm = jax.random.permutation(k_perm, size).astype(jnp.int32)
  # Filled slots are exactly [0, filled); a stable sort moves them to the
  # front while keeping their random order.
  perm = perm[jnp.argsort(perm >= filled, stable=True)]
  k = min(n, size)
  distinct = jnp.concatenate([perm[:k], jnp.zeros((n - k,), jnp.int32)])
  extra = jax.random.randint(k_extra, (n,), 0, jnp.maximum(filled, 1),
                             dtype=jnp.int32)
  return jnp.where(jnp.arange(n) < filled, distinct, extra)


@functools.partial(jax.jit, static_argnames="n")
def buffer_sample(buffer: Buffer, rng: jax.Array, n: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Draws n items uniformly without replacement from the filled slots.

  Jittable with static ``n``; the shapes never depend on the buffer's fill.
  With fewer than n filled slots the draw repeats items (see
  ``buffer_sample_indices``); on an EMPTY buffer it returns zeros, silently.
  Gate the replay term with :func:`buffer_ready` (``buffer_ready(buf, n)``:
  at least n items offered), as the library's training step does.

  Args:
    buffer: a ``Buffer``.
    rng: PRNG key.
    n: static number of items.

  Returns:
    ``(inputs [n, ...], labels [n], logits [n, C], task_ids [n])``.

  Examples:
    >>> buf = buffer_init(4, (2,), 3)
    >>> key = jax.random.key(0)
    >>> bx, by, bz, bt = buffer_sample(buf, key, 2)  # empty: zeros
    >>> by, bool(buffer_ready(buf, 2))
    (Array([0, 0], dtype=int32), False)
    >>> buf = reservoir_add(buf, key, jnp.ones((2, 2)), jnp.array([1, 2]),
    ...                     None, 0)
    >>> bx, by, bz, bt = buffer_sample(buf, key, 2)
    >>> sorted(by.tolist()), bool(buffer_ready(buf, 2))
    ([1, 2], True)
  """
  idx = buffer_sample_indices(buffer, rng, n)
  return (buffer.inputs[idx], buffer.labels[idx], buffer.logits[idx],
          buffer.task_ids[idx])
