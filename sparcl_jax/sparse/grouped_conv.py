"""Group-balanced sparse convolutions: computed with the kept kernel only.

The convolution twin of :mod:`sparcl_jax.sparse.grouped`. A dense
channels-last kernel ``[*window, C_in, C_out]`` is cut into ``groups``
blocks of ``group`` consecutive output channels; every block keeps the same
number ``k`` of input channels, with every tap of the window. The kept
kernel is stored compactly, ``values`` ``[groups, *window, k, group]``,
beside ``rows`` ``[groups, k]`` (int32: the input channels each block
keeps, the same ``rows`` as a grouped dense layer's). The convolution
gathers each block's kept channels and convolves them with the block's
kernel, so forward and both backward products cost ``k / C_in`` of the
dense ones.

How the blocks run is chosen per backend (``lax.platform_dependent``), by
measurement: on XLA's CPU one small dense convolution per block, through
:func:`~sparcl_jax.models.conv.conv_with_canonical_gradients` so that the
gradients stay canonical convolutions inside the train loop (a 3x3 step at
a quarter of the weights ran 2.1-2.7x faster than the dense one; one
``feature_group_count`` convolution ran 3-100x slower:
``experiments/grouped_conv_probe.py``); elsewhere one ``feature_group_count
= groups`` convolution over the gathered channels, the form cuDNN and TPUs
run well. Both paths give the same results to rounding.

Examples:
  >>> rows = jnp.array([[0], [1]])                  # 2 blocks, k = 1
  >>> values = jnp.ones((2, 1, 1, 1, 1))            # 1x1 window, group 1
  >>> x = jnp.arange(4.).reshape(1, 1, 2, 2)        # NHWC, C_in = 2
  >>> grouped_conv(x, values, rows)
  Array([[[[0., 1.],
           [2., 3.]]]], dtype=float32)
  >>> to_dense(values, rows, 2)[0, 0]               # [C_in, C_out]
  Array([[1., 0.],
         [0., 1.]], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from sparcl_jax.models.conv import conv_with_canonical_gradients
from sparcl_jax.sparse import grouped

Strides = Union[int, Sequence[int]]


def _numbers(ndim: int) -> tuple[str, str, str]:
  spatial = "DHW"[5 - ndim:]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _strides(strides: Strides, n: int) -> tuple[int, ...]:
  return (int(strides),) * n if isinstance(strides, int) else tuple(
      int(s) for s in strides)


def grouped_conv_per_block(x: jax.Array, values: jax.Array, rows: jax.Array,
                           strides: Strides = 1, padding: Any = "SAME",
                           precision: Any = None) -> jax.Array:
  """The grouped convolution as one small dense convolution per block.

  The CPU path of :func:`grouped_conv`: every block's convolution reads its
  ``k`` gathered channels and writes its ``group`` output channels, and
  its gradients are canonical convolutions (fast inside loops on XLA's
  CPU).

  Args:
    x: ``[batch, *spatial, C_in]`` inputs.
    values: ``[groups, *window, k, group]`` kept kernel.
    rows: ``[groups, k]`` int32 kept input channels of each block.
    strides: stride per spatial dimension (or one int for all).
    padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per
      spatial dimension.
    precision: as for ``lax.conv_general_dilated``.

  Returns:
    ``[batch, *spatial_out, groups * group]``.

  Examples:
    >>> grouped_conv_per_block(jnp.ones((1, 4, 4, 3)),
    ...                        jnp.ones((2, 3, 3, 1, 2)),
    ...                        jnp.array([[0], [2]]), strides=2)[0, :, :, 0]
    Array([[9., 6.],
           [6., 4.]], dtype=float32)
  """
  n = x.ndim - 2
  gathered = jnp.take(x, rows, axis=-1)  # [batch, *spatial, groups, k]
  outs = [
      conv_with_canonical_gradients(gathered[..., g, :], values[g],
                                    _strides(strides, n), padding,
                                    dimension_numbers=_numbers(x.ndim),
                                    precision=precision)
      for g in range(values.shape[0])]
  return jnp.concatenate(outs, axis=-1)


def grouped_conv_feature_groups(x: jax.Array, values: jax.Array,
                                rows: jax.Array, strides: Strides = 1,
                                padding: Any = "SAME",
                                precision: Any = None) -> jax.Array:
  """The grouped convolution as one ``feature_group_count`` convolution.

  The default (GPU, TPU) path of :func:`grouped_conv`: the gathered
  channels ``[..., groups * k]`` convolved with the kept kernel laid out
  ``[*window, k, groups * group]``, block ``g``'s input channels feeding
  only its output channels. Arguments and result as
  :func:`grouped_conv_per_block`.

  Args:
    x: ``[batch, *spatial, C_in]`` inputs.
    values: ``[groups, *window, k, group]`` kept kernel.
    rows: ``[groups, k]`` int32 kept input channels of each block.
    strides: stride per spatial dimension (or one int for all).
    padding: ``'SAME'``, ``'VALID'`` or ``(low, high)`` pairs.
    precision: as for ``lax.conv_general_dilated``.

  Returns:
    ``[batch, *spatial_out, groups * group]``.

  Examples:
    >>> grouped_conv_feature_groups(jnp.ones((1, 4, 4, 3)),
    ...                             jnp.ones((2, 3, 3, 1, 2)),
    ...                             jnp.array([[0], [2]]),
    ...                             strides=2)[0, :, :, 0]
    Array([[9., 6.],
           [6., 4.]], dtype=float32)
  """
  n = x.ndim - 2
  groups, k, group = values.shape[0], values.shape[-2], values.shape[-1]
  gathered = jnp.take(x, rows.reshape(-1), axis=-1)  # [..., groups * k]
  kernel = jnp.moveaxis(values, 0, -2).reshape(*values.shape[1:-2], k,
                                               groups * group)
  return lax.conv_general_dilated(gathered, kernel, _strides(strides, n),
                                  padding, dimension_numbers=_numbers(x.ndim),
                                  feature_group_count=groups,
                                  precision=precision)


def grouped_conv(x: jax.Array, values: jax.Array, rows: jax.Array,
                 strides: Strides = 1, padding: Any = "SAME",
                 precision: Any = None) -> jax.Array:
  """``conv(x, to_dense(values, rows, C_in))`` with the kept kernel only.

  Per-block convolutions on CPU (:func:`grouped_conv_per_block`), one
  grouped convolution elsewhere (:func:`grouped_conv_feature_groups`),
  picked when the program is lowered.

  Args:
    x: ``[batch, *spatial, C_in]`` inputs (channels last, 1 to 3 spatial
      dimensions).
    values: ``[groups, *window, k, group]`` kept kernel.
    rows: ``[groups, k]`` int32 kept input channels of each block.
    strides: stride per spatial dimension (or one int for all).
    padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per
      spatial dimension.
    precision: as for ``lax.conv_general_dilated``.

  Returns:
    ``[batch, *spatial_out, groups * group]``.

  Examples:
    >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    >>> rows = grouped.random_rows(jax.random.key(1), 6, 4, 2)
    >>> values = jax.random.normal(jax.random.key(2), (4, 3, 3, 2, 5))
    >>> y = grouped_conv(x, values, rows, strides=2)
    >>> dense = jax.lax.conv_general_dilated(
    ...     x, to_dense(values, rows, 6), (2, 2), 'SAME',
    ...     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    >>> y.shape, bool(jnp.allclose(y, dense, atol=1e-5))
    ((2, 4, 4, 20), True)
  """
  kwargs = dict(strides=strides, padding=padding, precision=precision)
  return lax.platform_dependent(
      x, values, rows,
      cpu=functools.partial(grouped_conv_per_block, **kwargs),
      default=functools.partial(grouped_conv_feature_groups, **kwargs))


def to_dense(values: jax.Array, rows: jax.Array, fan_in: int) -> jax.Array:
  """The dense ``[*window, fan_in, groups * group]`` kernel, zero where not
  kept.

  Args:
    values: ``[groups, *window, k, group]``.
    rows: ``[groups, k]``, distinct within each block.
    fan_in: input channels of the dense kernel.

  Returns:
    The dense kernel.

  Examples:
    >>> to_dense(jnp.ones((1, 2, 1, 2)), jnp.array([[1]]), 2)[1]
    Array([[0., 0.],
           [1., 1.]], dtype=float32)
  """
  groups, group = values.shape[0], values.shape[-1]
  window = values.shape[1:-2]
  dense = jnp.zeros(window + (fan_in, groups, group), values.dtype)
  block = jnp.arange(groups)[:, None]
  # The two index arrays sit next to each other, so their [groups, k] shape
  # takes their place: dense[..., rows, block, :] is [*window, groups, k,
  # group].
  at = (slice(None),) * len(window) + (rows, block)
  dense = dense.at[at].set(jnp.moveaxis(values, 0, len(window)))
  return dense.reshape(window + (fan_in, groups * group))


def from_dense(kernel: jax.Array, rows: jax.Array) -> jax.Array:
  """The kept kernel ``[groups, *window, k, group]`` of a dense kernel.

  Args:
    kernel: ``[*window, fan_in, groups * group]``.
    rows: ``[groups, k]`` kept input channels.

  Returns:
    ``values``.

  Examples:
    >>> kernel = jnp.arange(12.).reshape(2, 3, 2)   # window 2, fan_in 3
    >>> from_dense(kernel, jnp.array([[0, 2]]))[0, :, :, 0]
    Array([[ 0.,  4.],
           [ 6., 10.]], dtype=float32)
  """
  groups = rows.shape[0]
  window = kernel.shape[:-2]
  blocks = kernel.reshape(window + (kernel.shape[-2], groups, -1))
  at = (slice(None),) * len(window) + (rows, jnp.arange(groups)[:, None])
  return jnp.moveaxis(blocks[at], len(window), 0)


def kept_mask(rows: jax.Array, window: Sequence[int], fan_in: int,
              group: int) -> jax.Array:
  """The bool ``[*window, fan_in, groups * group]`` mask of the kept kernel.

  Args:
    rows: ``[groups, k]``.
    window: the kernel's spatial size.
    fan_in: input channels.
    group: output channels per block.

  Returns:
    The mask.

  Examples:
    >>> kept_mask(jnp.array([[1]]), (3, 3), 2, 2).sum((0, 1))
    Array([[0, 0],
           [9, 9]], dtype=int32)
  """
  ones = jnp.ones((rows.shape[0],) + tuple(window) + (rows.shape[1], group),
                  bool)
  return to_dense(ones, rows, fan_in)


def initial_values(key: jax.Array, kernel_init, window: Sequence[int],
                   fan_in: int, rows: jax.Array, group: int,
                   kept_fan_in: bool = True, dtype=jnp.float32) -> jax.Array:
  """The kept kernel ``[groups, *window, k, group]`` a grouped conv starts
  with.

  With ``kept_fan_in`` (the default), drawn as a dense convolution reading
  ``k`` channels would draw its kernel (``kernel_init`` of a ``[*window,
  k, C_out]`` kernel: fan-in ``k * prod(window)``), so each channel's output
  starts with a dense layer's variance; otherwise cut from a dense
  ``[*window, fan_in, C_out]`` kernel, as masking a dense layer gives (see
  :func:`sparcl_jax.sparse.grouped.initial_values` for what that costs).

  Args:
    key: PRNG key.
    kernel_init: a Flax kernel initializer ``(key, shape, dtype)``.
    window: the kernel's spatial size.
    fan_in: input channels of the dense kernel.
    rows: ``[groups, k]`` kept input channels.
    group: output channels per block.
    kept_fan_in: draw at the kept fan-in (else at the dense one).
    dtype: the kernel's dtype.

  Returns:
    ``values``.

  Examples:
    >>> rows = grouped.random_rows(jax.random.key(0), 160, 8, 16)
    >>> init = jax.nn.initializers.lecun_normal()
    >>> kept = initial_values(jax.random.key(1), init, (3, 3), 160, rows, 20)
    >>> cut = initial_values(jax.random.key(1), init, (3, 3), 160, rows, 20,
    ...                      False)
    >>> kept.shape, round(float(kept.var() / cut.var()))   # 160 / 16
    ((8, 3, 3, 16, 20), 10)
  """
  groups, k = rows.shape
  window = tuple(window)
  if not kept_fan_in:
    return from_dense(kernel_init(key, window + (fan_in, groups * group),
                                  dtype), rows)
  kernel = kernel_init(key, window + (k, groups * group), dtype)
  kernel = kernel.reshape(window + (k, groups, group))
  return jnp.moveaxis(kernel, -2, 0)


def magnitude_rows(kernel: jax.Array, group: int, k: int) -> jax.Array:
  """Kept channels of a dense kernel: per block, the ``k`` input channels of
  largest L1 norm over the window's taps and the block's output channels.

  Args:
    kernel: ``[*window, fan_in, fan_out]``.
    group: output channels per block.
    k: channels kept per block.

  Returns:
    ``[groups, k]`` int32.

  Examples:
    >>> kernel = jnp.zeros((3, 3, 4, 2)).at[1, 1, 2, 0].set(5.)
    >>> magnitude_rows(kernel.at[0, 0, 3, 1].set(1.), 1, 1)
    Array([[2],
           [3]], dtype=int32)
  """
  taps = tuple(range(kernel.ndim - 2))
  return grouped.magnitude_rows(jnp.abs(kernel).sum(taps), group, k)


def kept_block_scores(values: jax.Array, grads: jax.Array | None = None,
                      importance_lambda: float = 0.0) -> jax.Array:
  """SparCL's drop score of each kept channel: ``|W| + lambda |g|`` summed
  over the window's taps and the block's output channels.

  Args:
    values: ``[groups, *window, k, group]`` kept kernel.
    grads: their gradient (same shape), or None.
    importance_lambda: weight of the gradient term.

  Returns:
    ``[groups, k]``.

  Examples:
    >>> kept_block_scores(jnp.ones((2, 3, 3, 4, 5))).shape
    (2, 4)
    >>> float(kept_block_scores(jnp.ones((2, 3, 3, 4, 5)))[0, 0])
    45.0
  """
  return grouped.kept_block_scores(values, grads, importance_lambda)
