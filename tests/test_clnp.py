"""Tests for CLNP partition masks, the optax wrapper, pruning and commits."""

from __future__ import annotations

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparcl_jax import clnp
from sparcl_jax.errors import ConfigError, SparclError
from sparcl_jax.paths import flatten_to_dict

T, F = True, False


def _zeros_mlp(n_in=4, widths=(3, 3), n_heads=2, classes=2):
  params, prev = {}, n_in
  for i, w in enumerate(widths):
    params[f"hidden_{i}"] = {"kernel": jnp.zeros((prev, w)),
                             "bias": jnp.zeros((w,))}
    prev = w
  for t in range(n_heads):
    params[f"head_{t}"] = {"kernel": jnp.zeros((prev, classes)),
                           "bias": jnp.zeros((classes,))}
  return params


class _Heads(nn.Module):
  """One 2-way Dense per task, under ``head/head_<t>``, concatenated."""

  n_heads: int

  @nn.compact
  def __call__(self, h):
    return jnp.concatenate([nn.Dense(2, name=f"head_{t}")(h)
                            for t in range(self.n_heads)], axis=-1)


class _TinyMLP(nn.Module):
  """6-8-8 MLP laid out like the project's: activations sown as ``*_act``."""

  n_heads: int = 3

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Dense(8, name=f"hidden_{i}")(x))
      self.sow("intermediates", f"hidden_{i}_act", x)
    return _Heads(self.n_heads, name="head")(x)


# ----------------------------------------------------------------------------
# Partition counts.


def test_dense_partition_exact_masks():
  params = _zeros_mlp()
  specs = clnp.mlp_layer_specs(params)
  assert [(s.name, s.role, s.task, s.input_layer) for s in specs] == [
      ("hidden_0", "hidden", None, None),
      ("hidden_1", "hidden", None, "hidden_0"),
      ("head_0", "head", 0, "hidden_1"),
      ("head_1", "head", 1, "hidden_1")]
  used = {"hidden_0": np.array([T, F, T]), "hidden_1": np.array([F, T, F])}
  part = clnp.compute_partition(params, specs, used, task=1)
  tr, zr = part.trainable, part.zero
  np.testing.assert_array_equal(tr["hidden_0"]["kernel"],
                                np.tile([F, T, F], (4, 1)))
  assert int(zr["hidden_0"]["kernel"].sum()) == 0
  np.testing.assert_array_equal(tr["hidden_0"]["bias"], [F, T, F])
  np.testing.assert_array_equal(tr["hidden_1"]["kernel"],
                                np.tile([T, F, T], (3, 1)))
  np.testing.assert_array_equal(
      zr["hidden_1"]["kernel"], [[F, F, F], [F, T, F], [F, F, F]])
  np.testing.assert_array_equal(tr["hidden_1"]["bias"], [T, F, T])
  # Earlier head: frozen, rows of the (now free) units 0 and 2 zero.
  assert int(tr["head_0"]["kernel"].sum()) == 0
  np.testing.assert_array_equal(zr["head_0"]["kernel"],
                                [[T, T], [F, F], [T, T]])
  assert int(tr["head_0"]["bias"].sum()) == 0
  assert int(tr["head_1"]["kernel"].sum()) == 6
  assert int(zr["head_1"]["kernel"].sum()) == 0
  np.testing.assert_array_equal(tr["head_1"]["bias"], [T, T])


def test_first_task_trains_hidden_and_own_head_only():
  params = _zeros_mlp()
  specs = clnp.mlp_layer_specs(params)
  part = clnp.compute_partition(params, specs, clnp.init_used(params, specs),
                                task=0)
  counts = {k: int(v["kernel"].sum()) for k, v in part.trainable.items()}
  assert counts == {"hidden_0": 12, "hidden_1": 9, "head_0": 6, "head_1": 0}
  assert sum(int(z.sum()) for z in jax.tree.leaves(part.zero)) == 0


