"""Group-balanced sparse kernels: the products equal the masked dense ones,
drop-and-grow keeps exact counts per block, pruned weights stay zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparcl_jax.sparse import grouped
from sparcl_jax.errors import ConfigError
from sparcl_jax.models.grouped_dense import (GroupedSparseDense,
                                             GroupedSparseLinear, KeptRows)

FAN_IN, GROUPS, GROUP, K = 12, 3, 4, 5


def _kernel_and_rows(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  rows = grouped.random_rows(k1, FAN_IN, GROUPS, K)
  values = jax.random.normal(k2, (GROUPS, K, GROUP))
  return values, rows


def test_product_and_gradients_equal_the_masked_dense_layer():
  values, rows = _kernel_and_rows()
  x = jax.random.normal(jax.random.key(1), (7, FAN_IN))
  mask = grouped.row_mask(rows, FAN_IN, GROUP)
  dense = grouped.to_dense(values, rows, FAN_IN)
  assert int(mask.sum()) == GROUPS * K * GROUP
  np.testing.assert_array_equal(np.asarray(dense)[~np.asarray(mask)], 0.0)

  def sparse_loss(x, values):
    return jnp.sum(jnp.sin(grouped.grouped_matmul(x, values, rows)))

  def masked_loss(x, kernel):
    return jnp.sum(jnp.sin(x @ (kernel * mask)))

  np.testing.assert_allclose(grouped.grouped_matmul(x, values, rows),
                             x @ dense, rtol=1e-5, atol=1e-5)
  gx_s, gv_s = jax.grad(sparse_loss, argnums=(0, 1))(x, values)
  gx_d, gk_d = jax.grad(masked_loss, argnums=(0, 1))(x, dense)
  np.testing.assert_allclose(gx_s, gx_d, rtol=1e-5, atol=1e-5)
  # The kept weights' gradient is the masked layer's at the kept positions,
  # and the masked layer's gradient is zero everywhere else.
  np.testing.assert_allclose(gv_s, grouped.from_dense(gk_d, rows),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(gk_d)[~np.asarray(mask)], 0.0)


def test_drop_and_grow_by_hand():
  # One block of 1 unit, k = 3 of 6 rows: rows 1, 3, 4 with drop scores
  # 0.5, 0.1, 0.9. Swapping 2: rows 3 (0.1) and 1 (0.5) leave; the best rows
  # not kept by grow score are 5 (0.8) and 0 (0.6) (rows 1, 3, 4 score 9
  # but are kept).
  values = jnp.array([[[1.0], [2.0], [3.0]]])
  rows = jnp.array([[1, 3, 4]], jnp.int32)
  new_values, new_rows = grouped.drop_and_grow_rows(
      values, rows, jnp.array([[0.5, 0.1, 0.9]]),
      jnp.array([[0.6, 9.0, 0.2, 9.0, 9.0, 0.8]]), count=2)
  assert new_rows.tolist() == [[0, 5, 4]]
  assert new_values[..., 0].tolist() == [[0.0, 0.0, 3.0]]


def test_drop_and_grow_keeps_exact_distinct_counts_and_zero_pruned_weights():
  values, rows = _kernel_and_rows()
  update = jax.jit(grouped.drop_and_grow_rows, static_argnums=4)
  for step in range(20):
    k1, k2 = jax.random.split(jax.random.key(100 + step))
    drop = grouped.kept_block_scores(values)
    grow = jax.random.uniform(k1, (GROUPS, FAN_IN))
    before = grouped.to_dense(values, rows, FAN_IN)
    values, rows = update(values, rows, drop, grow, 2)
    values = values + 0.1 * jax.random.normal(k2, values.shape)
    for block in np.asarray(rows):
      assert len(set(block.tolist())) == K
      assert block.min() >= 0 and block.max() < FAN_IN
    dense = grouped.to_dense(values, rows, FAN_IN)
    mask = np.asarray(grouped.row_mask(rows, FAN_IN, GROUP))
    assert mask.sum() == GROUPS * K * GROUP
    np.testing.assert_array_equal(np.asarray(dense)[~mask], 0.0)
  # A survivor keeps its weights through the swap; before the noise the
  # grown slots were zero.
  assert not np.array_equal(np.asarray(before), np.asarray(dense))
  assert update._cache_size() == 1


def test_swap_count_is_checked():
  values, rows = _kernel_and_rows()
  with pytest.raises(ConfigError, match="cannot be swapped"):
    grouped.drop_and_grow_rows(values, rows, jnp.zeros((GROUPS, K)),
                               jnp.zeros((GROUPS, FAN_IN)), count=K + 1)
  with pytest.raises(ConfigError, match="must divide"):
    grouped.check_group(10, 4)


def test_magnitude_rows_pick_the_largest_block_norms():
  kernel = jnp.array([[1.0, 0.0, 0.0, 5.0],
                      [0.0, 3.0, 1.0, 1.0],
                      [2.0, 2.0, 0.0, 0.0]])
  # Blocks of 2 units: row norms (1, 3, 4) and (5, 2, 0).
  assert grouped.magnitude_rows(kernel, 2, 2).tolist() == [[1, 2], [0, 1]]


def test_linen_layer_is_the_masked_dense_layer_and_trains_its_kept_weights():
  layer = GroupedSparseDense(features=GROUPS * GROUP, group=GROUP,
                             sparsity=1 - K / FAN_IN)
  x = jax.random.normal(jax.random.key(2), (3, FAN_IN))
  variables = layer.init(jax.random.key(0), x)
  params, collection = variables["params"], variables["sparsity"]
  rows = collection["rows"]
  assert params["values"].shape == (GROUPS, K, GROUP)
  dense = grouped.to_dense(params["values"], rows, FAN_IN)
  np.testing.assert_allclose(layer.apply(variables, x),
                             x @ dense + params["bias"], rtol=1e-5, atol=1e-5)
  tx = optax.sgd(0.01)

  def loss(p):
    return jnp.sum(layer.apply({"params": p, "sparsity": collection},
                               x) ** 2)

  new = optax.apply_updates(params, tx.update(jax.grad(loss)(params),
                                              tx.init(params))[0])
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, params)
  assert float(loss(new)) < float(loss(params))


def test_nnx_layer_matches_and_keeps_rows_out_of_the_params():
  layer = GroupedSparseLinear(FAN_IN, GROUPS * GROUP, group=GROUP,
                              sparsity=1 - K / FAN_IN, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (3, FAN_IN))
  dense = grouped.to_dense(layer.values.value, layer.rows.value, FAN_IN)
  np.testing.assert_allclose(layer(x), x @ dense + layer.bias.value,
                             rtol=1e-5, atol=1e-5)
  params = nnx.state(layer, nnx.Param)
  assert sorted(nnx.to_pure_dict(params)) == ["bias", "values"]
  assert nnx.to_pure_dict(nnx.state(layer, KeptRows))["rows"].shape == (
      GROUPS, K)
