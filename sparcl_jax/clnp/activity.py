"""CLNP's unit activity: an L1 penalty quiets units, then they are measured.

Each task trains with :func:`l1_penalty` so that units it does not need go
quiet; :func:`unit_activity` then reads every unit's activity on held-out
inputs, which the pruning search thresholds.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.clnp.partition import Partition
from sparcl_jax.clnp.specs import PyTree
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict

_READINGS = ("mean", "firing_rate")
# Flax forbids sowing under a submodule's name; project models add this.
_ACT_SUFFIX = "_act"


def l1_penalty(params: PyTree,
               trainable_masks: Union[PyTree, Partition, None],
               *,
               include_bias: bool = False) -> jax.Array:
  """Sums ``|w|`` over the trainable entries of the kernels.

  Leaves of rank <= 1 (biases, scales) are skipped unless ``include_bias``;
  the paper is silent on biases (?), hence the default.

  Args:
    params: the params pytree.
    trainable_masks: the ``trainable`` masks, or a whole :class:`Partition`;
      ``None`` sums over every entry, which gives the trainable entries the
      same gradient and is cheaper when :func:`clnp_partition` discards the
      frozen entries' gradients anyway.
    include_bias: also regularise rank <= 1 leaves.

  Returns:
    A float32 scalar; multiply by ``alpha`` in the loss.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> partition = sc.compute_partition(params, specs, used, task=1)
    >>> float(l1_penalty(params, partition.trainable))  # 3*2 + 4*2 kernels
    14.0
    >>> ce = 0.5
    >>> loss = ce + 1e-4 * l1_penalty(params, partition.trainable)
  """
  if isinstance(trainable_masks, Partition):
    trainable_masks = trainable_masks.trainable
  if trainable_masks is None:
    return sum((jnp.sum(jnp.abs(p), dtype=jnp.float32)
                for p in jax.tree.leaves(params)
                if include_bias or jnp.ndim(p) >= 2),
               jnp.zeros((), jnp.float32))
  terms = [jnp.sum(jnp.where(m, jnp.abs(p), 0.0), dtype=jnp.float32)
           for p, m in zip(jax.tree.leaves(params),
                           jax.tree.leaves(trainable_masks))
           if include_bias or jnp.ndim(p) >= 2]
  return sum(terms, jnp.zeros((), jnp.float32))


def _sown(intermediates, name: str):
  """The activation sown under ``name`` or, failing that, ``name + '_act'``."""
  *parents, last = name.split("/")
  node = intermediates
  for part in parents:
    node = node.get(part, {})
  for key in (last, last + _ACT_SUFFIX):
    if key in node:
      value = node[key]
      # sow() appends one entry per call; the last is this forward pass's.
      return value[-1] if isinstance(value, (tuple, list)) else value
  raise ConfigError(f"no sown activation {name!r}; sown: "
                    f"{sorted(flatten_to_dict(intermediates))}")


def activity_sums(activations: jax.Array, reading: str = "mean",
                  valid: Optional[jax.Array] = None) -> jax.Array:
  """Per-unit sum over a batch of each example's activity reading.

  The kernel both activity measures share: :func:`unit_activity` (host
  loop) and the CLNP runner's device-side scan. An example's reading is
  averaged over positions first (a conv unit's map; one position for a
  dense layer), then summed over the batch's valid examples.

  Args:
    activations: ``[B, ..., units]`` post-ReLU activations.
    reading: ``'mean'`` (activation) or ``'firing_rate'`` (share > 0).
    valid: ``[B]`` bool, examples to count (None: all).

  Returns:
    float32 ``[units]``.

  Example:
    >>> h = jnp.array([[0.0, 2.0], [1.0, 0.0], [5.0, 5.0]])
    >>> activity_sums(h, valid=jnp.array([True, True, False]))
    Array([1., 2.], dtype=float32)
    >>> activity_sums(h, "firing_rate")
    Array([2., 2.], dtype=float32)
  """
  h = activations.reshape(activations.shape[0], -1, activations.shape[-1])
  vals = h if reading == "mean" else (h > 0).astype(jnp.float32)
  if valid is not None:
    vals = jnp.where(valid[:, None, None], vals, 0.0)
  return jnp.sum(jnp.mean(vals, axis=1), axis=0)


def unit_activity(model_apply: Callable[..., Any],
                  variables: PyTree,
                  inputs: Any,
                  layer_names: Sequence[str],
                  *,
                  reading: str = "mean",
                  batch_size: Optional[int] = None) -> dict[str, np.ndarray]:
  """Measures each unit's activity over held-out inputs.

  ``reading='mean'`` is the mean post-ReLU activation (the paper's reading
  (?)); ``'firing_rate'`` the fraction of positive activations. Conv units
  average over examples and spatial positions (before pooling (?)).

  Args:
    model_apply: ``model_apply(variables, x, mutable=['intermediates'])``
      returning ``(outputs, state)`` with the activations sown under
      ``state['intermediates'][name] == (h,)`` or under ``name + '_act'``
      (the project models' naming); wrap Linen's ``apply`` in a lambda to
      pass ``train=False`` or a task id.
    variables: the model variables.
    inputs: array ``[N, ...]`` of held-out inputs of the task.
    layer_names: sown names (``'/'`` for nested modules).
    reading: ``'mean'`` or ``'firing_rate'``.
    batch_size: examples per forward pass; ``None`` means all at once.

  Returns:
    ``{name: float64[units]}``.

  Example:
    >>> from sparcl_jax.models.mlp import MLP
    >>> model, x_val = MLP((4, 3), 2), jnp.ones((6, 5))
    >>> variables = model.init(jax.random.key(0), x_val)
    >>> act = unit_activity(model.apply, variables, x_val,
    ...                     ['hidden_0', 'hidden_1'], batch_size=4)
    >>> {name: a.shape for name, a in act.items()}
    {'hidden_0': (4,), 'hidden_1': (3,)}
  """
  if reading not in _READINGS:
    raise ConfigError(f"reading must be one of {_READINGS}, got {reading!r}")
  n = int(jnp.shape(inputs)[0])
  if n == 0:
    raise ConfigError("unit_activity needs at least one input")
  batch_size = n if batch_size is None else int(batch_size)
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

  @jax.jit
  def sums(v, x):
    _, state = model_apply(v, x, mutable=["intermediates"])
    return {name: activity_sums(_sown(state["intermediates"], name), reading)
            for name in layer_names}

  totals: dict[str, np.ndarray] = {}
  for start in range(0, n, batch_size):
    batch = inputs[start:start + batch_size]
    for name, s in sums(variables, batch).items():
      totals[name] = totals.get(name, 0.0) + np.asarray(s, np.float64)
  return {name: totals[name] / n for name in layer_names}
