"""Loss terms shared by the continual-learning methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Finite stand-in for -inf: masked logits must not turn softmax gradients NaN.
_MASKED_LOGIT = -1e9


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy with integer labels.

  Args:
    logits: [B, C] float.
    labels: [B] int.
    weights: optional [B] per-example weights (e.g. 0 for padding); the mean
      is taken over their sum.

  Returns:
    Scalar loss.

  Examples:
    >>> cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))  # log(4)
    Array(1.3862944, dtype=float32)
  """
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return per_example.mean()
  weights = weights.astype(per_example.dtype)
  return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def mask_logits(logits: jax.Array, class_mask: jax.Array) -> jax.Array:
  """Replaces the logits of classes outside ``class_mask`` with a huge negative.

  Args:
    logits: [B, C].
    class_mask: [C] bool, True for classes that stay.

  Returns:
    [B, C] logits where excluded classes can never win nor take probability.

  Examples:
    >>> mask_logits(jnp.ones((1, 3)), jnp.array([True, False, True]))
    Array([[ 1.e+00, -1.e+09,  1.e+00]], dtype=float32)
  """
  return jnp.where(class_mask[None, :], logits, _MASKED_LOGIT)


def logit_matching(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
  """DER's dark-knowledge term: mean squared error over all logits.

  Args:
    logits: [B, C] current network outputs.
    target_logits: [B, C] outputs stored in the buffer.

  Returns:
    Scalar mean over batch and classes.

  Examples:
    >>> logit_matching(jnp.zeros((1, 2)), jnp.array([[1.0, 3.0]]))
    Array(5., dtype=float32)
  """
  return jnp.mean(jnp.square(logits - target_logits))
