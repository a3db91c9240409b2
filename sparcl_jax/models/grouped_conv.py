"""Convolutions with group-balanced sparse kernels, for Linen and NNX.

Drop-in replacements of ``nn.Conv`` / ``nnx.Conv`` (channels last) whose
kernel keeps, in every block of ``group`` consecutive output channels, the
same number of input channels with every tap of the window (see
:mod:`sparcl_jax.sparse.grouped_conv`): parameters ``values`` ``[groups,
*kernel_size, k, group]`` (and ``bias``), trained by any optimizer as an
ordinary pytree; the kept channels live outside the parameters, as for
:class:`~sparcl_jax.GroupedSparseDense` (the Linen collection
``'sparsity'``, NNX :class:`~sparcl_jax.KeptRows` variables): ``rows``
``[groups, k]`` (the channels the convolution gathers) and ``kept``
``[groups, C_in]`` (their membership).

Examples:
  >>> layer = GroupedSparseConv(features=4, kernel_size=(3, 3), group=2,
  ...                           sparsity=0.5)
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 6)))
  >>> variables['params']['values'].shape, variables['sparsity']['rows'].shape
  ((2, 3, 3, 3, 2), (2, 3))
  >>> variables['sparsity']['kept'].sum(-1)   # 3 of 6 input channels a block
  Array([3, 3], dtype=int32)
  >>> layer.apply(variables, jnp.ones((5, 8, 8, 6))).shape
  (5, 8, 8, 4)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from sparcl_jax.models.grouped_dense import kept_rows_variables, nnx_kept_rows
from sparcl_jax.sparse import grouped_conv

Initializer = Callable[..., Any]


class GroupedSparseConv(nn.Module):
  """A Linen convolution computing with its kept kernel only.

  Attributes:
    features: output channels.
    kernel_size: the window, e.g. ``(3, 3)``.
    group: output channels per block (must divide ``features``).
    sparsity: share of the kernel pruned; each block keeps
      ``round((1 - sparsity) * C_in)`` input channels (all taps).
    strides: stride per spatial dimension (or one int for all).
    padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per
      spatial dimension.
    use_bias: add a bias.
    kernel_init: initializer of the kept kernel.
    bias_init: initializer of the bias.
    kept_fan_in_init: draw the kept kernel as a dense convolution reading
      ``k`` channels would (fan-in ``k * prod(kernel_size)``); False cuts it
      from a dense kernel (see
      :func:`sparcl_jax.sparse.grouped_conv.initial_values`).

  Examples:
    >>> layer = sc.GroupedSparseConv(4, (3, 3), group=2, sparsity=0.5)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 6)))
    >>> variables['params']['values'].shape  # 3 of 6 channels, all taps
    (2, 3, 3, 3, 2)
    >>> layer.apply(variables, jnp.ones((5, 8, 8, 6))).shape
    (5, 8, 8, 4)
  """

  features: int
  kernel_size: Sequence[int]
  group: int
  sparsity: float
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "SAME"
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  kept_fan_in_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    window = tuple(self.kernel_size)
    rows, groups, k = kept_rows_variables(self, fan_in, self.features,
                                          self.group, self.sparsity)

    def init_values(key, shape, dtype=jnp.float32):
      del shape
      return grouped_conv.initial_values(key, self.kernel_init, window,
                                         fan_in, rows.value, self.group,
                                         self.kept_fan_in_init, dtype)

    values = self.param("values", init_values,
                        (groups,) + window + (k, self.group))
    y = grouped_conv.grouped_conv(x, values, rows.value, self.strides,
                                  self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class GroupedSparseConvNNX(nnx.Module):
  """An NNX convolution computing with its kept kernel only.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: the window, e.g. ``(3, 3)``.
    group: output channels per block (must divide ``out_features``).
    sparsity: share of the kernel pruned.
    rngs: NNX RNG streams (``params`` draws the kept channels and kernel).
    strides: stride per spatial dimension (or one int for all).
    padding: ``'SAME'``, ``'VALID'`` or ``(low, high)`` pairs.
    use_bias: add a bias.
    kept_fan_in_init: draw the kept kernel (LeCun normal) at the kept
      fan-in ``k * prod(kernel_size)`` rather than cutting it from a dense
      kernel (as :class:`GroupedSparseConv`).

  Examples:
    >>> layer = GroupedSparseConvNNX(6, 4, (3, 3), group=2, sparsity=0.5,
    ...                              strides=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 8, 8, 6))).shape, layer.rows.value.shape
    ((5, 4, 4, 4), (2, 3))
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Sequence[int], *, group: int, sparsity: float,
               rngs: nnx.Rngs, strides: Union[int, Sequence[int]] = 1,
               padding: Any = "SAME", use_bias: bool = True,
               kept_fan_in_init: bool = True):
    self.strides, self.padding = strides, padding
    self.rows, self.kept = nnx_kept_rows(rngs, in_features, out_features,
                                         group, sparsity)
    self.values = nnx.Param(grouped_conv.initial_values(
        rngs.params(), nnx.initializers.lecun_normal(), tuple(kernel_size),
        in_features, self.rows.value, group, kept_fan_in_init))
    self.bias = nnx.Param(jnp.zeros(out_features)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = grouped_conv.grouped_conv(x, self.values.value, self.rows.value,
                                  self.strides, self.padding)
    if self.bias is not None:
      y = y + self.bias.value
    return y
