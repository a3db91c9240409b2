"""CLNP's optax wrapper: only a partition's trainable entries move.

:func:`clnp_partition` applies a :class:`~sparcl_jax.clnp.partition.Partition`
to the gradient going into any optimizer and to the update coming out of it,
so frozen entries stay bit-identical and zero entries exactly zero;
:func:`set_partition` swaps the masks between tasks.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparcl_jax import masks as masks_lib
from sparcl_jax.clnp.partition import Partition
from sparcl_jax.clnp.specs import PyTree
from sparcl_jax.errors import ConfigError


class ClnpPartitionState(NamedTuple):
  """State of :func:`clnp_partition`: the masks and the inner state.

  Attributes:
    trainable: bool pytree, see :class:`Partition`.
    zero: bool pytree, see :class:`Partition`.
    inner_state: state of the wrapped optimizer.

  Example:
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    >>> state = clnp_partition(optax.adam(1e-3)).init(params)
    >>> all(bool(m.all()) for m in jax.tree.leaves(state.trainable))
    True
  """

  trainable: PyTree
  zero: PyTree
  inner_state: Any


def _as_bool_tree(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda m: jnp.asarray(m, bool), tree)


def _check_like(masks: PyTree, ref: PyTree, what: str) -> None:
  if jax.tree.structure(masks) != jax.tree.structure(ref):
    raise ConfigError(f"{what} masks do not have the params' tree structure")
  for m, r in zip(jax.tree.leaves(masks), jax.tree.leaves(ref)):
    if jnp.shape(m) != jnp.shape(r):
      raise ConfigError(f"{what} mask of shape {jnp.shape(m)} does not match "
                        f"parameter shape {jnp.shape(r)}")


def clnp_partition(
    inner: optax.GradientTransformation,
    partition: Optional[Partition] = None,
    *,
    mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Wraps an optimizer so that only the partition's trainable entries move.

  The gradient is masked before ``inner`` (so frozen entries do not feed its
  statistics) and the final update is masked again (so momentum left in
  ``inner``'s state cannot move them): frozen entries receive an update of
  exactly zero whatever ``inner`` is. When ``params`` are passed to
  ``update``, zero entries receive ``-params`` so that any stray value is
  driven to exactly zero on the first step (and then stays there).

  ``mask_gradients=False`` skips the first mask. For an elementwise
  optimizer (SGD, momentum, Adam, ...) the trainable entries' updates are
  then the same (up to XLA fusing the float arithmetic differently), since
  no entry's statistics reach another's, and reading a mask in the
  optimizer's memory-bound passes over every weight is saved; frozen entries
  still get exactly zero. Keep the default for optimizers that look across
  entries (global-norm clipping, trust ratios such as LARS/LAMB), whose
  trainable updates would otherwise see the frozen gradients.

  The masks live in the state rather than being closed over, so one jitted
  train step serves every task: change them between tasks with
  :func:`set_partition`, typically together with a fresh ``init`` to reset
  the optimizer per task. Keep this transform outermost: anything chained
  after it could move frozen entries again. Extra keyword args are forwarded
  to ``inner``.

  Args:
    inner: the optimizer to wrap, e.g. ``optax.adam(1e-3)``.
    partition: masks used by ``init``; ``None`` makes every entry trainable
      until :func:`set_partition` is called.
    mask_gradients: mask the gradient before ``inner`` (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = clnp_partition(optax.adam(1e-3))
    >>> state = set_partition(tx.init(params), sc.compute_partition(
    ...     params, specs, used, task=1))
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in params['hidden_0']['kernel'][0]]
    [1.0, 1.0, 0.999, 0.999]
  """
  inner = optax.with_extra_args_support(inner)
  if partition is not None and not isinstance(partition, Partition):
    raise ConfigError("partition must be a Partition or None")

  def init_fn(params):
    if partition is None:
      trainable = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
      zero = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params)
    else:
      _check_like(partition.trainable, params, "trainable")
      _check_like(partition.zero, params, "zero")
      trainable = _as_bool_tree(partition.trainable)
      zero = _as_bool_tree(partition.zero)
    return ClnpPartitionState(trainable, zero, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if mask_gradients:
      updates = jax.tree.map(masks_lib.bit_select, state.trainable, updates)
    inner_updates, inner_state = inner.update(updates, state.inner_state,
                                              params, **extra_args)
    # Zero entries win over trainable ones, should a partition mark both.
    if params is None:
      out = jax.tree.map(lambda u, t, z: masks_lib.bit_select(t & ~z, u),
                         inner_updates, state.trainable, state.zero)
    else:
      out = jax.tree.map(
          lambda u, t, z, p: masks_lib.bit_select(
              z, -p.astype(u.dtype), masks_lib.bit_select(t, u)),
          inner_updates, state.trainable, state.zero, params)
    return out, ClnpPartitionState(state.trainable, state.zero, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _replace_partition(state, partition: Partition):
  if isinstance(state, ClnpPartitionState):
    _check_like(partition.trainable, state.trainable, "trainable")
    _check_like(partition.zero, state.zero, "zero")
    return state._replace(trainable=_as_bool_tree(partition.trainable),
                          zero=_as_bool_tree(partition.zero)), True
  if isinstance(state, (tuple, list)):
    found, items = False, []
    for item in state:
      new, hit = _replace_partition(item, partition)
      found, items = found or hit, items + [new]
    if hasattr(state, "_fields"):
      return type(state)(*items), found
    return type(state)(items), found
  return state, False


def set_partition(state: Any, partition: Partition) -> Any:
  """Returns ``state`` with the masks of its :func:`clnp_partition` replaced.

  Works on the state of :func:`clnp_partition` itself or on any tuple/chain
  state containing one. The inner optimizer state is kept; reset it by
  calling ``tx.init`` first when a new task starts.

  Args:
    state: an optimizer state containing a :class:`ClnpPartitionState`.
    partition: the new masks, shaped like the old ones.

  Returns:
    The new state.

  Example:
    >>> dense = lambda n_in, n_out: {'kernel': jnp.ones((n_in, n_out)),
    ...                              'bias': jnp.zeros(n_out)}
    >>> params = {'hidden_0': dense(3, 4), 'head_0': dense(4, 2),
    ...           'head_1': dense(4, 2)}
    >>> specs = sc.mlp_layer_specs(params)
    >>> used = {'hidden_0': np.array([True, True, False, False])}
    >>> tx = optax.chain(optax.clip(1.0), clnp_partition(optax.sgd(0.1)))
    >>> partition = sc.compute_partition(params, specs, used, task=1)
    >>> state = set_partition(tx.init(params), partition)
    >>> bool(state[1].trainable['head_0']['kernel'].any())  # task 0's head
    False
  """
  new, found = _replace_partition(state, partition)
  if not found:
    raise ConfigError("set_partition: the state holds no clnp_partition state")
  return new