def test_conv_and_flatten_partition_exact_counts():
  params = {
      "conv_0": {"kernel": jnp.zeros((3, 3, 1, 2)), "bias": jnp.zeros(2)},
      "conv_1": {"kernel": jnp.zeros((3, 3, 2, 3)), "bias": jnp.zeros(3)},
      "dense_0": {"kernel": jnp.zeros((4 * 3, 5)), "bias": jnp.zeros(5)},
      "head_0": {"kernel": jnp.zeros((5, 2)), "bias": jnp.zeros(2)},
  }
  specs = clnp.cnn_layer_specs(params)
  assert [(s.kind, s.spatial) for s in specs] == [
      ("conv", 1), ("conv", 1), ("flatten_dense", 4), ("dense", 1)]
  used = {"conv_0": np.array([T, F]), "conv_1": np.array([F, T, T]),
          "dense_0": np.array([T, F, F, F, F])}
  part = clnp.compute_partition(params, specs, used, task=0)
  tr, zr = part.trainable, part.zero
  assert int(tr["conv_0"]["kernel"].sum()) == 9
  assert int(zr["conv_0"]["kernel"].sum()) == 0
  # conv_1: free filter 0 over both input channels and the 3x3 window.
  assert int(tr["conv_1"]["kernel"].sum()) == 18
  assert bool(tr["conv_1"]["kernel"][:, :, :, 0].all())
  # Free input channel 1 into used filters 1 and 2.
  assert int(zr["conv_1"]["kernel"].sum()) == 18
  assert bool(zr["conv_1"]["kernel"][:, :, 1, 1:].all())
  assert int(tr["dense_0"]["kernel"].sum()) == 48
  # Channel 0 of conv_1 is free: rows p * 3 + 0 at each of 4 positions.
  zero_rows, zero_cols = np.nonzero(np.asarray(zr["dense_0"]["kernel"]))
  np.testing.assert_array_equal(zero_rows, [0, 3, 6, 9])
  np.testing.assert_array_equal(zero_cols, [0, 0, 0, 0])
  np.testing.assert_array_equal(tr["dense_0"]["bias"], [F, T, T, T, T])


def test_shared_head_partition_and_gate():
  params = _zeros_mlp(n_heads=0)
  params["head"] = {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}
  specs = clnp.mlp_layer_specs(params)
  assert specs[-1].role == "shared_head"
  used0 = clnp.init_used(params, specs)
  first = clnp.compute_partition(params, specs, used0)
  assert bool(first.trainable["head"]["bias"].all())
  used = {"hidden_0": np.array([T, F, F]), "hidden_1": np.array([F, T, F])}
  part = clnp.compute_partition(params, specs, used)
  np.testing.assert_array_equal(part.trainable["head"]["kernel"],
                                np.tile([[T], [F], [T]], (1, 4)))
  assert int(part.trainable["head"]["bias"].sum()) == 0
  np.testing.assert_array_equal(
      clnp.single_head_gate([used], 0, "hidden_1"), [0.0, 1.0, 0.0])
  np.testing.assert_array_equal(
      clnp.single_head_gate([used], 1, "hidden_1"), [1.0, 1.0, 1.0])


def test_full_layer_raises_no_free_units_error():
  params = _zeros_mlp()
  specs = clnp.mlp_layer_specs(params)
  used = {"hidden_0": np.array([T, F, T]), "hidden_1": np.array([T, T, T])}
  with pytest.raises(clnp.NoFreeUnitsError) as err:
    clnp.compute_partition(params, specs, used, task=1)
  assert isinstance(err.value, SparclError)
  assert "hidden_1" in str(err.value) and "\n" not in str(err.value)


def test_uncovered_leaf_is_an_error_unless_asked():
  params = _zeros_mlp()
  params["norm"] = {"scale": jnp.ones(3)}
  specs = clnp.mlp_layer_specs(params)
  used = clnp.init_used(params, specs)
  with pytest.raises(ConfigError):
    clnp.compute_partition(params, specs, used, task=0)
  part = clnp.compute_partition(params, specs, used, task=0,
                                uncovered="freeze")
  assert int(part.trainable["norm"]["scale"].sum()) == 0


