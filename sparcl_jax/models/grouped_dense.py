"""Dense layers with group-balanced sparse kernels, for Linen and NNX.

Drop-in replacements of ``nn.Dense`` / ``nnx.Linear`` whose kernel keeps, in
every block of ``group`` consecutive output units, the same number of input
rows (see :mod:`sparcl_jax.sparse.grouped`): parameters ``values`` ``[groups, k,
group]`` (and ``bias``), trained by any optimizer as an ordinary pytree; the
kept rows live outside the parameters (the Linen collection ``'sparsity'``,
NNX :class:`KeptRows` variables): ``rows`` ``[groups, k]`` (the indices the
product gathers) and ``kept`` ``[groups, fan_in]`` (their membership), and
change only by drop-and-grow
(:func:`sparcl_jax.sparse.grouped_tdm.grouped_tdm`).

Examples:
  >>> layer = GroupedSparseDense(features=4, group=2, sparsity=0.5)
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 6)))
  >>> variables['params']['values'].shape, variables['sparsity']['rows'].shape
  ((2, 3, 2), (2, 3))
  >>> variables['sparsity']['kept'].sum(-1)   # 3 of 6 input rows per block
  Array([3, 3], dtype=int32)
  >>> layer.apply(variables, jnp.ones((5, 6))).shape
  (5, 4)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from sparcl_jax.sparse import grouped

Initializer = Callable[..., Any]


class GroupedSparseDense(nn.Module):
  """A Linen dense layer computing with its kept weights only.

  Attributes:
    features: output units.
    group: output units per block (must divide ``features``).
    sparsity: share of the kernel pruned; each block keeps
      ``round((1 - sparsity) * fan_in)`` input rows.
    use_bias: add a bias.
    kernel_init: initializer of the kept weights.
    bias_init: initializer of the bias.
    kept_fan_in_init: draw the kept weights as a dense layer reading ``k``
      inputs would (``kernel_init`` at the kept fan-in, so a unit's output
      starts with a dense layer's variance); False cuts them from a dense
      ``[fan_in, features]`` kernel, as masking a dense layer does (see
      :func:`sparcl_jax.sparse.grouped.initial_values`).

  Examples:
    >>> layer = sc.GroupedSparseDense(features=4, group=2, sparsity=0.5)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 6)))
    >>> variables['params']['values'].shape  # 2 blocks keep 3 of 6 rows
    (2, 3, 2)
    >>> layer.apply(variables, jnp.ones((5, 6))).shape
    (5, 4)
  """

  features: int
  group: int
  sparsity: float
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  kept_fan_in_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    rows, groups, k = kept_rows_variables(self, fan_in, self.features,
                                          self.group, self.sparsity)

    def init_values(key, shape, dtype=jnp.float32):
      del shape
      return grouped.initial_values(key, self.kernel_init, fan_in,
                                    rows.value, self.group,
                                    self.kept_fan_in_init, dtype)

    values = self.param("values", init_values, (groups, k, self.group))
    y = grouped.grouped_matmul(x, values, rows.value)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class KeptRows(nnx.Variable):
  """The kept input rows of a :class:`GroupedSparseLinear` (not a Param:
  optimizers filtering on ``nnx.Param`` leave it alone).

  Examples:
    >>> from flax import nnx
    >>> layer = sc.GroupedSparseLinear(6, 4, group=2, sparsity=0.5,
    ...                                rngs=nnx.Rngs(0))
    >>> kept_rows = nnx.state(layer, sc.KeptRows)  # grouped_tdm's kept_rows
    >>> sorted(kept_rows.keys()), kept_rows['rows'].value.shape
    (['kept', 'rows'], (2, 3))
  """


def kept_rows_variables(module: nn.Module, fan_in: int, features: int,
                        group: int, sparsity: float):
  """Declares a Linen layer's kept input rows in its ``'sparsity'`` collection.

  ``rows`` ``[groups, k]`` are the indices the product gathers; ``kept``
  ``[groups, fan_in]`` their membership, which drop-and-grow and reports
  read (and where the dense fan-in is recorded).

  Args:
    module: the layer, inside its ``nn.compact`` call.
    fan_in: input rows (channels) of the dense layer.
    features: output units.
    group: output units per block (must divide ``features``).
    sparsity: share of the kernel pruned.

  Returns:
    ``(rows variable, number of blocks, kept rows per block)``.

  Examples:
    >>> layer = GroupedSparseDense(features=4, group=2, sparsity=0.5)
    >>> v = layer.init(jax.random.key(0), jnp.ones((1, 6)))
    >>> sorted(v["sparsity"])
    ['kept', 'rows']
  """
  groups = grouped.check_group(features, group)
  k = grouped.kept_rows_per_group(fan_in, sparsity)
  rows = module.variable(
      "sparsity", "rows",
      lambda: grouped.random_rows(module.make_rng("params"), fan_in, groups,
                                  k))
  module.variable("sparsity", "kept",
                  lambda: grouped.kept_membership(rows.value, fan_in))
  return rows, groups, k


def nnx_kept_rows(rngs: nnx.Rngs, in_features: int, out_features: int,
                  group: int, sparsity: float):
  """An NNX layer's kept input rows and their membership, drawn at random.

  Args:
    rngs: NNX RNG streams (one ``params`` draw).
    in_features: input rows (channels) of the dense layer.
    out_features: output units.
    group: output units per block (must divide ``out_features``).
    sparsity: share of the kernel pruned.

  Returns:
    ``(rows, kept)`` as :class:`KeptRows`: ``[groups, k]`` and
    ``[groups, in_features]``.

  Examples:
    >>> rows, kept = nnx_kept_rows(nnx.Rngs(0), 6, 4, 2, 0.5)
    >>> rows.value.shape, kept.value.sum(-1).tolist()
    ((2, 3), [3, 3])
  """
  groups = grouped.check_group(out_features, group)
  k = grouped.kept_rows_per_group(in_features, sparsity)
  rows = KeptRows(grouped.random_rows(rngs.params(), in_features, groups, k))
  return rows, KeptRows(grouped.kept_membership(rows.value, in_features))


class GroupedSparseLinear(nnx.Module):
  """An NNX linear layer computing with its kept weights only.

  Args:
    in_features: input units.
    out_features: output units.
    group: output units per block (must divide ``out_features``).
    sparsity: share of the kernel pruned.
    rngs: NNX RNG streams (``params`` draws the kept rows and weights).
    use_bias: add a bias.
    kept_fan_in_init: draw the kept weights (LeCun normal) at the kept
      fan-in ``k`` rather than cutting them from a dense kernel (as
      :class:`GroupedSparseDense`).

  Examples:
    >>> layer = GroupedSparseLinear(6, 4, group=2, sparsity=0.5,
    ...                             rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 6))).shape, layer.rows.value.shape
    ((5, 4), (2, 3))
  """

  def __init__(self, in_features: int, out_features: int, *, group: int,
               sparsity: float, rngs: nnx.Rngs, use_bias: bool = True,
               kept_fan_in_init: bool = True):
    self.rows, self.kept = nnx_kept_rows(rngs, in_features, out_features,
                                         group, sparsity)
    self.values = nnx.Param(grouped.initial_values(
        rngs.params(), nnx.initializers.lecun_normal(), in_features,
        self.rows.value, group, kept_fan_in_init))
    self.bias = nnx.Param(jnp.zeros(out_features)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = grouped.grouped_matmul(x, self.values.value, self.rows.value)
    if self.bias is not None:
      y = y + self.bias.value
    return y
