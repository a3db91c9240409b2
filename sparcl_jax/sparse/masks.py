"""Sparsity masks over arbitrary parameter pytrees.

Everything here works on any pytree of arrays (plain dicts, ``FrozenDict``, the
pure dict of an ``nnx.State``) and knows nothing about the model. A leaf is
named by its ``'/'``-joined key path, e.g. ``'layer1_0/conv1/kernel'``.

A *masks* pytree has the structure of the params with a ``bool`` array of the
leaf's shape at every sparse leaf (``True`` = weight kept) and ``None`` at
every dense leaf. ``None`` keeps dense leaves free (no all-ones copies) and
tells every consumer, statically, which leaves are sparse.

This module builds masks (magnitude, SNIP, all-ones), applies them and
reports on them. Its neighbours hold the rest: ``sparse.sparsity`` (sparse
filters, sparsities, kept counts), ``sparse.selection`` (exact top-k) and
``sparse.drop_grow`` (drop-and-grow updates, built on ``apply_mask``).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_with_paths, is_none, map_with_paths
from sparcl_jax.sparse.selection import topk_mask
from sparcl_jax.sparse.sparsity import (PyTree, SparseFilter,
                                        keep_count_traceable)


def magnitude_mask(params: PyTree, sparsities: PyTree) -> PyTree:
  """Keeps, per sparse leaf, exactly the ``keep_count`` largest ``|w|``.

  Args:
    params: parameter pytree.
    sparsities: sparsities pytree (float at sparse leaves, ``None`` at dense
      leaves), e.g. from ``uniform_sparsities``.

  Returns:
    A masks pytree (bool arrays at sparse leaves, ``None`` elsewhere). Ties go
    to the lower flat index, so the result is deterministic.

  Examples:
    >>> p = {'hidden_0': {'kernel': jnp.array([[1., -3.], [2., 0.5]])}}
    >>> magnitude_mask(p, {'hidden_0': {'kernel': 0.5}})['hidden_0']['kernel']
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  return jax.tree.map(
      lambda s, w: None if s is None else topk_mask(
          jnp.abs(w), keep_count_traceable(w.size, s)),
      sparsities, params, is_leaf=is_none)


def snip_mask(params: PyTree, grads: PyTree, sparsities: PyTree) -> PyTree:
  """SNIP mask: keeps, per sparse leaf, the largest ``|w * g|``.

  Args:
    params: parameter pytree.
    grads: gradient pytree of the same structure (e.g. of one batch's loss).
    sparsities: sparsities pytree.

  Returns:
    A masks pytree with exact kept counts per sparse leaf.

  Examples:
    >>> p = {'hidden_0': {'kernel': jnp.array([1., 2., 3., 4.])}}
    >>> g = {'hidden_0': {'kernel': jnp.array([4., 0., 1., 0.])}}
    >>> snip_mask(p, g, {'hidden_0': {'kernel': 0.5}})['hidden_0']['kernel']
    Array([ True, False,  True, False], dtype=bool)
  """
  return jax.tree.map(
      lambda s, w, g: None if s is None else topk_mask(
          jnp.abs(w * g), keep_count_traceable(w.size, s)),
      sparsities, params, grads, is_leaf=is_none)


_BITS_OF_WIDTH = {2: jnp.uint16, 4: jnp.uint32}


def bit_select(mask: jax.Array, on_true: jax.Array,
               on_false: Optional[jax.Array] = None) -> jax.Array:
  """``jnp.where(mask, on_true, on_false)`` as bit operations, same result.

  XLA's CPU code for a select on a bool array is several times slower than
  an AND of the values' bits with a mask widened to all-ones or all-zeros
  words, and the masking of every weight update is on the hot path of every
  step. Both give the very same bits; float dtypes of other widths fall
  back to ``jnp.where``.

  Args:
    mask: bool array of the values' shape.
    on_true: values kept where ``mask`` is True.
    on_false: values (same dtype) where it is False; None means zeros.

  Returns:
    The selected values.

  Examples:
    >>> bit_select(jnp.array([True, False]), jnp.array([1.5, 2.0]))
    Array([1.5, 0. ], dtype=float32)
  """
  bits = _BITS_OF_WIDTH.get(jnp.dtype(on_true.dtype).itemsize)
  if (bits is None or not jnp.issubdtype(on_true.dtype, jnp.floating) or
      (on_false is not None and on_false.dtype != on_true.dtype)):
    zero = jnp.zeros_like(on_true) if on_false is None else on_false
    return jnp.where(mask, on_true, zero)
  keep = jnp.zeros((), bits) - mask.astype(bits)
  out = jax.lax.bitcast_convert_type(on_true, bits) & keep
  if on_false is not None:
    out = out | (jax.lax.bitcast_convert_type(on_false, bits) & ~keep)
  return jax.lax.bitcast_convert_type(out, on_true.dtype)


def _masks_by_path(masks: PyTree) -> dict[str, Any]:
  """``{path: mask}`` of a masks pytree's sparse leaves (None skipped).

  The masks may be a plain pytree, an ``nnx.State`` or the masks of an
  ``nnx.Optimizer``'s state (arrays inside ``OptVariable``): the paths drop
  the Variable's ``value`` key, so all of them name a leaf alike.
  """
  return {path: m for path, m in flatten_with_paths(masks) if m is not None}


