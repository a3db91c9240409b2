"""Sparsity masks over arbitrary parameter pytrees.

Everything here works on any pytree of arrays (plain dicts, ``FrozenDict``, the
pure dict of an ``nnx.State``) and knows nothing about the model. A leaf is
named by its ``'/'``-joined key path, e.g. ``'layer1_0/conv1/kernel'``.

Representation used throughout the library:

* a *sparsities* pytree has the structure of the params with a Python float in
  ``[0, 1)`` at every sparse leaf and ``None`` at every dense leaf;
* a *masks* pytree has the structure of the params with a ``bool`` array of
  the leaf's shape at every sparse leaf (``True`` = weight kept) and ``None``
  at every dense leaf. ``None`` keeps dense leaves free (no all-ones copies)
  and tells every consumer, statically, which leaves are sparse.

Kept counts are always exact: a layer of ``n`` weights at sparsity ``s`` keeps
``keep_count(n, s) == round((1 - s) * n)`` weights, whatever the ties.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import (flatten_with_paths, is_none, key_to_str,  # pylint: disable=unused-import
                              path_to_str)

PyTree = Any
SparseFilter = Callable[[str, Any], bool]
Sparsity = Union[float, jax.Array]

GROWTH_MODES = ('random', 'gradient')


def default_sparse_filter(path: str, leaf: Any) -> bool:
  """Selects the leaves SparCL keeps sparse in the project's models.

  True for 4-D kernels of the two 3x3 convolutions inside residual blocks
  (path contains ``'layer'`` and ends with ``'conv1/kernel'`` or
  ``'conv2/kernel'``, no ``'shortcut'``) and for 2-D kernels of MLP hidden
  layers (``'hidden_*/kernel'``). The stem conv, shortcut convs, norms, biases
  and heads stay dense.

  Args:
    path: ``'/'``-joined path of the leaf.
    leaf: the leaf (only its ``ndim`` is read).

  Returns:
    Whether the leaf is sparse.

  Example:
    >>> default_sparse_filter('layer1_0/conv1/kernel', jnp.zeros((3, 3, 4, 4)))
    True
    >>> default_sparse_filter('conv1/kernel', jnp.zeros((3, 3, 3, 4)))
    False
  """
  ndim = len(getattr(leaf, 'shape', ()))
  parts = path.split('/')
  if ndim == 4 and 'shortcut' not in path:
    in_block = any(p.startswith('layer') for p in parts[:-2])
    if in_block and (path.endswith('conv1/kernel') or
                     path.endswith('conv2/kernel')):
      return True
  if ndim == 2 and len(parts) >= 2 and parts[-1] == 'kernel':
    return parts[-2].startswith('hidden_')
  return False


def filter_from_regex(pattern: str, min_ndim: int = 2) -> SparseFilter:
  """Builds a sparse filter from a regular expression over leaf paths.

  Args:
    pattern: regex matched with ``re.search`` against the ``'/'``-joined path.
    min_ndim: leaves with fewer dimensions (biases, norm scales) never match.

  Returns:
    A predicate ``(path, leaf) -> bool``.

  Raises:
    ConfigError: if the pattern does not compile.

  Example:
    >>> f = filter_from_regex(r'dense_\\d+/kernel$')
    >>> f('dense_1/kernel', jnp.zeros((3, 4)))
    True
  """
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f'Invalid sparse-layer regex {pattern!r}: {e}.') from e

  def predicate(path: str, leaf: Any) -> bool:
    ndim = len(getattr(leaf, 'shape', ()))
    return ndim >= min_ndim and compiled.search(path) is not None

  return predicate


def _check_sparsity(sparsity: float, name: str = 'sparsity') -> float:
  sparsity = float(sparsity)
  if not 0.0 <= sparsity < 1.0:
    raise ConfigError(f'{name} must be in [0, 1), got {sparsity}.')
  return sparsity


def keep_count(size: int, sparsity: float) -> int:
  """Number of weights a layer keeps at a given sparsity.

  Args:
    size: number of weights in the layer.
    sparsity: fraction of zeros in ``[0, 1]``.

  Returns:
    ``round((1 - sparsity) * size)`` (Python rounding), clipped to
    ``[0, size]``.

  Example:
    >>> keep_count(1000, 0.75)
    250
  """
  return int(min(max(round((1.0 - float(sparsity)) * size), 0), size))


def _map_selected(fn: Callable[[str, Any], Any], tree: PyTree,
                  sparse_filter: SparseFilter) -> PyTree:
  """Maps ``fn(path, leaf)`` over selected leaves, ``None`` elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: fn(path_to_str(kp), x)
      if sparse_filter(path_to_str(kp), x) else None, tree)


