"""Drop-and-grow: the mask update of dynamic sparse training.

Per sparse leaf, the drop keeps exactly a given number of the active weights
(the highest scores) and the growth then adds zero positions (just-dropped
ones included) until the leaf holds exactly another given number: at random
(SET, SparCL) or where the gradient is largest (RigL). Every count is exact
and every tie is broken at random, from one PRNG key for the whole pytree.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.masks import apply_mask
from sparcl_jax.paths import is_none
from sparcl_jax.sparse.selection import hash_bits, rank_mask
from sparcl_jax.sparse.sparsity import keep_count_traceable

PyTree = Any

GROWTH_MODES = ('random', 'gradient')


def _broadcast_sparsities(value: Any, masks: PyTree) -> PyTree:
  """Accepts a scalar sparsity or a sparsities pytree matching ``masks``."""
  if isinstance(value, (int, float, np.floating, np.integer)) or (
      hasattr(value, 'shape') and np.ndim(value) == 0):
    return jax.tree.map(lambda m: None if m is None else value, masks,
                        is_leaf=is_none)
  return value



def _highest_first(scores: Optional[jax.Array]) -> list[jax.Array]:
  """Sort key putting the highest score first; none for no preference."""
  return [] if scores is None else [-scores.astype(jnp.float32)]


def _drop_and_grow_leaf(seeds: jax.Array, mask: jax.Array,
                        keep: Union[int, jax.Array],
                        total: Union[int, jax.Array],
                        drop_scores: Optional[jax.Array],
                        grow_scores: Optional[jax.Array]
                        ) -> tuple[jax.Array, jax.Array]:
  """Drop to ``keep`` active weights, then grow to ``total``.

  Returns ``(survivors, new_mask)``: the positions kept by the drop, and the
  mask after growth.
  """
  drop_bits = hash_bits(seeds[0], mask.shape)
  grow_bits = hash_bits(seeds[1], mask.shape)
  total = jnp.maximum(total, keep)
  # Inactive positions sort last, so drop only removes active weights; if
  # `keep` exceeds the active count the rest is filled at random.
  kept = rank_mask([jnp.logical_not(mask)] + _highest_first(drop_scores)
                   + [drop_bits], keep)
  # Kept positions rank first; the remaining `total - keep` slots go to the
  # best-scored zero positions, just-dropped included. Without a score the
  # random bits alone order them, one ranking key cheaper than a constant.
  grown = rank_mask([jnp.logical_not(kept)] + _highest_first(grow_scores)
                    + [grow_bits], total)
  return kept, grown


def drop_and_grow_by_scores(rng: jax.Array, masks: PyTree,
                            keep_counts: PyTree, total_counts: PyTree, *,
                            drop_scores: Optional[PyTree] = None,
                            grow_scores: Optional[PyTree] = None
                            ) -> tuple[PyTree, PyTree]:
  """Drop-and-grow ranked by two score pytrees, higher scores first.

  Per sparse leaf: keep exactly ``keep_counts`` active positions, those with
  the highest ``drop_scores``, then add the zero positions (just-dropped ones
  included) with the highest ``grow_scores`` until exactly ``total_counts``
  are kept. Ties are broken at random; a score pytree that is ``None``, or
  ``None`` at a leaf, expresses no preference, so every choice there is
  uniformly random. This is the engine under ``drop_and_grow_masks`` and
  TDM's score rules (``sparcl_jax.sparse.rules``).

  Args:
    rng: PRNG key.
    masks: current masks pytree.
    keep_counts: pytree with an int (or int32 scalar) per sparse leaf: how
      many weights survive the drop; ``None`` at dense leaves.
    total_counts: like ``keep_counts``: how many weights after growth.
    drop_scores: pytree read at sparse leaves, or None.
    grow_scores: pytree read at sparse leaves, or None.

  Returns:
    ``(survivors, new_masks)``: the positions the drop kept and the mask
    after growth (``new_masks & ~survivors`` are the grown positions).

  Examples:
    >>> m = {'w': jnp.array([True, True, False, False])}
    >>> kept, new = drop_and_grow_by_scores(
    ...     jax.random.key(0), m, {'w': 1}, {'w': 2},
    ...     drop_scores={'w': jnp.array([1., 5., 0., 0.])},
    ...     grow_scores={'w': jnp.array([0., 0., 3., 4.])})
    >>> new['w']
    Array([False,  True, False,  True], dtype=bool)
  """
  no_scores = jax.tree.map(lambda m: None, masks, is_leaf=is_none)
  drop_scores = no_scores if drop_scores is None else drop_scores
  grow_scores = no_scores if grow_scores is None else grow_scores
  num_leaves = len(jax.tree.leaves(masks))
  # One threefry draw seeds every leaf's hash-based random keys.
  seeds = list(jax.random.bits(rng, (max(num_leaves, 1), 2), jnp.uint32))

  def leaf_fn(m, k, t, ds, gs):
    if m is None:
      return None
    return _drop_and_grow_leaf(seeds.pop(0), m, k, t, ds, gs)

  pairs = jax.tree.map(leaf_fn, masks, keep_counts, total_counts, drop_scores,
                       grow_scores, is_leaf=is_none)
  is_pair = lambda x: x is None or isinstance(x, tuple)
  survivors = jax.tree.map(lambda x: None if x is None else x[0], pairs,
                           is_leaf=is_pair)
  new_masks = jax.tree.map(lambda x: None if x is None else x[1], pairs,
                           is_leaf=is_pair)
  return survivors, new_masks


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

  Examples:
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

  Examples:
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
  ranked_growth = None
  if growth == 'gradient':
    ranked_growth = jax.tree.map(
        lambda m, g: None if m is None else jnp.abs(g), masks, grow_scores,
        is_leaf=is_none)
  return drop_and_grow_by_scores(rng, masks, keep_counts, total_counts,
                                 drop_scores=scores,
                                 grow_scores=ranked_growth)


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

  Examples:
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
    return keep_count_traceable(m.size, s)

  keep = jax.tree.map(counts, prune, masks, is_leaf=is_none)
  total = jax.tree.map(counts, grow, masks, is_leaf=is_none)
  for k, t in zip(jax.tree.leaves(keep), jax.tree.leaves(total)):
    if isinstance(k, int) and isinstance(t, int) and t < k:
      raise ConfigError('grow_sparsity must not exceed prune_sparsity.')
  return drop_and_grow_counts(rng, params, scores, masks, keep, total,
                              growth=growth, grow_scores=grow_scores)



__all__ = ['GROWTH_MODES', 'drop_and_grow', 'drop_and_grow_by_scores',
           'drop_and_grow_counts', 'drop_and_grow_masks']
