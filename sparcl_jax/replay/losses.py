"""The replay terms of ER, DER, DER++ and ER-ACE, for any forward pass.

Each term takes ``forward(params, batch_stats, x, rng, train) -> (logits,
batch_stats)`` (``training.steps.make_forward`` builds one from a Flax
model) and buffer batches as :func:`sparcl_jax.replay.buffer.buffer_sample`
draws them, and returns ``(term, batch_stats)``: the term to add to the
stream loss, and the batch-norm statistics after the replay passes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

from sparcl_jax import losses

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

  Example:
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

  Example:
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

  Example:
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
