"""A convolution whose gradients XLA's CPU backend runs fast inside loops.

XLA's CPU compiler runs a convolution through Eigen's fast kernel only when
its dimension numbers are "canonical" (batch, spatial..., feature for the
input and output; spatial..., in, out for the kernel). The gradients JAX
derives for an ``NHWC``/``HWIO`` convolution are not: the input gradient
reads the kernel as ``01oi`` and the kernel gradient treats the input's
channels as its batch (``f01b_i01o->01bf``). XLA's CPU pass that rewrites
such convolutions into canonical ones (``ConvCanonicalization``) visits only
the top-level computation, so inside a ``lax.scan``, ``while_loop`` or
``cond`` body they fall back to a naive loop nest: a ResNet-18 nf 20 SGD
step took 3954 ms inside a one-trip ``while_loop`` against 207 ms jitted
alone (``experiments/conv_in_loops.py``; jax-ml/jax issue 12868). Every
train step of this library runs inside such loops.

``conv_with_canonical_gradients`` computes the same convolution and writes
both gradients as canonical convolutions of transposed operands (the kind
of rewrite the CPU pass applies at the top level), so a train step runs at
the speed of a bare jitted step wherever it sits. The rewrite is lowered on
CPU only (``lax.platform_dependent``); other backends get JAX's own
gradients, whose convolutions their compilers take in any layout.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

def _channels_last_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """``NHWC``/``HWIO``/``NHWC`` dimension numbers for ``ndim``-d inputs."""
  spatial = "DHW"[5 - ndim:]
  lhs = "N" + spatial + "C"
  return lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim,
                                    (lhs, spatial + "IO", lhs))


def _conv(x, w, strides, padding, lhs_dilation=None, rhs_dilation=None,
          precision=None):
  return lax.conv_general_dilated(
      x, w, strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=_channels_last_numbers(x.ndim), precision=precision)


def _canonical_gradients(strides, padding, rhs_dilation, precision, x, w, g):
  """Both gradients of a channels-last convolution, as canonical convs."""
  n = x.ndim - 2
  pad_x, pad_w = [], []
  for size, k, out, s, d, (lo, _) in zip(x.shape[1:-1], w.shape[:n],
                                         g.shape[1:-1], strides,
                                         rhs_dilation, padding):
    k_dilated = (k - 1) * d + 1
    # The input gradient is a full correlation of the stride-dilated output
    # gradient with the flipped kernel; the kernel gradient correlates the
    # input with the output gradient, dropping rows the forward pass never
    # reached when the stride does not divide the padded size.
    pad_x.append((k_dilated - 1 - lo, size - 1 - (out - 1) * s + lo))
    pad_w.append((lo, k_dilated + (out - 1) * s - size - lo))
  # Kernel with its in/out axes swapped, flipped: HWIO again.
  w_flipped = jnp.flip(w, tuple(range(n))).swapaxes(n, n + 1)
  grad_x = _conv(g, w_flipped, (1,) * n, pad_x, lhs_dilation=strides,
                 rhs_dilation=rhs_dilation, precision=precision)
  # Channels become the batch and the batch the features: [C_in, ..., B]
  # convolved with the output gradient read as a kernel [..., B, C_out].
  x_by_channel = jnp.moveaxis(x, (0, n + 1), (n + 1, 0))
  g_as_kernel = jnp.moveaxis(g, 0, n)
  grad_w = _conv(x_by_channel, g_as_kernel, rhs_dilation, pad_w,
                 rhs_dilation=strides, precision=precision)
  return grad_x, jnp.moveaxis(grad_w, 0, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_canonical_vjp(x, w, strides, padding, rhs_dilation, precision):
  return _conv(x, w, strides, padding, rhs_dilation=rhs_dilation,
               precision=precision)


def _forward(x, w, strides, padding, rhs_dilation, precision):
  return _conv_canonical_vjp(x, w, strides, padding, rhs_dilation,
                             precision), (x, w)


def _backward(strides, padding, rhs_dilation, precision, residuals, g):
  x, w = residuals

  def jax_gradients(x, w, g):
    _, vjp = jax.vjp(
        lambda x, w: _conv(x, w, strides, padding, rhs_dilation=rhs_dilation,
                           precision=precision), x, w)
    return vjp(g)

  canonical = functools.partial(_canonical_gradients, strides, padding,
                                rhs_dilation, precision)
  return lax.platform_dependent(x, w, g, cpu=canonical,
                                default=jax_gradients)


_conv_canonical_vjp.defvjp(_forward, _backward)


def conv_with_canonical_gradients(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
    padding: Any, lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Any = None, feature_group_count: int = 1,
    batch_group_count: int = 1, precision: Any = None,
    preferred_element_type: Any = None, out_sharding: Any = None
) -> jax.Array:
  """``lax.conv_general_dilated`` whose gradients are fast in loops on CPU.

  A drop-in for ``lax.conv_general_dilated`` (and for the
  ``conv_general_dilated`` argument of ``flax.linen.Conv`` and
  ``flax.nnx.Conv``). Channels-last convolutions (``NHWC``/``HWIO``, the
  Flax default; 1 to 3 spatial dimensions) with one feature group and no
  input dilation get the rewritten gradients described in the module
  docstring; any other call is passed to ``lax.conv_general_dilated``
  unchanged. Values and gradients are bit for bit those of
  ``lax.conv_general_dilated`` in the cases tested.

  Args:
    lhs: input, ``[batch, spatial..., in_features]``.
    rhs: kernel, ``[spatial..., in_features, out_features]``.
    window_strides: stride per spatial dimension.
    padding: ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per
      spatial dimension.
    lhs_dilation: input dilation (transposed convolutions): passed through.
    rhs_dilation: kernel dilation per spatial dimension.
    dimension_numbers: as for ``lax.conv_general_dilated``.
    feature_group_count: grouped convolutions are passed through.
    batch_group_count: passed through when not 1.
    precision: as for ``lax.conv_general_dilated``.
    preferred_element_type: passed through when set.
    out_sharding: passed through when set (``flax.nnx.Conv`` passes None).

  Returns:
    The convolution's output, ``[batch, spatial..., out_features]``.

  Examples:
    >>> import flax.linen as nn
    >>> conv = nn.Conv(8, (3, 3),
    ...                conv_general_dilated=conv_with_canonical_gradients)
    >>> v = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> conv.apply(v, jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 8)
  """
  n = lhs.ndim - 2
  # lax reads dimension_numbers=None as channels-first: passed through.
  channels_last = (1 <= n <= 3 and dimension_numbers is not None and
                   lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                              dimension_numbers)
                   == _channels_last_numbers(lhs.ndim))
  plain = (channels_last and feature_group_count == 1 and
           batch_group_count == 1 and preferred_element_type is None and
           out_sharding is None and
           all(d == 1 for d in (lhs_dilation or (1,) * n)))
  if not plain:
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **extra)
  strides = tuple(int(s) for s in window_strides)
  rhs_dilation = tuple(int(d) for d in (rhs_dilation or (1,) * n))
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:n], rhs_dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:-1], dilated, strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_canonical_vjp(lhs, rhs, strides, padding, rhs_dilation,
                             precision)


__all__ = ["conv_with_canonical_gradients"]