def uniform_sparsities(params: PyTree, sparse_filter: SparseFilter,
                       sparsity: float) -> PyTree:
  """Gives every selected leaf the same sparsity.

  Args:
    params: parameter pytree (arrays or ``ShapeDtypeStruct``).
    sparse_filter: predicate choosing the sparse leaves.
    sparsity: target sparsity in ``[0, 1)``.

  Returns:
    A sparsities pytree: ``sparsity`` at selected leaves, ``None`` elsewhere.

  Raises:
    ConfigError: if ``sparsity`` is outside ``[0, 1)``.

  Example:
    >>> p = {'hidden_0': {'kernel': jnp.ones((4, 4))},
    ...      'head': {'kernel': jnp.ones((4, 2))}}
    >>> uniform_sparsities(p, default_sparse_filter, 0.5)
    {'head': {'kernel': None}, 'hidden_0': {'kernel': 0.5}}
  """
  sparsity = _check_sparsity(sparsity)
  return _map_selected(lambda _, x: sparsity, params, sparse_filter)


def erk_sparsities(params: PyTree, sparse_filter: SparseFilter,
                   sparsity: float) -> PyTree:
  """Erdos-Renyi-Kernel sparsities with the requested overall sparsity.

  A layer of shape ``(d_1, ..., d_k)`` gets density proportional to
  ``sum(d_i) / prod(d_i)``; one factor scales all densities so that the kept
  weights over the selected layers are ``(1 - sparsity)`` of their total.
  Layers whose density would exceed 1 are made dense (sparsity 0) one at a
  time, largest raw density first, and the rest rescaled.

  Args:
    params: parameter pytree (arrays or ``ShapeDtypeStruct``).
    sparse_filter: predicate choosing the sparse leaves.
    sparsity: overall target sparsity over the selected leaves, in ``[0, 1)``.

  Returns:
    A sparsities pytree: a float per selected leaf, ``None`` elsewhere.

  Raises:
    ConfigError: if ``sparsity`` is outside ``[0, 1)``.

  Example:
    >>> p = {'hidden_0': {'kernel': jnp.ones((64, 64))},
    ...      'hidden_1': {'kernel': jnp.ones((64, 4))}}
    >>> s = erk_sparsities(p, default_sparse_filter, 0.9)
    >>> s['hidden_1']['kernel'] < s['hidden_0']['kernel']
    True
  """
  sparsity = _check_sparsity(sparsity)
  selected = [(path, int(np.prod(leaf.shape)), leaf.shape)
              for path, leaf in flatten_with_paths(params)
              if sparse_filter(path, leaf)]
  total = sum(n for _, n, _ in selected)
  raw = {path: sum(shape) / n for path, n, shape in selected}
  dense: set[str] = set()
  target_kept = (1.0 - sparsity) * total
  while True:
    dense_size = sum(n for path, n, _ in selected if path in dense)
    weighted = sum(raw[path] * n for path, n, _ in selected
                   if path not in dense)
    if weighted == 0:
      scale = 0.0
      break
    scale = (target_kept - dense_size) / weighted
    over = [path for path, _, _ in selected
            if path not in dense and scale * raw[path] > 1.0]
    if not over:
      break
    dense.add(max(over, key=lambda p: raw[p]))
  result = {path: 0.0 if path in dense else
            float(min(max(1.0 - scale * raw[path], 0.0), 1.0))
            for path, _, _ in selected}
  return _map_selected(lambda path, _: result[path], params, sparse_filter)


def _keep_count_traced(size: int, sparsity: Sparsity) -> jax.Array:
  """Traced twin of ``keep_count`` for sparsities that are arrays."""
  kept = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * size)
  return jnp.clip(kept, 0, size).astype(jnp.int32)