def apply_mask(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the masked-out weights; dense leaves pass unchanged.

  Params and masks are matched by their ``'/'``-joined leaf paths, so the
  two may be of different kinds: a params dict, an ``nnx.State`` of
  ``nnx.Param`` (``nnx.state(model, nnx.Param)``) or its pure dict, with
  masks from ``tdm_masks`` of a plain optax state or of an
  ``nnx.Optimizer``'s ``opt_state`` (``OptVariable``-wrapped). The result
  is of the params' kind (an ``nnx.State`` of ``nnx.Param`` stays one, ready
  for ``nnx.update(model, ...)``).

  Args:
    params: parameter pytree.
    masks: masks pytree (``None`` at dense leaves).

  Returns:
    Params with exact zeros where the mask is False.

  Raises:
    ConfigError: a mask names a leaf the params do not have (e.g. masks of
      another model, or params with an extra ``params/`` level).

  Examples:
    >>> apply_mask({'w': jnp.array([1., 2.])}, {'w': jnp.array([True, False])})
    {'w': Array([1., 0.], dtype=float32)}
  """
  by_path = _masks_by_path(masks)
  if not by_path:
    return params
  seen = set()

  def leaf(path, w):
    m = by_path.get(path)
    if m is None:
      return w
    seen.add(path)
    return bit_select(jnp.asarray(m), w)

  out = map_with_paths(leaf, params)
  missing = [p for p in by_path if p not in seen]
  if missing:
    have = [p for p, _ in flatten_with_paths(params)]
    raise ConfigError(
        f'apply_mask: the masks name {len(missing)} leaves the params do not '
        f'have ({", ".join(missing[:4])}); the params have '
        f'{", ".join(have[:4])}{", ..." if len(have) > 4 else ""}.')
  return out


def scale_to_kept_fan_in(params: PyTree, masks: PyTree) -> PyTree:
  """Scales each masked kernel's kept weights to a dense init at their fan-in.

  An output unit of a kernel ``[..., fan_out]`` (dense ``[in, out]``, conv
  ``[h, w, in, out]``) that keeps ``kept`` of its ``fan_in`` weights gets
  them multiplied by ``sqrt(fan_in / kept)``: a fan-in-scaled initializer
  (LeCun, He) then gives it the variance it would give a dense unit reading
  ``kept`` inputs, so masking does not shrink the unit's output variance
  ``kept / fan_in``-fold. Units keeping nothing, dense leaves and 1-D
  leaves are left alone.

  Args:
    params: parameter pytree, already masked.
    masks: masks pytree (``None`` at dense leaves).

  Returns:
    The rescaled params (zeros stay zeros).

  Examples:
    >>> m = jnp.array([[True, True], [False, True], [False, True],
    ...                [False, True]])
    >>> w = apply_mask({'w': jnp.ones((4, 2))}, {'w': m})
    >>> scale_to_kept_fan_in(w, {'w': m})['w']    # 1 of 4 kept: x 2
    Array([[2., 1.],
           [0., 1.],
           [0., 1.],
           [0., 1.]], dtype=float32)
  """
  by_path = _masks_by_path(masks)

  def leaf(path, w):
    m = by_path.get(path)
    if m is None or w.ndim < 2:
      return w
    fan_out = w.shape[-1]
    kept = jnp.asarray(m).reshape(-1, fan_out).sum(0)
    scale = jnp.sqrt((w.size // fan_out) / jnp.maximum(kept, 1))
    return w * scale.astype(w.dtype)

  return map_with_paths(leaf, params)


def masks_from_filter(params: PyTree, sparse_filter: SparseFilter) -> PyTree:
  """All-True masks at selected leaves, ``None`` elsewhere.

  Args:
    params: parameter pytree.
    sparse_filter: predicate choosing the sparse leaves.

  Returns:
    A masks pytree with every selected weight kept.

  Examples:
    >>> masks_from_filter({'hidden_0': {'kernel': jnp.ones((2, 2))}},
    ...                   sc.default_sparse_filter)['hidden_0']['kernel'].all()
    Array(True, dtype=bool)
  """
  return map_with_paths(
      lambda path, w: jnp.ones(w.shape, jnp.bool_)
      if sparse_filter(path, w) else None, params)


def summarize_sparsity(tree: PyTree,
                       sparse_filter: Optional[SparseFilter] = None
                       ) -> dict[str, Any]:
  """Counts zeros per leaf and overall (host-side, for reporting).

  For a params pytree a zero weight counts as pruned; for a masks pytree
  (bool leaves) a False entry does. ``None`` leaves are skipped.

  Args:
    tree: params or masks pytree.
    sparse_filter: optional predicate; only matching leaves are summarized
      (default: every leaf).

  Returns:
    ``{'layers': {path: {'size', 'nnz', 'sparsity'}}, 'size': int,
    'nnz': int, 'sparsity': float}`` with Python numbers.

  Examples:
    >>> summarize_sparsity({'w': jnp.array([0., 1., 0., 2.])})['sparsity']
    0.5
  """
  layers = {}
  for path, leaf in flatten_with_paths(tree):
    if sparse_filter is not None and not sparse_filter(path, leaf):
      continue
    values = np.asarray(leaf)
    size = int(values.size)
    nnz = int(np.count_nonzero(values))
    layers[path] = {'size': size, 'nnz': nnz,
                    'sparsity': 1.0 - nnz / size if size else 0.0}
  size = sum(v['size'] for v in layers.values())
  nnz = sum(v['nnz'] for v in layers.values())
  return {'layers': layers, 'size': size, 'nnz': nnz,
          'sparsity': 1.0 - nnz / size if size else 0.0}


__all__ = [
    'apply_mask', 'bit_select', 'magnitude_mask', 'masks_from_filter',
    'scale_to_kept_fan_in', 'snip_mask', 'summarize_sparsity',
]
