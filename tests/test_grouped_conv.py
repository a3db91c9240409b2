"""Grouped sparse convolutions: the masked dense conv's numbers, kept kernel
only, canonical convolutions in CPU loops, Linen and NNX alike."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import sparcl_jax as sc
from sparcl_jax.sparse import grouped, grouped_conv as gc
from test_conv import _CANONICAL, _non_canonical_convolutions

DN = ("NHWC", "HWIO", "NHWC")
PATHS = {"dispatched": gc.grouped_conv, "per_block": gc.grouped_conv_per_block,
         "feature_groups": gc.grouped_conv_feature_groups}
# (input shape, window, stride, group, groups, k) per case, all SAME.
CASES = [
    ((2, 8, 8, 6), (3, 3), 1, 2, 4, 3),
    ((2, 9, 9, 10), (3, 3), 2, 4, 3, 2),  # stride leaves a row unread
    ((3, 8, 8, 8), (1, 1), 2, 8, 1, 4),  # a shortcut: one block
]


@functools.partial(jax.jit, static_argnums=range(5))
def _case(shape, window, groups, group, k):
  kx, kr, kv = jax.random.split(jax.random.key(sum(shape) + k), 3)
  x = jax.random.normal(kx, shape)
  rows = grouped.random_rows(kr, shape[-1], groups, k)
  values = jax.random.normal(kv, (groups,) + window + (k, group))
  return x, rows, values


@pytest.mark.parametrize("shape,window,stride,group,groups,k", CASES)
def test_values_and_both_gradients_are_the_masked_dense_convs(
    shape, window, stride, group, groups, k):
  x, rows, values = _case(shape, window, groups, group, k)
  g = jax.random.normal(
      jax.random.key(7), shape[:1] + tuple(-(-s // stride) for s in shape[1:3])
      + (groups * group,))

  @jax.jit  # one program for every path: op by op is many times slower
  def run(x, values, rows, g):
    def dense(x, kernel):
      return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                      dimension_numbers=DN)

    y, vjp = jax.vjp(dense, x, gc.to_dense(values, rows, shape[-1]))
    gx, gkernel = vjp(g)
    out = {"dense": (y, gx, gc.from_dense(gkernel, rows))}
    for path, conv in PATHS.items():
      y, vjp = jax.vjp(lambda x, v, conv=conv: conv(x, v, rows, stride,
                                                   "SAME"), x, values)
      out[path] = (y,) + vjp(g)
    return out

  out = run(x, values, rows, g)
  want = out.pop("dense")
  assert sorted(out) == sorted(PATHS)
  for path, got in out.items():
    for name, a, b in zip(("value", "input gradient", "values gradient"),
                          got, want):
      assert a.shape == b.shape, (path, name)
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                 atol=2e-5, err_msg=f"{path}: {name}")


def test_to_dense_zeros_exactly_the_pruned_weights():
  _, rows, values = _case((1, 1, 1, 10), (3, 3), 5, 4, 3)  # 5 blocks of 4
  dense = np.asarray(jax.jit(gc.to_dense, static_argnums=2)(values, rows, 10))
  mask = np.asarray(jax.jit(gc.kept_mask, static_argnums=(1, 2, 3))(
      rows, (3, 3), 10, 4))
  assert dense.shape == mask.shape == (3, 3, 10, 20)
  assert (dense[~mask] == 0.0).all()
  assert (dense[mask] != 0.0).all()
  # Exactly k channels, all 9 taps, per output channel; the round trip is
  # bit for bit.
  np.testing.assert_array_equal(mask.sum((0, 1, 2)), np.full(20, 9 * 3))
  np.testing.assert_array_equal(mask.any((0, 1)).sum(0), np.full(20, 3))
  np.testing.assert_array_equal(np.asarray(jax.jit(gc.from_dense)(dense,
                                                                  rows)),
                                np.asarray(values))


@pytest.mark.parametrize("sparsity,k", [(0.75, 20), (0.9, 8), (0.95, 4)])
def test_layer_keeps_exactly_k_distinct_channels_per_block(sparsity, k):
  layer = sc.GroupedSparseConv(40, (3, 3), group=10, sparsity=sparsity)
  variables = jax.eval_shape(layer.init, jax.random.key(0),
                             jnp.ones((1, 4, 4, 80)))
  assert variables["params"]["values"].shape == (4, 3, 3, k, 10)
  variables = jax.jit(layer.init)(jax.random.key(0), jnp.ones((1, 4, 4,
                                                                80)))
  rows = np.asarray(variables["sparsity"]["rows"])
  assert rows.shape == (4, k)
  assert all(len(set(r)) == k for r in rows)
  np.testing.assert_array_equal(
      np.asarray(variables["sparsity"]["kept"]).sum(-1), np.full(4, k))


def test_no_pruning_is_nn_conv():
  conv = nn.Conv(8, (3, 3), strides=2, use_bias=False)
  layer = sc.GroupedSparseConv(8, (3, 3), group=4, sparsity=0.0, strides=2,
                               use_bias=False)

  @jax.jit
  def run():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    kernel = conv.init(jax.random.key(1), x)["params"]["kernel"]
    variables = layer.init(jax.random.key(2), x)
    rows = variables["sparsity"]["rows"]
    params = {"values": gc.from_dense(kernel, rows)}
    return (rows, layer.apply({**variables, "params": params}, x),
            conv.apply({"params": {"kernel": kernel}}, x))

  rows, got, want = run()
  np.testing.assert_array_equal(np.asarray(rows), np.tile(np.arange(6),
                                                          (2, 1)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-5)


def test_linen_and_nnx_layers_agree():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
  twin = sc.GroupedSparseConvNNX(6, 8, (3, 3), group=2, sparsity=0.5,
                                 strides=2, rngs=nnx.Rngs(3))
  layer = sc.GroupedSparseConv(8, (3, 3), group=2, sparsity=0.5, strides=2)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert twin.values.value.shape == variables["params"]["values"].shape
  assert isinstance(twin.rows, sc.KeptRows)
  variables = {
      "params": {"values": twin.values.value, "bias": twin.bias.value + 0.5},
      "sparsity": {"rows": twin.rows.value, "kept": twin.kept.value}}
  twin.bias.value = twin.bias.value + 0.5
  np.testing.assert_array_equal(
      np.asarray(jax.jit(layer.apply)(variables, x)),
      np.asarray(nnx.jit(lambda twin, x: twin(x))(twin, x)))


def test_kept_fan_in_init_gives_dense_output_variance():
  # Drawn at fan-in k * 9, each output channel starts with the variance of
  # a dense LeCun conv (1 for unit inputs); cut from a dense kernel, k / C.
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 80))
  out = {}
  for kept in (True, False):
    layer = sc.GroupedSparseConv(80, (3, 3), group=20, sparsity=0.9,
                                 padding="VALID", kept_fan_in_init=kept)
    out[kept] = float(jax.jit(lambda x, layer=layer: layer.apply(
        layer.init(jax.random.key(1), x), x).var())(x))
  assert 0.8 < out[True] < 1.25
  assert 0.08 < out[False] < 0.125


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="checks XLA:CPU's compiled program")
def test_cpu_train_step_in_a_loop_has_only_canonical_convolutions():
  rows = jnp.array([[0, 3], [1, 2]])  # 2 blocks of 2 output channels

  def as_lax_conv(groups_path):
    # test_conv's loop of train steps, through the grouped conv of the kept
    # part of its dense kernel.
    def conv(x, w, strides, padding, dimension_numbers):
      assert dimension_numbers == DN
      return groups_path(x, gc.from_dense(w, rows), rows, strides, padding)
    return conv

  assert _non_canonical_convolutions(as_lax_conv(gc.grouped_conv)) == []
  # The feature-group path (not run on CPU) would be left non-canonical.
  assert _non_canonical_convolutions(
      as_lax_conv(gc.grouped_conv_feature_groups))


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="checks XLA:CPU's compiled program")
def test_layer_sgd_scan_runs_per_block_canonical_convolutions():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  layer = sc.GroupedSparseConv(8, (3, 3), group=2, sparsity=0.5)
  variables = layer.init(jax.random.key(1), x)
  params, rows = variables["params"], variables["sparsity"]

  def scan(params, rows):
    def step(params, _):
      grads = jax.grad(lambda p: jnp.sum(layer.apply(
          {"params": p, "sparsity": rows}, x) ** 2))(params)
      return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), None
    return lax.scan(step, params, None, length=3)[0]

  hlo = jax.jit(scan).lower(params, rows).compile().as_text()
  convolutions = [line for line in hlo.splitlines()
                  if " convolution(" in line]
  assert all(_CANONICAL.search(line) for line in convolutions), convolutions
  assert not any("feature_group_count" in line for line in convolutions)
  # 4 blocks: a forward and a kernel-gradient convolution each (the input
  # gradient is not needed here).
  assert len(convolutions) == 8