def _count(size: int, sparsity: Sparsity) -> Union[int, jax.Array]:
  if isinstance(sparsity, (int, float, np.floating, np.integer)):
    return keep_count(size, float(sparsity))
  return _keep_count_traced(size, sparsity)


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

  Example:
    >>> rank_mask([-jnp.array([1., 5., 3.])], 2)
    Array([False,  True,  True], dtype=bool)
  """
  shape = sort_keys[0].shape
  size = int(np.prod(shape)) if shape else 1
  return _settle(list(sort_keys), jnp.zeros(shape, jnp.bool_),
                 jnp.ones(shape, jnp.bool_), jnp.asarray(count, jnp.int32),
                 jnp.asarray(size, jnp.int32))


def _hash_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Pseudo-random uint32 per position from one uint32 seed.

  A murmur3 finalizer over a seeded Weyl sequence. It only breaks ties and
  picks grown positions, where it is as good as threefry, and it compiles in
  a fraction of the time of a full-shape ``jax.random.bits`` per leaf.
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
  return _hash_bits(jax.random.bits(rng, (), jnp.uint32), shape)


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

  Example:
    >>> topk_mask(jnp.array([[0.1, 0.9], [0.5, 0.2]]), 2)
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  keys = [-scores.astype(jnp.float32)]
  if rng is not None:
    keys.append(_random_bits(rng, scores.shape))
  return rank_mask(keys, count)


def _broadcast_sparsities(value: Any, masks: PyTree) -> PyTree:
  """Accepts a scalar sparsity or a sparsities pytree matching ``masks``."""
  if isinstance(value, (int, float, np.floating, np.integer)) or (
      hasattr(value, 'shape') and np.ndim(value) == 0):
    return jax.tree.map(lambda m: None if m is None else value, masks,
                        is_leaf=is_none)
  return value


def magnitude_mask(params: PyTree, sparsities: PyTree) -> PyTree:
  """Keeps, per sparse leaf, exactly the ``keep_count`` largest ``|w|``.

  Args:
    params: parameter pytree.
    sparsities: sparsities pytree (float at sparse leaves, ``None`` at dense
      leaves), e.g. from ``uniform_sparsities``.

  Returns:
    A masks pytree (bool arrays at sparse leaves, ``None`` elsewhere). Ties go
    to the lower flat index, so the result is deterministic.

  Example:
    >>> p = {'hidden_0': {'kernel': jnp.array([[1., -3.], [2., 0.5]])}}
    >>> magnitude_mask(p, {'hidden_0': {'kernel': 0.5}})['hidden_0']['kernel']
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  return jax.tree.map(
      lambda s, w: None if s is None else topk_mask(
          jnp.abs(w), _count(w.size, s)),
      sparsities, params, is_leaf=is_none)


