"""Group-balanced sparse kernels: layers that compute with the kept weights only.

A dense kernel ``[fan_in, fan_out]`` is cut into ``groups`` blocks of
``group`` consecutive output units; every block keeps the same number ``k``
of input rows. The kept weights are stored compactly, ``values`` of shape
``[groups, k, group]``, beside ``rows`` ``[groups, k]`` (int32: which input
rows each block keeps). A product gathers each block's kept inputs and runs
one batched matmul, so forward and both backward products cost ``k /
fan_in`` of the dense ones, and the optimizer updates only the kept weights.

Static shapes are what let XLA run this fast: the same ``k`` in every block.
``experiments/grouped_sparsity_probe.py`` measures it against the dense and
the masked (unstructured) layer.

Examples:
  >>> rows = jnp.array([[0, 2], [1, 2]])            # 2 blocks, k = 2
  >>> values = jnp.arange(8.).reshape(2, 2, 2)      # block size 2
  >>> to_dense(values, rows, 3)
  Array([[0., 1., 0., 0.],
         [0., 0., 4., 5.],
         [2., 3., 6., 7.]], dtype=float32)
  >>> grouped_matmul(jnp.ones((1, 3)), values, rows)
  Array([[ 2.,  4., 10., 12.]], dtype=float32)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from sparcl_jax.errors import ConfigError


def kept_rows_per_group(fan_in: int, sparsity: float) -> int:
  """Input rows each block keeps: ``round((1 - sparsity) * fan_in)``, >= 1.

  Args:
    fan_in: input rows of the kernel.
    sparsity: share of the weights pruned, in [0, 1).

  Returns:
    ``k``.

  Examples:
    >>> kept_rows_per_group(2000, 0.9)
    200
  """
  if not 0.0 <= sparsity < 1.0:
    raise ConfigError(f"sparsity={sparsity} must be in [0, 1)")
  return max(1, round((1.0 - sparsity) * fan_in))


def check_group(fan_out: int, group: int) -> int:
  """The number of blocks, or a ConfigError when ``group`` does not divide
  ``fan_out``.

  Args:
    fan_out: output units of the kernel.
    group: output units per block.

  Returns:
    ``fan_out // group``.

  Examples:
    >>> check_group(2000, 250)
    8
  """
  if group < 1 or fan_out % group:
    raise ConfigError(f"a group of {group} output units must divide the "
                      f"layer's {fan_out}; pick a divisor.")
  return fan_out // group


def grouped_matmul(x: jax.Array, values: jax.Array,
                   rows: jax.Array) -> jax.Array:
  """``x @ to_dense(values, rows)`` with the kept weights only.

  Args:
    x: ``[..., fan_in]`` inputs.
    values: ``[groups, k, group]`` kept weights.
    rows: ``[groups, k]`` int32 kept input rows of each block.

  Returns:
    ``[..., groups * group]``.

  Examples:
    >>> grouped_matmul(jnp.array([[1., 2.]]), jnp.ones((1, 1, 3)),
    ...                jnp.array([[1]]))
    Array([[2., 2., 2.]], dtype=float32)
  """
  gathered = jnp.take(x, rows, axis=-1)  # [..., groups, k]
  out = jnp.einsum("...gk,gkn->...gn", gathered, values)
  return out.reshape(*x.shape[:-1], values.shape[0] * values.shape[2])


def to_dense(values: jax.Array, rows: jax.Array, fan_in: int) -> jax.Array:
  """The dense ``[fan_in, groups * group]`` kernel, zero where not kept.

  Args:
    values: ``[groups, k, group]``.
    rows: ``[groups, k]``, distinct within each block.
    fan_in: input rows of the dense kernel.

  Returns:
    The dense kernel.

  Examples:
    >>> to_dense(jnp.ones((1, 1, 2)), jnp.array([[1]]), 2)
    Array([[0., 0.],
           [1., 1.]], dtype=float32)
  """
  groups, _, group = values.shape
  dense = jnp.zeros((fan_in, groups, group), values.dtype)
  dense = dense.at[rows, jnp.arange(groups)[:, None]].set(values)
  return dense.reshape(fan_in, groups * group)


def from_dense(kernel: jax.Array, rows: jax.Array) -> jax.Array:
  """The kept weights ``[groups, k, group]`` of a dense kernel.

  Args:
    kernel: ``[fan_in, groups * group]``.
    rows: ``[groups, k]`` kept input rows.

  Returns:
    ``values``.

  Examples:
    >>> from_dense(jnp.arange(6.).reshape(3, 2), jnp.array([[0, 2]]))
    Array([[[0., 1.],
            [4., 5.]]], dtype=float32)
  """
  groups = rows.shape[0]
  blocks = kernel.reshape(kernel.shape[0], groups, -1)  # [in, G, gs]
  return blocks[rows, jnp.arange(groups)[:, None]]


def initial_values(key: jax.Array, kernel_init, fan_in: int,
                   rows: jax.Array, group: int, kept_fan_in: bool = True,
                   dtype=jnp.float32) -> jax.Array:
  """The kept weights ``[groups, k, group]`` a grouped layer starts with.

  With ``kept_fan_in`` (the default), the weights are drawn as a dense
  layer reading ``k`` inputs would draw them (``kernel_init`` of a ``[k,
  fan_out]`` kernel), so each unit's output starts with a dense layer's
  variance. Otherwise they are cut from a dense ``[fan_in, fan_out]``
  kernel, as masking a dense layer gives: a fan-in-scaled initializer then
  leaves each unit ``k / fan_in`` of a dense layer's output variance, which
  compounds over layers (on the MLP 784-2000-2000 at sparsity 0.95 the
  logits start with 0.2% of the dense MLP's variance, 74% at the kept
  fan-in: ``experiments/sparse_init_probe.py``).

  Args:
    key: PRNG key.
    kernel_init: a Flax kernel initializer ``(key, shape, dtype)``.
    fan_in: input rows of the dense kernel.
    rows: ``[groups, k]`` kept rows.
    group: output units per block.
    kept_fan_in: draw at the kept fan-in ``k`` (else at ``fan_in``).
    dtype: the weights' dtype.

  Returns:
    ``values``.

  Examples:
    >>> rows = random_rows(jax.random.key(0), 800, 4, 40)
    >>> init = jax.nn.initializers.lecun_normal()
    >>> kept = initial_values(jax.random.key(1), init, 800, rows, 50)
    >>> cut = initial_values(jax.random.key(1), init, 800, rows, 50, False)
    >>> kept.shape, round(float(kept.var() / cut.var()))   # 800 / 40
    ((4, 40, 50), 20)
  """
  groups, k = rows.shape
  if not kept_fan_in:
    return from_dense(kernel_init(key, (fan_in, groups * group), dtype), rows)
  kernel = kernel_init(key, (k, groups * group), dtype)
  return kernel.reshape(k, groups, group).transpose(1, 0, 2)


def kept_membership(rows: jax.Array, fan_in: int) -> jax.Array:
  """The bool ``[groups, fan_in]`` membership of each block's kept rows.

  Args:
    rows: ``[groups, k]``.
    fan_in: input rows.

  Returns:
    True where a block keeps the row.

  Examples:
    >>> kept_membership(jnp.array([[0, 2]]), 3)
    Array([[ True, False,  True]], dtype=bool)
  """
  groups = rows.shape[0]
  return jnp.zeros((groups, fan_in), bool).at[
      jnp.arange(groups)[:, None], rows].set(True)


def row_mask(rows: jax.Array, fan_in: int, group: int) -> jax.Array:
  """The bool ``[fan_in, groups * group]`` mask of the kept weights.

  Args:
    rows: ``[groups, k]``.
    fan_in: input rows.
    group: output units per block.

  Returns:
    The mask.

  Examples:
    >>> row_mask(jnp.array([[1]]), 2, 2)
    Array([[False, False],
           [ True,  True]], dtype=bool)
  """
  return to_dense(jnp.ones(rows.shape + (group,), bool), rows, fan_in)


def top_rows(scores: jax.Array, k: int) -> jax.Array:
  """Each block's ``k`` highest-scoring input rows, in increasing order.

  Ties go to the lower row index.

  Args:
    scores: ``[groups, fan_in]``.
    k: rows to keep per block.

  Returns:
    ``[groups, k]`` int32.

  Examples:
    >>> top_rows(jnp.array([[0.1, 0.5, 0.5, 0.2]]), 2)
    Array([[1, 2]], dtype=int32)
  """
  _, index = jax.lax.top_k(scores, k)
  return jnp.sort(index, axis=-1).astype(jnp.int32)


def magnitude_rows(kernel: jax.Array, group: int, k: int) -> jax.Array:
  """Kept rows of a dense kernel: per block, the ``k`` input rows of largest
  L1 norm over the block's output units.

  Args:
    kernel: ``[fan_in, fan_out]``.
    group: output units per block.
    k: rows kept per block.

  Returns:
    ``[groups, k]`` int32.

  Examples:
    >>> kernel = jnp.array([[1., 1.], [3., 0.], [0., 2.]])
    >>> magnitude_rows(kernel, 1, 1)   # one block per output unit
    Array([[1],
           [2]], dtype=int32)
  """
  groups = check_group(kernel.shape[1], group)
  norms = jnp.abs(kernel).reshape(kernel.shape[0], groups, group).sum(-1)
  return top_rows(norms.T, k)


def random_rows(key: jax.Array, fan_in: int, groups: int,
                k: int) -> jax.Array:
  """Kept rows drawn uniformly, ``k`` distinct ones per block.

  Args:
    key: PRNG key.
    fan_in: input rows.
    groups: blocks.
    k: rows kept per block.

  Returns:
    ``[groups, k]`` int32, increasing within each block.

  Examples:
    >>> random_rows(jax.random.key(0), 10, 3, 4).shape
    (3, 4)
  """
  return top_rows(jax.random.uniform(key, (groups, fan_in)), k)


def drop_and_grow_rows(values: jax.Array, rows: jax.Array,
                       drop_scores: jax.Array, grow_scores: jax.Array,
                       count: int) -> tuple[jax.Array, jax.Array]:
  """Swaps ``count`` kept rows of every block for rows not kept.

  In each block, the ``count`` kept rows with the lowest ``drop_scores``
  leave, and the ``count`` rows not kept with the highest ``grow_scores``
  take their slots, with zero weights. Every block keeps exactly ``k`` rows,
  all distinct. Ties drop the earlier slot and grow the lower row index.

  Args:
    values: ``[groups, k, group]`` kept weights.
    rows: ``[groups, k]`` kept rows.
    drop_scores: ``[groups, k]``, higher = kept (e.g. SparCL's ``|W| +
      lambda |g|`` summed over the block's units).
    grow_scores: ``[groups, fan_in]``, higher = grown first (e.g. ``|g|``
      summed over the block's units, or uniform noise); kept rows are
      never grown.
    count: rows swapped per block, at most ``min(k, fan_in - k)``.

  Returns:
    ``(values, rows)`` after the swap.

  Examples:
    >>> values, rows = drop_and_grow_rows(
    ...     jnp.ones((1, 2, 1)), jnp.array([[0, 1]]),
    ...     drop_scores=jnp.array([[0.9, 0.1]]),
    ...     grow_scores=jnp.array([[5., 5., 0.2, 0.7]]), count=1)
    >>> rows, values[..., 0]
    (Array([[0, 3]], dtype=int32), Array([[1., 0.]], dtype=float32))
  """
  groups, k = rows.shape
  fan_in = grow_scores.shape[1]
  if not 0 <= count <= min(k, fan_in - k):
    raise ConfigError(f"count={count} rows cannot be swapped in blocks of "
                      f"{k} kept rows out of {fan_in}")
  if count == 0:
    return values, rows
  # Slots that leave: the lowest drop scores (top_k of the negated scores).
  _, leaving = jax.lax.top_k(-drop_scores, count)  # [groups, count]
  kept = kept_membership(rows, fan_in)
  candidates = jnp.where(kept, -jnp.inf, grow_scores)
  _, grown = jax.lax.top_k(candidates, count)  # [groups, count]
  block = jnp.arange(groups)[:, None]
  rows = rows.at[block, leaving].set(grown.astype(rows.dtype))
  values = values.at[block, leaving].set(0.0)
  return values, rows


def kept_block_scores(values: jax.Array,
                      grads: Optional[jax.Array] = None,
                      importance_lambda: float = 0.0) -> jax.Array:
  """SparCL's drop score of each kept row: ``|W| + lambda |g|`` summed over
  the block's units (and, for a convolution, the window's taps).

  Any layer whose kept weights read ``[groups, ..., k, group]`` (a dense
  layer's ``[groups, k, group]``, a convolution's ``[groups, *window, k,
  group]``) is scored the same way: summed over every axis but the block
  (first) and the row (second to last).

  Args:
    values: ``[groups, ..., k, group]`` kept weights.
    grads: their gradient (same shape), or None.
    importance_lambda: weight of the gradient term.

  Returns:
    ``[groups, k]``.

  Examples:
    >>> kept_block_scores(jnp.array([[[1., -2.], [0., 0.5]]]))
    Array([[3. , 0.5]], dtype=float32)
    >>> kept_block_scores(jnp.ones((2, 3, 3, 4, 5)))[0, 0]  # 9 taps x 5
    Array(45., dtype=float32)
  """
  scores = jnp.abs(values)
  if grads is not None and importance_lambda:
    scores = scores + importance_lambda * jnp.abs(grads)
  return scores.sum(_unit_axes(values.ndim))


def _unit_axes(ndim: int) -> tuple[int, ...]:
  """Axes of ``[groups, ..., k, group]`` other than the block and the row."""
  return tuple(range(1, ndim - 2)) + (ndim - 1,)


def row_slots(per_row: jax.Array, ndim: int) -> jax.Array:
  """A ``[groups, k]`` array shaped to broadcast against ``[groups, ...,
  k, group]`` kept weights of rank ``ndim``.

  Args:
    per_row: ``[groups, k]``, one entry per kept row of each block.
    ndim: rank of the kept weights (3 for a dense layer, 5 for a 2-d
      convolution).

  Returns:
    ``per_row`` reshaped to ``[groups, 1, ..., 1, k, 1]``.

  Examples:
    >>> row_slots(jnp.ones((4, 2), bool), 5).shape
    (4, 1, 1, 2, 1)
  """
  groups, k = per_row.shape
  return per_row.reshape((groups,) + (1,) * (ndim - 3) + (k, 1))