def test_specs_for_nested_multi_head_and_cnn_with_shared_head():
  mlp = jax.eval_shape(_TinyMLP(n_heads=2).init, jax.random.PRNGKey(0),
                       jnp.zeros((1, 6)))["params"]
  assert [(s.kernel_path, s.role, s.task) for s in clnp.mlp_layer_specs(mlp)][
      2:] == [("head/head_0/kernel", "head", 0),
              ("head/head_1/kernel", "head", 1)]
  # Zenke CNN on 32x32x3: 32 -> 30 (valid) -> pool 15 -> 13 (valid) -> pool 6.
  shapes = {"conv_0": (3, 3, 3, 32), "conv_1": (3, 3, 32, 32),
            "conv_2": (3, 3, 32, 64), "conv_3": (3, 3, 64, 64),
            "dense_0": (36 * 64, 512), "head": (512, 10)}
  cnn = {k: {"kernel": jax.ShapeDtypeStruct(v, jnp.float32),
             "bias": jax.ShapeDtypeStruct(v[-1:], jnp.float32)}
         for k, v in shapes.items()}
  specs = clnp.cnn_layer_specs(cnn)
  assert [(s.name, s.kind, s.spatial, s.role) for s in specs] == [
      ("conv_0", "conv", 1, "hidden"), ("conv_1", "conv", 1, "hidden"),
      ("conv_2", "conv", 1, "hidden"), ("conv_3", "conv", 1, "hidden"),
      ("dense_0", "flatten_dense", 36, "hidden"),
      ("head", "dense", 1, "shared_head")]


class _NnxMLP(nnx.Module):
  """4-3-3 MLP in NNX, its layers named like the Linen MLP's."""

  def __init__(self, heads, rngs):
    self.hidden_0 = nnx.Linear(4, 3, rngs=rngs)
    self.hidden_1 = nnx.Linear(3, 3, rngs=rngs)
    for name in heads:
      setattr(self, name, nnx.Linear(3, 2, rngs=rngs))


def _mask_counts(tree):
  return {path: int(m.sum()) for path, m in flatten_to_dict(tree).items()}


@pytest.mark.parametrize("heads, task, trainable, zero", [
    (("head_0", "head_1"), 1,
     {"head_0/kernel": 0, "head_0/bias": 0, "head_1/kernel": 6,
      "head_1/bias": 2},
     {"head_0/kernel": 4}),
    (("head",), None, {"head/kernel": 4, "head/bias": 0}, {})])
def test_nnx_state_gives_the_linen_dicts_specs_and_masks(heads, task,
                                                         trainable, zero):
  state = nnx.state(_NnxMLP(heads, nnx.Rngs(0)), nnx.Param)
  linen = nnx.to_pure_dict(state)
  specs = clnp.mlp_layer_specs(state)
  assert specs == clnp.mlp_layer_specs(linen)
  assert [s.name for s in specs] == ["hidden_0", "hidden_1", *heads]
  fresh = clnp.init_used(state, specs)
  assert {k: v.tolist() for k, v in fresh.items()} == {
      "hidden_0": [F, F, F], "hidden_1": [F, F, F]}
  used = {"hidden_0": np.array([T, F, T]), "hidden_1": np.array([F, T, F])}
  part = clnp.compute_partition(state, specs, used, task=task)
  ref = clnp.compute_partition(linen, specs, used, task=task)
  hidden = {"hidden_0/kernel": 4, "hidden_0/bias": 1, "hidden_1/kernel": 6,
            "hidden_1/bias": 2}
  assert _mask_counts(part.trainable) == _mask_counts(ref.trainable) == {
      **hidden, **trainable}
  zeros = {path: 0 for path in _mask_counts(ref.zero)}
  assert _mask_counts(part.zero) == _mask_counts(ref.zero) == {
      **zeros, "hidden_1/kernel": 1, **zero}


# ----------------------------------------------------------------------------
# The optax wrapper with a plain-function model.


def _plain_forward(p, x):
  h = jax.nn.relu(x @ p["a"]["w"] + p["a"]["b"])
  return h @ p["b"]["w"] + p["b"]["b"]