def snip_mask(params: PyTree, grads: PyTree, sparsities: PyTree) -> PyTree:
  """SNIP mask: keeps, per sparse leaf, the largest ``|w * g|``.

  Args:
    params: parameter pytree.
    grads: gradient pytree of the same structure (e.g. of one batch's loss).
    sparsities: sparsities pytree.

  Returns:
    A masks pytree with exact kept counts per sparse leaf.

  Example:
    >>> p = {'hidden_0': {'kernel': jnp.array([1., 2., 3., 4.])}}
    >>> g = {'hidden_0': {'kernel': jnp.array([4., 0., 1., 0.])}}
    >>> snip_mask(p, g, {'hidden_0': {'kernel': 0.5}})['hidden_0']['kernel']
    Array([ True, False,  True, False], dtype=bool)
  """
  return jax.tree.map(
      lambda s, w, g: None if s is None else topk_mask(
          jnp.abs(w * g), _count(w.size, s)),
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

  Example:
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


def apply_mask(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the masked-out weights; dense leaves pass unchanged.

  Args:
    params: parameter pytree.
    masks: masks pytree (``None`` at dense leaves).

  Returns:
    Params with exact zeros where the mask is False.

  Example:
    >>> apply_mask({'w': jnp.array([1., 2.])}, {'w': jnp.array([True, False])})
    {'w': Array([1., 0.], dtype=float32)}
  """
  return jax.tree.map(lambda m, w: w if m is None else bit_select(m, w),
                      masks, params, is_leaf=is_none)


def _drop_and_grow_leaf(seeds: jax.Array, scores: jax.Array, mask: jax.Array,
                        keep: Union[int, jax.Array],
                        total: Union[int, jax.Array], growth: str,
                        grow_scores: Optional[jax.Array]
                        ) -> tuple[jax.Array, jax.Array]:
  """Drop to ``keep`` active weights, then grow to ``total``.

  Returns ``(survivors, new_mask)``: the positions kept by the drop, and the
  mask after growth.
  """
  drop_bits = _hash_bits(seeds[0], mask.shape)
  grow_bits = _hash_bits(seeds[1], mask.shape)
  total = jnp.maximum(total, keep)
  # Inactive positions sort last, so drop only removes active weights; if
  # `keep` exceeds the active count the rest is filled at random.
  kept = rank_mask([jnp.logical_not(mask), -scores.astype(jnp.float32),
                    drop_bits], keep)
  # Kept positions rank first; the remaining `total - keep` slots go to the
  # best zero positions (random order, or largest |g|), just-dropped included.
  if growth == 'gradient':
    grow_keys = [-jnp.abs(grow_scores).astype(jnp.float32), grow_bits]
  else:
    grow_keys = [grow_bits]
  grown = rank_mask([jnp.logical_not(kept)] + grow_keys, total)
  return kept, grown


def _check_growth(growth: str) -> None:
  if growth not in GROWTH_MODES:
    raise ConfigError(
        f'growth must be one of {GROWTH_MODES}, got {growth!r}.')


def drop_and_grow_counts(rng: jax.Array, params: PyTree, scores: PyTree,
                         masks: PyTree, keep_counts: PyTree,
                         total_counts: PyTree, *, growth: str = 'random',
                         grow_scores: Optional[PyTree] = None
                         ) -> tuple[PyTree, PyTree]:
  """``drop_and_grow`` with explicit per-leaf kept counts.

  Args:
    rng: PRNG key.
    params: parameter pytree.
    scores: importance pytree (same structure; read at sparse leaves).
    masks: current masks pytree.
    keep_counts: pytree with an int (or int32 scalar) per sparse leaf: how
      many weights survive the drop; ``None`` at dense leaves.
    total_counts: like ``keep_counts``: how many weights after growth.
    growth: ``'random'`` (SparCL) or ``'gradient'`` (RigL).
    grow_scores: pytree read by ``'gradient'`` growth (e.g. the dense
      gradient); the zero positions with the largest ``|grow_scores|`` grow.

  Returns:
    ``(new_params, new_masks)``; ``new_params`` are zero at every position
    outside the new mask and at every grown position.

  Raises:
    ConfigError: on an unknown growth mode, or gradient growth without scores.

  Example:
    >>> p = {'w': jnp.array([3., 1., 2., 0.])}
    >>> m = {'w': jnp.array([True, True, True, False])}
    >>> _, m2 = drop_and_grow_counts(jax.random.key(0), p, p, m, {'w': 2},
    ...                              {'w': 2})
    >>> m2['w']
    Array([ True, False,  True, False], dtype=bool)
  """
  survivors, new_masks = drop_and_grow_masks(rng, scores, masks, keep_counts,
                                             total_counts, growth=growth,
                                             grow_scores=grow_scores)
  # Grown weights (just-dropped ones included) start from zero.
  return apply_mask(params, survivors), new_masks


def drop_and_grow_masks(rng: jax.Array, scores: PyTree, masks: PyTree,
                        keep_counts: PyTree, total_counts: PyTree, *,
                        growth: str = 'random',
                        grow_scores: Optional[PyTree] = None
                        ) -> tuple[PyTree, PyTree]:
  """The masks of ``drop_and_grow_counts``, without touching the params.

  Args:
    rng: PRNG key (the same key gives the same masks as
      ``drop_and_grow_counts``).
    scores: importance pytree (read at sparse leaves).
    masks: current masks pytree.
    keep_counts: kept count per sparse leaf after the drop.
    total_counts: count per sparse leaf after growth.
    growth: ``'random'`` or ``'gradient'``.
    grow_scores: pytree read by ``'gradient'`` growth.

  Returns:
    ``(survivors, new_masks)``: the positions the drop kept (their weights
    carry on) and the mask after growth (``new_masks & ~survivors`` are the
    grown positions, whose weights restart from zero).

  Raises:
    ConfigError: on an unknown growth mode, or gradient growth without scores.

  Example:
    >>> s = {'w': jnp.array([3., 1., 2., 0.])}
    >>> m = {'w': jnp.array([True, True, True, False])}
    >>> kept, new = drop_and_grow_masks(jax.random.key(0), s, m, {'w': 2},
    ...                                 {'w': 2})
    >>> kept['w']
    Array([ True, False,  True, False], dtype=bool)
  """
  _check_growth(growth)
  if growth == 'gradient' and grow_scores is None:
    raise ConfigError("growth='gradient' needs grow_scores (e.g. gradients).")
  if grow_scores is None:
    grow_scores = jax.tree.map(lambda m: None, masks, is_leaf=is_none)
  num_leaves = len(jax.tree.leaves(masks))
  # One threefry draw seeds every leaf's hash-based random keys.
  seeds = list(jax.random.bits(rng, (max(num_leaves, 1), 2), jnp.uint32))

  def leaf_fn(m, sc, k, t, gs):
    if m is None:
      return None
    return _drop_and_grow_leaf(seeds.pop(0), sc, m, k, t, growth, gs)

  pairs = jax.tree.map(leaf_fn, masks, scores, keep_counts, total_counts,
                       grow_scores, is_leaf=is_none)
  is_pair = lambda x: x is None or isinstance(x, tuple)
  survivors = jax.tree.map(lambda x: None if x is None else x[0], pairs,
                           is_leaf=is_pair)
  new_masks = jax.tree.map(lambda x: None if x is None else x[1], pairs,
                           is_leaf=is_pair)
  return survivors, new_masks


def drop_and_grow(rng: jax.Array, params: PyTree, scores: PyTree,
                  masks: PyTree, prune_sparsity: Any, grow_sparsity: Any, *,
                  growth: str = 'random',
                  grow_scores: Optional[PyTree] = None
                  ) -> tuple[PyTree, PyTree]:
  """Drops the least important weights, then grows new ones.

  Per sparse leaf of ``n`` weights: keep exactly ``keep_count(n, prune)``
  active positions with the highest score (random tie-break; inactive
  positions are never preferred over active ones), then add positions among
  the zeros (just-dropped ones included) until exactly ``keep_count(n, grow)``
  are kept: uniformly at random (``'random'``, SparCL) or by largest
  ``|grow_scores|`` (``'gradient'``, RigL). Jittable; sparsities may be
  traced, counts then use float32 rounding.

  Args:
    rng: PRNG key.
    params: parameter pytree.
    scores: importance pytree of the same structure.
    masks: current masks pytree.
    prune_sparsity: float, 0-d array, or sparsities pytree: the sparsity
      after dropping.
    grow_sparsity: same, after growing; must not exceed ``prune_sparsity``.
    growth: ``'random'`` or ``'gradient'``.
    grow_scores: pytree used by ``'gradient'`` growth.

  Returns:
    ``(new_params, new_masks)``: params zeroed outside the new mask and at
    grown positions, and the new masks.

  Raises:
    ConfigError: on an unknown growth mode, or static ``grow > prune``.

  Example:
    >>> p = {'w': jnp.arange(1., 9.)}
    >>> m = {'w': p['w'] > 4}
    >>> _, m2 = drop_and_grow(jax.random.key(0), p, p, m, 0.75, 0.5)
    >>> int(m2['w'].sum()), bool(m2['w'][-2:].all())
    (4, True)
  """
  _check_growth(growth)
  prune = _broadcast_sparsities(prune_sparsity, masks)
  grow = _broadcast_sparsities(grow_sparsity, masks)

  def counts(s, m):
    if m is None:
      return None
    if isinstance(s, float) and not 0.0 <= s <= 1.0:
      raise ConfigError(f'Sparsities must be in [0, 1], got {s}.')
    return _count(m.size, s)

  keep = jax.tree.map(counts, prune, masks, is_leaf=is_none)
  total = jax.tree.map(counts, grow, masks, is_leaf=is_none)
  for k, t in zip(jax.tree.leaves(keep), jax.tree.leaves(total)):
    if isinstance(k, int) and isinstance(t, int) and t < k:
      raise ConfigError('grow_sparsity must not exceed prune_sparsity.')
  return drop_and_grow_counts(rng, params, scores, masks, keep, total,
                              growth=growth, grow_scores=grow_scores)


def masks_from_filter(params: PyTree, sparse_filter: SparseFilter) -> PyTree:
  """All-True masks at selected leaves, ``None`` elsewhere.

  Args:
    params: parameter pytree.
    sparse_filter: predicate choosing the sparse leaves.

  Returns:
    A masks pytree with every selected weight kept.

  Example:
    >>> masks_from_filter({'hidden_0': {'kernel': jnp.ones((2, 2))}},
    ...                   default_sparse_filter)['hidden_0']['kernel'].all()
    Array(True, dtype=bool)
  """
  return _map_selected(lambda _, w: jnp.ones(w.shape, jnp.bool_), params,
                       sparse_filter)


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

  Example:
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


def sparsities_by_path(sparsities: PyTree) -> dict[str, float]:
  """Flattens a sparsities (or any float) pytree into ``{path: value}``.

  Args:
    sparsities: pytree with floats at some leaves and ``None`` elsewhere.

  Returns:
    A dict from ``'/'``-joined path to float, dense leaves omitted.

  Example:
    >>> sparsities_by_path({'a': {'kernel': 0.5}, 'b': None})
    {'a/kernel': 0.5}
  """
  return {path: float(v) for path, v in flatten_with_paths(sparsities)}


__all__ = [
    'apply_mask', 'default_sparse_filter', 'drop_and_grow',
    'drop_and_grow_counts', 'erk_sparsities', 'filter_from_regex',
    'flatten_with_paths', 'keep_count', 'magnitude_mask', 'masks_from_filter',
    'path_to_str', 'rank_mask', 'snip_mask', 'sparsities_by_path',
    'summarize_sparsity', 'topk_mask', 'uniform_sparsities',
]
