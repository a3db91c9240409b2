"""The replay losses of ER, DER, DER++ and ER-ACE, for any forward pass.

Two levels, for the library's step and for users' own:

* :func:`er_loss`, :func:`der_loss` and :func:`derpp_loss` take the
  reservoir buffer itself: they draw the batches, prepare them (optional
  augmentation), and add nothing until :func:`~sparcl_jax.replay.buffer.
  buffer_ready` says the buffer holds a batch. Add one to the stream loss
  of your own step (ER-ACE: :func:`er_loss` with ``class_mask`` the classes
  seen so far, and the stream loss over the current task's classes).
* :func:`er_term`, :func:`der_term` and :func:`derpp_term` take batches
  already drawn (:func:`draw_batch`), ungated: the library's step draws
  outside the gradient and gates with :func:`replay_if_ready`, the same
  pieces the losses above are built from.

Each takes ``forward(params, batch_stats, x, rng, train) -> (logits,
batch_stats)`` (``training.steps.make_forward`` builds one from a Flax
model; for a model without batch norm, ``lambda p, bs, x, rng, train:
(model.apply({"params": p}, x), bs)``) and returns ``(term, batch_stats)``:
the term to add to the stream loss, and the batch-norm statistics after the
replay passes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from sparcl_jax import losses
from sparcl_jax.replay import buffer as replay_buffer

PyTree = Any
Forward = Callable[..., tuple[jax.Array, PyTree]]


def er_term(forward: Forward, params: PyTree, batch_stats: PyTree,
            x: jax.Array, y: jax.Array, key: jax.Array,
            class_mask: Optional[jax.Array] = None):
  """ER's term: the cross-entropy of a buffer batch with its labels.

  Args:
    forward: the model's forward pass.
    params: model parameters.
    batch_stats: batch-norm statistics ({} without batch norm).
    x: the buffer batch's inputs, prepared (augmented, normalised).
    y: their labels.
    key: the forward pass's PRNG key (dropout).
    class_mask: [outputs] bool, the classes the loss covers (None: every
      output; ER-ACE: the classes seen so far).

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> term, _ = er_term(forward, jnp.zeros((2, 4)), {}, jnp.ones((1, 2)),
    ...                   jnp.array([0]), jax.random.key(0))
    >>> round(float(term), 4)  # log(4): uniform over 4 classes
    1.3863
  """
  logits, batch_stats = forward(params, batch_stats, x, key, True)
  if class_mask is not None:
    logits = losses.mask_logits(logits, class_mask)
  return losses.cross_entropy(logits, y), batch_stats


def der_term(forward: Forward, params: PyTree, batch_stats: PyTree,
             x: jax.Array, stored_logits: jax.Array, key: jax.Array,
             alpha: float):
  """DER's term: ``alpha`` times the mean squared error between a buffer
  batch's logits now and the logits stored with it.

  Args:
    forward: the model's forward pass.
    params: model parameters.
    batch_stats: batch-norm statistics.
    x: the buffer batch's inputs, prepared.
    stored_logits: the logits stored with them.
    key: the forward pass's PRNG key.
    alpha: the term's weight.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> term, _ = der_term(forward, jnp.ones((2, 2)), {}, jnp.ones((1, 2)),
    ...                    jnp.zeros((1, 2)), jax.random.key(0), alpha=0.5)
    >>> float(term)  # 0.5 * mean((2 - 0)^2)
    2.0
  """
  logits, batch_stats = forward(params, batch_stats, x, key, True)
  return alpha * losses.logit_matching(logits, stored_logits), batch_stats


def derpp_term(forward: Forward, params: PyTree, batch_stats: PyTree,
               first, second, keys, alpha: float, beta: float):
  """DER++'s term: DER's on a first buffer batch plus ``beta`` times the
  cross-entropy of a second, independently drawn one with its labels.

  Args:
    forward: the model's forward pass.
    params: model parameters.
    batch_stats: batch-norm statistics.
    first: ``(x1, stored_logits1)`` of the first buffer batch.
    second: ``(x2, y2)`` of the second.
    keys: the two forward passes' PRNG keys.
    alpha: DER's weight.
    beta: the label term's weight.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> x, keys = jnp.ones((1, 2)), jax.random.split(jax.random.key(0))
    >>> term, _ = derpp_term(forward, jnp.zeros((2, 2)), {},
    ...                      (x, jnp.zeros((1, 2))), (x, jnp.array([1])),
    ...                      keys, alpha=0.2, beta=1.0)
    >>> round(float(term), 4)  # 0.2 * 0 + 1.0 * log(2)
    0.6931
  """
  term, batch_stats = der_term(forward, params, batch_stats, first[0],
                               first[1], keys[0], alpha)
  label_term, batch_stats = er_term(forward, params, batch_stats, second[0],
                                    second[1], keys[1])
  return term + beta * label_term, batch_stats


def draw_batch(buffer: replay_buffer.Buffer, keys, batch_size: int,
               prepare: Optional[Callable] = None,
               constrain: Optional[Callable] = None):
  """One buffer batch for a replay term: ``(x, y, stored_logits)``.

  Args:
    buffer: the reservoir buffer.
    keys: ``(sample_key, prepare_key)``: the draw's and the preparation's.
    batch_size: static number of items (see
      :func:`~sparcl_jax.replay.buffer.buffer_sample`: on a buffer holding
      fewer, items repeat; gate the term with :func:`replay_if_ready`).
    prepare: ``prepare(key, x) -> x``, augmentation and normalisation of
      the inputs as stored; None: used as stored.
    constrain: applied to the raw draw ``(x, y, logits, task_ids)`` before
      preparation (the library's data-parallel sharding); None: nothing.

  Returns:
    ``(x, y, stored_logits)``.

  Examples:
    >>> buf = sc.reservoir_add(sc.buffer_init(4, (2,), 3), jax.random.key(0),
    ...                        jnp.ones((2, 2)), jnp.array([1, 2]),
    ...                        jnp.zeros((2, 3)), 0)
    >>> x, y, z = draw_batch(buf, jax.random.split(jax.random.key(1)), 2,
    ...                      prepare=lambda key, x: 2 * x)
    >>> x.tolist(), sorted(y.tolist()), z.shape
    ([[2.0, 2.0], [2.0, 2.0]], [1, 2], (2, 3))
  """
  sample_key, prepare_key = keys
  drawn = replay_buffer.buffer_sample(buffer, sample_key, batch_size)
  if constrain is not None:
    drawn = constrain(drawn)
  x, y, stored_logits, _ = drawn
  if prepare is not None:
    x = prepare(prepare_key, x)
  return x, y, stored_logits


def replay_if_ready(ready: jax.Array, term_fn: Callable, batch_stats: PyTree):
  """``term_fn(batch_stats)`` when ``ready``, else ``(0.0, batch_stats)``.

  A ``lax.cond``: the replay forward passes run only once the buffer holds
  a batch, and the statistics pass through unchanged before that.

  Args:
    ready: bool scalar, e.g. ``buffer_ready(buffer, batch_size)``.
    term_fn: ``batch_stats -> (term, batch_stats)``, a float32 term.
    batch_stats: batch-norm statistics.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> term_fn = lambda bs: (jnp.float32(2.0), bs)
    >>> replay_if_ready(jnp.array(False), term_fn, {})
    (Array(0., dtype=float32), {})
  """

  def no_replay(batch_stats):
    return jnp.zeros((), jnp.float32), batch_stats

  return jax.lax.cond(ready, term_fn, no_replay, batch_stats)


def er_loss(forward: Forward, params: PyTree, batch_stats: PyTree,
            buffer: replay_buffer.Buffer, key: jax.Array, batch_size: int,
            *, class_mask: Optional[jax.Array] = None,
            prepare: Optional[Callable] = None):
  """ER's replay loss on the buffer, for your own step.

  Draws ``batch_size`` items from ``buffer`` and returns :func:`er_term` on
  them, the cross-entropy with their labels; zero (and no forward pass)
  until :func:`~sparcl_jax.replay.buffer.buffer_ready` (``buffer``,
  ``batch_size``). Add it to the stream loss inside the function you
  differentiate. ER-ACE: ``class_mask`` = the classes seen so far, and the
  stream loss over the current task's classes only.

  Args:
    forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
      batch_stats)``.
    params: model parameters.
    batch_stats: batch-norm statistics ({} without batch norm).
    buffer: the reservoir buffer.
    key: PRNG key of the draw, the preparation and the forward pass.
    batch_size: static number of items replayed.
    class_mask: [outputs] bool, the classes the loss covers (None: every
      output).
    prepare: ``prepare(key, x) -> x`` for the stored inputs (augmentation,
      normalisation); None: as stored.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> buf = sc.buffer_init(8, (2,), 4)
    >>> params, key = jnp.zeros((2, 4)), jax.random.key(0)
    >>> float(sc.er_loss(forward, params, {}, buf, key, 2)[0])  # empty
    0.0
    >>> buf = sc.reservoir_add(buf, key, jnp.ones((2, 2)), jnp.array([0, 3]),
    ...                        jnp.zeros((2, 4)), 0)
    >>> term, _ = sc.er_loss(forward, params, {}, buf, key, 2)
    >>> round(float(term), 4)  # log(4): uniform over 4 classes
    1.3863
  """
  sample_key, prepare_key, forward_key = jax.random.split(key, 3)
  x, y, _ = draw_batch(buffer, (sample_key, prepare_key), batch_size,
                       prepare)
  return replay_if_ready(
      replay_buffer.buffer_ready(buffer, batch_size),
      lambda bs: er_term(forward, params, bs, x, y, forward_key, class_mask),
      batch_stats)


def der_loss(forward: Forward, params: PyTree, batch_stats: PyTree,
             buffer: replay_buffer.Buffer, key: jax.Array, batch_size: int,
             *, alpha: float, prepare: Optional[Callable] = None):
  """DER's replay loss on the buffer, for your own step.

  Draws ``batch_size`` items from ``buffer`` and returns :func:`der_term`
  on them: ``alpha`` times the mean squared error between their logits now
  and the logits stored with them (give :func:`~sparcl_jax.replay.buffer.
  reservoir_add` the stream batch's logits). Zero, with no forward pass,
  until the buffer is ready for ``batch_size``.

  Args:
    forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
      batch_stats)``.
    params: model parameters.
    batch_stats: batch-norm statistics ({} without batch norm).
    buffer: the reservoir buffer.
    key: PRNG key of the draw, the preparation and the forward pass.
    batch_size: static number of items replayed.
    alpha: the term's weight.
    prepare: ``prepare(key, x) -> x`` for the stored inputs; None: as
      stored.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> forward = lambda p, bs, x, rng, train: (x @ p, bs)
    >>> key = jax.random.key(0)
    >>> buf = sc.reservoir_add(sc.buffer_init(8, (2,), 2), key,
    ...                        jnp.ones((2, 2)), jnp.array([0, 1]),
    ...                        jnp.zeros((2, 2)), 0)
    >>> term, _ = sc.der_loss(forward, jnp.ones((2, 2)), {}, buf, key, 2,
    ...                       alpha=0.5)
    >>> float(term)  # 0.5 * mean((2 - 0)^2)
    2.0
  """
  sample_key, prepare_key, forward_key = jax.random.split(key, 3)
  x, _, stored_logits = draw_batch(buffer, (sample_key, prepare_key),
                                   batch_size, prepare)
  return replay_if_ready(
      replay_buffer.buffer_ready(buffer, batch_size),
      lambda bs: der_term(forward, params, bs, x, stored_logits, forward_key,
                          alpha),
      batch_stats)


def derpp_loss(forward: Forward, params: PyTree, batch_stats: PyTree,
               buffer: replay_buffer.Buffer, key: jax.Array, batch_size: int,
               *, alpha: float, beta: float,
               prepare: Optional[Callable] = None):
  """DER++'s replay loss on the buffer, for your own step.

  Draws two independent batches of ``batch_size`` items from ``buffer`` and
  returns :func:`derpp_term` on them: ``alpha`` times the mean squared
  error between the first batch's logits and its stored logits, plus
  ``beta`` times the cross-entropy of the second with its labels. Zero,
  with no forward pass, until the buffer is ready for ``batch_size``. This
  is the library's DER++ (``--method=derpp``): the same draws, terms and
  gate.

  Args:
    forward: ``forward(params, batch_stats, x, rng, train) -> (logits,
      batch_stats)``.
    params: model parameters.
    batch_stats: batch-norm statistics ({} without batch norm).
    buffer: the reservoir buffer.
    key: PRNG key of the draws, the preparations and the forward passes.
    batch_size: static number of items per batch.
    alpha: the logit term's weight.
    beta: the label term's weight.
    prepare: ``prepare(key, x) -> x`` for the stored inputs; None: as
      stored.

  Returns:
    ``(term, batch_stats)``.

  Examples:
    >>> model = lambda params, x: x @ params
    >>> forward = lambda p, bs, x, rng, train: (model(p, x), bs)
    >>> params, key = jnp.zeros((2, 2)), jax.random.key(0)
    >>> buf = sc.reservoir_add(sc.buffer_init(8, (2,), 2), key,
    ...                        jnp.ones((4, 2)), jnp.array([0, 1, 0, 1]),
    ...                        jnp.zeros((4, 2)), 0)
    >>> def loss_fn(params, x, y, buf, key):
    ...   stream = optax.softmax_cross_entropy_with_integer_labels(
    ...       model(params, x), y).mean()
    ...   replay, _ = sc.derpp_loss(forward, params, {}, buf, key, 2,
    ...                             alpha=0.2, beta=1.0)
    ...   return stream + replay
    >>> loss = jax.jit(loss_fn)(params, jnp.ones((2, 2)), jnp.array([0, 1]),
    ...                         buf, key)
    >>> round(float(loss), 4)  # log(2) + 0.2 * 0 + 1.0 * log(2)
    1.3863
  """
  keys = jax.random.split(key, 6)
  x1, _, stored_logits = draw_batch(buffer, (keys[0], keys[2]), batch_size,
                                    prepare)
  x2, y2, _ = draw_batch(buffer, (keys[1], keys[3]), batch_size, prepare)
  return replay_if_ready(
      replay_buffer.buffer_ready(buffer, batch_size),
      lambda bs: derpp_term(forward, params, bs, (x1, stored_logits),
                            (x2, y2), keys[4:], alpha, beta),
      batch_stats)


__all__ = ['der_loss', 'der_term', 'derpp_loss', 'derpp_term', 'draw_batch',
           'er_loss', 'er_term', 'replay_if_ready']