def _two_layer_problem(seed: int):
  """Random params of a 3-4-3 MLP, a batch of inputs and its layer specs."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = {"a": {"w": jax.random.normal(keys[0], (3, 4)),
                  "b": jax.random.normal(keys[1], (4,))},
            "b": {"w": jax.random.normal(keys[2], (4, 3)),
                  "b": jnp.zeros(3)}}
  x = jax.random.normal(keys[3], (8, 3))
  specs = [clnp.LayerSpec("a", "a/w", "a/b", None),
           clnp.LayerSpec("b", "b/w", "b/b", "a")]
  return params, x, specs


def test_wrapper_freezes_and_zeroes_with_adam_momentum():
  params, x, specs = _two_layer_problem(0)
  used = {"a": np.array([T, T, F, F]), "b": np.array([T, F, F])}
  part = clnp.compute_partition(params, specs, used)
  tx = clnp.clnp_partition(optax.adam(0.1))
  loss = lambda p: jnp.sum(jnp.square(_plain_forward(p, x) - 1.0))

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(3):  # all trainable: builds Adam momentum everywhere
    params, state = step(params, state)
  before = jax.tree.map(np.asarray, params)
  state = clnp.set_partition(state, part)  # momentum kept on purpose
  for _ in range(4):
    params, state = step(params, state)
  after = jax.tree.map(np.asarray, params)
  for leaf_b, leaf_a, tr, zr in zip(
      jax.tree.leaves(before), jax.tree.leaves(after),
      jax.tree.leaves(part.trainable), jax.tree.leaves(part.zero)):
    frozen = ~np.asarray(tr) & ~np.asarray(zr)
    np.testing.assert_array_equal(leaf_a[frozen], leaf_b[frozen])
    assert np.all(leaf_a[np.asarray(zr)] == 0.0)
    assert np.any(leaf_a[np.asarray(tr)] != leaf_b[np.asarray(tr)])
  # The interference block b/w[2:, 0] was nonzero before and is zero now.
  assert np.all(before["b"]["w"][2:, 0] != 0)
  assert int(np.asarray(part.zero["b"]["w"]).sum()) == 2


def test_unmasked_gradients_give_the_same_adam_training():
  params, x, specs = _two_layer_problem(1)
  used = {"a": np.array([T, F, T, F]), "b": np.array([F, T, F])}
  part = clnp.compute_partition(params, specs, used)

  def train(tx, penalty_masks):
    def loss(p):
      return (jnp.sum(jnp.square(_plain_forward(p, x) - 1.0))
              + 1e-2 * clnp.l1_penalty(p, penalty_masks))

    @jax.jit
    def step(p, s):
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u), s

    p, s = params, clnp.set_partition(tx.init(params), part)
    for _ in range(5):
      p, s = step(p, s)
    return jax.tree.map(np.asarray, p)

  masked = train(clnp.clnp_partition(optax.adam(0.1)), part.trainable)
  unmasked = train(clnp.clnp_partition(optax.adam(0.1), mask_gradients=False),
                   None)
  for a, b, start, tr, zr in zip(
      jax.tree.leaves(masked), jax.tree.leaves(unmasked),
      jax.tree.leaves(params), jax.tree.leaves(part.trainable),
      jax.tree.leaves(part.zero)):
    tr, zr, start = np.asarray(tr), np.asarray(zr), np.asarray(start)
    # Same arithmetic; XLA may fuse it differently (last-bit rounding).
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(b[~tr & ~zr], start[~tr & ~zr])
    assert np.all(b[zr] == 0.0)
    assert np.all(b[tr] != start[tr])


def test_l1_penalty_without_masks_sums_every_kernel_entry():
  params = {"k": jnp.asarray([[1.0, -2.0], [0.5, 0.0]]),
            "b": jnp.asarray([3.0, -4.0])}
  assert float(clnp.l1_penalty(params, None)) == 3.5
  assert float(clnp.l1_penalty(params, None, include_bias=True)) == 10.5
  masks = {"k": np.array([[T, F], [T, T]]), "b": np.array([T, T])}
  assert float(clnp.l1_penalty(params, masks)) == 1.5


def test_wrapper_without_params_only_freezes():
  params = {"w": jnp.asarray([1.0, 2.0, 3.0])}
  part = clnp.Partition({"w": np.array([T, F, F])}, {"w": np.array([F, F, T])})
  tx = clnp.clnp_partition(optax.sgd(1.0), part)
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.ones(3)}, state)
  np.testing.assert_array_equal(updates["w"], [-1.0, 0.0, 0.0])
  updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_array_equal(updates["w"], [-1.0, 0.0, -3.0])
  with pytest.raises(ConfigError):
    clnp.set_partition(state, clnp.Partition({"w": np.ones(2, bool)},
                                             {"w": np.ones(2, bool)}))
  with pytest.raises(ConfigError):
    clnp.set_partition(optax.sgd(1.0).init(params), part)


# ----------------------------------------------------------------------------
# Activity, pruning, search, commit, report.


def test_unit_activity_dense_hand_computed():
  w = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])

  def apply(v, x, mutable):
    h = jax.nn.relu(x @ v["w"])
    return h.sum(), {"intermediates": {"hidden_0": (h,)}}

  x = jnp.asarray([[1.0, -2.0], [3.0, 4.0], [-1.0, 0.0]])
  # relu(x @ w) = [[1, 0, 0], [3, 4, 7], [0, 0, 0]].
  mean = clnp.unit_activity(apply, {"w": w}, x, ["hidden_0"])
  np.testing.assert_allclose(mean["hidden_0"], [4 / 3, 4 / 3, 7 / 3])
  rate = clnp.unit_activity(apply, {"w": w}, x, ["hidden_0"],
                            reading="firing_rate", batch_size=2)
  np.testing.assert_allclose(rate["hidden_0"], [2 / 3, 1 / 3, 1 / 3])
  with pytest.raises(ConfigError):
    clnp.unit_activity(apply, {"w": w}, x, ["hidden_0"], reading="max")


def test_unit_activity_conv_averages_positions():
  def apply(v, x, mutable):
    h = jax.nn.relu(x)
    return None, {"intermediates": {"block": {"conv_0": (h,)}}}

  x = jnp.asarray([[[[1.0, -1.0], [2.0, 0.0]], [[0.0, 3.0], [-5.0, 0.0]]],
                   [[[4.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]]])
  act = clnp.unit_activity(apply, None, x, ["block/conv_0"])
  # channel 0: 1+2+0+0+4+0+1+0 = 8; channel 1: 0+0+3+0+1+0+0+2 = 6; / 8.
  np.testing.assert_allclose(act["block/conv_0"], [1.0, 0.75])


def test_prune_by_threshold_keeps_free_units_above_theta():
  act = {"a": np.array([0.1, 0.5, 0.9]), "b": np.array([0.2, 0.0])}
  free = {"a": np.array([T, T, F]), "b": np.array([T, T])}
  kept = clnp.prune_by_threshold(act, free, {"a": 0.3, "b": 0.1})
  np.testing.assert_array_equal(kept["a"], [F, T, F])
  np.testing.assert_array_equal(kept["b"], [T, F])


_ACT = {"a": np.array([0.1, 0.2, 0.3, 0.4]), "b": np.array([0.5, 0.6])}
_FREE = {"a": np.array([T, T, T, T]), "b": np.array([T, F])}


def _count(kept):
  return sum(int(k.sum()) for k in kept.values())


def test_search_picks_most_aggressive_theta_within_margin():
  calls = []

  def evaluate(kept):
    calls.append(_count(kept))
    return 80.0 + 4.0 * _count(kept)

  res = clnp.graceful_forgetting_search(
      evaluate, _ACT, _FREE, margin=9.0, acc_before=100.0,
      candidate_quantiles=(0.0, 0.25, 0.5, 0.75, 1.0))
  # Pooled free activities 0.1..0.5; quantile 0.25 is 0.2, keeping 3 units.
  assert res.accepted and res.quantile == 0.25
  assert res.theta == pytest.approx(0.2)
  np.testing.assert_array_equal(res.kept["a"], [F, F, T, T])
  np.testing.assert_array_equal(res.kept["b"], [T, F])
  assert res.accuracy == 92.0
  assert res.trials == ((1.0, 80.0), (0.75, 84.0), (0.5, 88.0), (0.25, 92.0))
  assert calls == [0, 1, 2, 3]


def test_search_falls_back_to_keeping_all_and_finetune_hook():
  res = clnp.graceful_forgetting_search(
      lambda kept, tuned: 80.0 + 4.0 * tuned, _ACT, _FREE, margin=0.0,
      acc_before=100.0, candidate_quantiles=(0.0, 0.5),
      finetune_fn=_count)
  assert res.theta == -np.inf and res.quantile is None and res.accepted
  assert res.tuned == 5 and res.accuracy == 100.0
  assert res.trials == ((0.5, 88.0), (0.0, 96.0))


def test_search_bisect_finds_the_scan_answer_in_fewer_evaluations():
  acts = {"a": np.arange(1.0, 101.0)}
  free = {"a": np.ones(100, bool)}
  qs = tuple(round(1.0 - i / 100, 2) for i in range(101))
  calls = []

  def evaluate(kept):
    calls.append(_count(kept))
    # Accuracy grows with the units kept; 37 or more pass the floor of 90.
    return 50.0 + 40.0 * min(_count(kept), 37) / 37

  scan = clnp.graceful_forgetting_search(evaluate, acts, free, 10.0, 100.0,
                                         qs)
  scan_calls, calls[:] = len(calls), []
  bisect = clnp.graceful_forgetting_search(evaluate, acts, free, 10.0, 100.0,
                                           qs, strategy="bisect")
  assert scan.quantile == bisect.quantile and _count(bisect.kept) == 37
  np.testing.assert_array_equal(scan.kept["a"], bisect.kept["a"])
  assert bisect.accepted and bisect.accuracy == 90.0
  # Scan tries q = 1.00, 0.99, ..., 0.63; bisect ceil(log2(101)) candidates.
  assert scan_calls == 38 and len(calls) == 7
  assert len(bisect.trials) == 7


def test_search_bisect_falls_back_and_rejects_unknown_strategy():
  res = clnp.graceful_forgetting_search(
      lambda kept: 80.0 + 4.0 * _count(kept), _ACT, _FREE, margin=0.0,
      acc_before=100.0, candidate_quantiles=(0.0, 0.5, 1.0),
      strategy="bisect")
  assert res.theta == -np.inf and res.quantile is None
  assert [q for q, _ in res.trials] == [0.5, 0.0]
  with pytest.raises(ConfigError, match="'scan' or 'bisect'"):
    clnp.graceful_forgetting_search(lambda kept: 0.0, _ACT, _FREE, 1.0, 50.0,
                                    strategy="golden")


def test_search_per_layer_quantiles_skip_full_layers():
  free = {"a": np.array([T, T, T, T]), "b": np.array([F, F])}
  res = clnp.graceful_forgetting_search(
      lambda kept: 80.0 + 4.0 * _count(kept), _ACT, free, margin=12.0,
      acc_before=100.0, candidate_quantiles=(1.0, 0.5), per_layer=True)
  assert res.quantile == 0.5 and res.accuracy == 88.0
  assert res.theta == {"a": pytest.approx(0.25), "b": np.inf}
  np.testing.assert_array_equal(res.kept["a"], [F, F, T, T])
  np.testing.assert_array_equal(res.kept["b"], [F, F])


@pytest.mark.parametrize("margin", [-0.5, 100.5])
def test_search_rejects_margin_outside_percent_range(margin):
  with pytest.raises(ConfigError):
    clnp.graceful_forgetting_search(lambda kept: 0.0, _ACT, _FREE, margin,
                                    acc_before=90.0)


def test_commit_task_zeroes_interference_and_reinitialises_free():
  params = jax.tree.map(lambda p: p + 1.0, _zeros_mlp())
  specs = clnp.mlp_layer_specs(params)
  used = clnp.init_used(params, specs)
  kept = {"hidden_0": np.array([T, F, T]), "hidden_1": np.array([F, T, F])}
  init_fn = lambda rng: jax.tree.map(lambda p: jnp.full_like(p, 7.0), params)
  new, new_used = clnp.commit_task(params, specs, used, kept,
                                   jax.random.PRNGKey(0), init_fn, task=0)
  np.testing.assert_array_equal(new_used["hidden_0"], [T, F, T])
  np.testing.assert_array_equal(new["hidden_0"]["kernel"],
                                np.tile([1.0, 7.0, 1.0], (4, 1)))
  np.testing.assert_array_equal(new["hidden_0"]["bias"], [1.0, 7.0, 1.0])
  np.testing.assert_array_equal(
      new["hidden_1"]["kernel"],
      [[7.0, 1.0, 7.0], [7.0, 0.0, 7.0], [7.0, 1.0, 7.0]])
  np.testing.assert_array_equal(new["head_0"]["kernel"],
                                [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  np.testing.assert_array_equal(new["head_1"]["kernel"], np.ones((3, 2)))
  assert isinstance(used["hidden_0"], np.ndarray) and not used["hidden_0"].any()


def test_capacity_report_counts():
  history = [{"h": np.array([T, T, F, F])}, {"h": np.array([T, T, T, F])}]
  acts = [{"h": np.zeros(4)}, {"h": np.array([0.0, 0.3, 0.9, 0.0])}]
  rep = clnp.capacity_report(history, acts, theta=0.1)
  assert rep["units"] == {"h": 4}
  assert rep["tasks"][0]["h"] == {"used": 2, "free": 2, "claimed": 2,
                                  "available": 0, "reused": 0}
  assert rep["tasks"][1]["h"] == {"used": 3, "free": 1, "claimed": 1,
                                  "available": 2, "reused": 1}


# ----------------------------------------------------------------------------
# The key test: three tasks in sequence, earlier logits bit-identical.


def test_three_tasks_keep_earlier_logits_bit_identical():
  model = _TinyMLP(n_heads=3)
  rng = jax.random.PRNGKey(42)
  k_init, k_data, rng = jax.random.split(rng, 3)
  x_fix = jax.random.normal(k_data, (16, 6))
  init_fn = lambda key: model.init(key, x_fix)["params"]
  params = init_fn(k_init)
  specs = clnp.mlp_layer_specs(params)
  used = clnp.init_used(params, specs)
  tx = clnp.clnp_partition(optax.adam(5e-2))

  def task_logits(p, x, t):
    return jax.lax.dynamic_slice_in_dim(model.apply({"params": p}, x),
                                        2 * t, 2, axis=1)

  @jax.jit
  def train_step(p, state, x, y, t):
    def loss_fn(q):
      ce = optax.softmax_cross_entropy_with_integer_labels(
          task_logits(q, x, t), y).mean()
      return ce + 1e-3 * clnp.l1_penalty(q, state.trainable)
    updates, state = tx.update(jax.grad(loss_fn)(p), state, p)
    return optax.apply_updates(p, updates), state

  accuracy = jax.jit(lambda p, x, y, t: 100.0 * jnp.mean(
      jnp.argmax(task_logits(p, x, t), -1) == y))

  reference, history = [], []
  for t in range(3):
    k_x, k_w, k_commit, rng = jax.random.split(rng, 4)
    x = jax.random.normal(k_x, (64, 6))
    y = (x @ jax.random.normal(k_w, (6,)) > 0).astype(jnp.int32)
    partition = clnp.compute_partition(params, specs, used, task=t)
    state = clnp.set_partition(tx.init(params), partition)
    for _ in range(25):
      params, state = train_step(params, state, x, y, t)
    act = clnp.unit_activity(model.apply, {"params": params}, x,
                             ["hidden_0", "hidden_1"])
    free = {k: ~u for k, u in used.items()}
    res = clnp.graceful_forgetting_search(
        lambda kept: float(accuracy(
            clnp.apply_cut(params, specs, used, kept, task=t), x, y, t)),
        act, free, margin=5.0, per_layer=True,
        acc_before=float(accuracy(params, x, y, t)))
    assert res.accepted
    params, used = clnp.commit_task(params, specs, used, res.kept, k_commit,
                                    init_fn, task=t)
    history.append(used)
    # Earlier tasks' logits, after this task trained and committed.
    for s, ref in enumerate(reference):
      assert np.array_equal(np.asarray(task_logits(params, x_fix, s)), ref)
    reference.append(np.asarray(task_logits(params, x_fix, t)))

  report = clnp.capacity_report(history)
  assert report["tasks"][0]["hidden_0"]["claimed"] > 0
  assert report["tasks"][2]["hidden_1"]["free"] < 8
