"""CLNP from users' own code: NNX models, optax wrappers, the sown names."""

from __future__ import annotations

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc
from sparcl_jax.errors import ConfigError
from sparcl_jax.paths import flatten_to_dict

T, F = True, False


class _Mlp(nnx.Module):
  """6-8-8 MLP with a 2-way head per task, sowing ``<layer>_act``."""

  def __init__(self, rngs, n_heads=3):
    self.hidden_0 = nnx.Linear(6, 8, rngs=rngs)
    self.hidden_1 = nnx.Linear(8, 8, rngs=rngs)
    for t in range(n_heads):
      setattr(self, f"head_{t}", nnx.Linear(8, 2, rngs=rngs))
    self.n_heads = n_heads

  def __call__(self, x):
    for name in ("hidden_0", "hidden_1"):
      x = nnx.relu(getattr(self, name)(x))
      self.sow(nnx.Intermediate, name + "_act", x)
    return jnp.concatenate([getattr(self, f"head_{t}")(x)
                            for t in range(self.n_heads)], axis=-1)


class _Block(nnx.Module):

  def __init__(self, rngs):
    self.conv_0 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.conv_1 = nnx.Conv(4, 8, (3, 3), rngs=rngs)


class _Cnn(nnx.Module):
  """conv_0, conv_1 on a 2x2 map, dense_0, two heads; and a nested copy."""

  def __init__(self, rngs):
    self.conv_0 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.conv_1 = nnx.Conv(4, 8, (3, 3), rngs=rngs)
    self.dense_0 = nnx.Linear(2 * 2 * 8, 16, rngs=rngs)
    self.head_0 = nnx.Linear(16, 2, rngs=rngs)
    self.head_1 = nnx.Linear(16, 2, rngs=rngs)
    self.block = _Block(rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)


# Training calls the model through nnx.capture: outside it, NNX (deprecated)
# stores sown values in the model, changing its state (and so retracing the
# jitted step) on every call.
_capture = nnx.capture(lambda m, x: m(x), nnx.Intermediate)


def _logits(model, x):
  return _capture(model, x)[0]


def _counts(tree):
  return {path: int(np.asarray(m).sum())
          for path, m in flatten_to_dict(tree).items()}


# ----------------------------------------------------------------------------
# Specs and partitions on NNX states as they come.


def test_specs_take_nnx_states_as_they_come():
  model = nnx.eval_shape(lambda: _Cnn(nnx.Rngs(0)))  # shapes are all it reads
  params = nnx.state(model, nnx.Param)
  everything = nnx.state(model)  # with batch stats and RNG state
  pure = nnx.to_pure_dict(params)
  specs = sc.cnn_layer_specs(params)
  assert specs == sc.cnn_layer_specs(everything) == sc.cnn_layer_specs(pure)
  assert [(s.name, s.kind, s.spatial, s.role, s.task) for s in specs] == [
      ("conv_0", "conv", 1, "hidden", None),
      ("conv_1", "conv", 1, "hidden", None),
      ("dense_0", "flatten_dense", 4, "hidden", None),
      ("head_0", "dense", 1, "head", 0), ("head_1", "dense", 1, "head", 1)]
  nested = sc.chain_layer_specs(["block/conv_0", "block/conv_1"], params)
  assert [(s.kernel_path, s.input_layer) for s in nested] == [
      ("block/conv_0/kernel", None), ("block/conv_1/kernel", "block/conv_0")]
  mlp = nnx.state(nnx.eval_shape(lambda: _Mlp(nnx.Rngs(0))), nnx.Param)
  assert [s.name for s in sc.mlp_layer_specs(mlp)] == [
      "hidden_0", "hidden_1", "head_0", "head_1", "head_2"]


def test_partition_of_an_nnx_state_is_an_nnx_state():
  params = nnx.state(_Mlp(nnx.Rngs(0)), nnx.Param)
  specs = sc.mlp_layer_specs(params)
  used = {"hidden_0": np.arange(8) < 3, "hidden_1": np.arange(8) < 5}
  part = sc.compute_partition(params, specs, used, task=1)
  assert isinstance(part.trainable, nnx.State)
  assert isinstance(part.zero["hidden_1"]["kernel"], nnx.Param)
  assert _counts(part.trainable) == {
      "hidden_0/kernel": 6 * 5, "hidden_0/bias": 5,
      "hidden_1/kernel": 8 * 3, "hidden_1/bias": 3,
      "head_0/kernel": 0, "head_0/bias": 0,
      "head_1/kernel": 16, "head_1/bias": 2,
      "head_2/kernel": 0, "head_2/bias": 0}
  # hidden_1's used units (5) read no free hidden_0 unit (5); head_0 reads
  # no free hidden_1 unit (3).
  assert _counts(part.zero)["hidden_1/kernel"] == 5 * 5
  assert _counts(part.zero)["head_0/kernel"] == 3 * 2


# ----------------------------------------------------------------------------
# nnx.Optimizer.


def _task_one_partition(model):
  params = nnx.state(model, nnx.Param)
  specs = sc.mlp_layer_specs(params)
  used = {"hidden_0": np.arange(8) < 3, "hidden_1": np.arange(8) < 5}
  return sc.compute_partition(params, specs, used, task=1)


def test_nnx_optimizer_trains_only_the_partitions_entries():
  model = _Mlp(nnx.Rngs(0))
  part = _task_one_partition(model)
  optimizer = nnx.Optimizer(model, sc.clnp_partition(optax.adam(0.1)),
                            wrt=nnx.Param)
  # On the optimizer's state: the same kind back, OptVariable leaves.
  state = sc.set_partition(optimizer.opt_state, part)
  leaf = state.trainable["hidden_0"]["kernel"]
  assert type(leaf) is type(optimizer.opt_state.trainable["hidden_0"]["kernel"])
  assert _counts(state.trainable) == _counts(part.trainable)
  # On the optimizer itself: in place, and a pure-dict partition serves too.
  pure = sc.Partition(nnx.to_pure_dict(part.trainable),
                      nnx.to_pure_dict(part.zero))
  assert sc.set_partition(optimizer, pure) is optimizer
  assert _counts(optimizer.opt_state.trainable) == _counts(part.trainable)
  assert _counts(optimizer.opt_state.zero) == _counts(part.zero)

  x = jax.random.normal(jax.random.key(1), (16, 6))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.sum(jnp.square(_logits(m, x))))(model)
    optimizer.update(model, grads)

  before = flatten_to_dict(jax.tree.map(np.asarray, nnx.to_pure_dict(
      nnx.state(model, nnx.Param))))
  for _ in range(3):
    step(model, optimizer)
  after = flatten_to_dict(nnx.state(model, nnx.Param))
  train, zero = flatten_to_dict(part.trainable), flatten_to_dict(part.zero)
  for path, b in before.items():
    a, tr, zr = np.asarray(after[path]), np.asarray(train[path]), np.asarray(
        zero[path])
    np.testing.assert_array_equal(a[~tr & ~zr], b[~tr & ~zr])
    assert np.all(a[zr] == 0.0)
    assert np.all(b[zr] != 0.0)
  moved = sum(int(np.sum(np.asarray(after[p]) != before[p])) for p in before)
  assert moved > 0


# ----------------------------------------------------------------------------
# set_partition inside optax's wrappers.


def _dense_params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {"hidden_0": {"kernel": jax.random.normal(keys[0], (3, 4)),
                       "bias": jnp.ones(4)},
          "head_0": {"kernel": jax.random.normal(keys[1], (4, 2)),
                     "bias": jnp.ones(2)},
          "head_1": {"kernel": jax.random.normal(keys[2], (4, 2)),
                     "bias": jnp.ones(2)}}


def _labels(params):
  return {k: "other" if k == "head_1" else "clnp" for k in params}


@pytest.mark.parametrize("wrap, states, unmasked", [
    (lambda tx: optax.chain(optax.clip(10.0), tx), 1, ()),
    (lambda tx: optax.multi_transform(
        {"clnp": tx, "other": optax.sgd(0.5)}, _labels), 1, ("head_1",)),
    (lambda tx: optax.multi_transform(
        {"clnp": tx, "other": sc.clnp_partition(optax.sgd(0.5))}, _labels), 2,
     ()),
    (lambda tx: optax.inject_hyperparams(
        lambda learning_rate: sc.clnp_partition(optax.sgd(learning_rate)))(
            learning_rate=0.5), 1, ()),
    (lambda tx: optax.MultiSteps(tx, every_k_schedule=2), 1, ()),
], ids=["chain", "multi_transform", "multi_transform_two", "inject",
        "multi_steps"])
def test_set_partition_inside_optax_wrappers(wrap, states, unmasked):
  params = _dense_params()
  specs = sc.mlp_layer_specs(params)
  used = {"hidden_0": np.array([T, T, F, F])}
  part = sc.compute_partition(params, specs, used, task=1)
  tx = wrap(sc.clnp_partition(optax.sgd(0.5)))
  state = sc.set_partition(tx.init(params), part)
  found = optax.tree_utils.tree_get_all_with_path(state, "ClnpPartitionState")
  assert len(found) == states
  # Every clnp_partition holds the partition on the leaves it sees.
  for _, node in found:
    counts = _counts(node.trainable)
    assert counts == {p: n for p, n in _counts(part.trainable).items()
                      if p in counts}
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(tx.update)
  p = params
  for _ in range(2):  # MultiSteps applies on the second
    updates, state = step(grads, state, p)
    p = optax.apply_updates(p, updates)
  train, zero = flatten_to_dict(part.trainable), flatten_to_dict(part.zero)
  for path, new in flatten_to_dict(p).items():
    old = np.asarray(flatten_to_dict(params)[path])
    new, tr, zr = np.asarray(new), np.asarray(train[path]), np.asarray(
        zero[path])
    if path.split("/")[0] in unmasked:  # trained by a plain optax branch
      assert np.all(new != old)
      continue
    np.testing.assert_array_equal(new[~tr & ~zr], old[~tr & ~zr])
    assert np.all(new[zr] == 0.0)
    assert np.all(new[tr] != old[tr])
  assert int(np.sum(np.asarray(part.zero["head_0"]["kernel"]))) == 4


def test_set_partition_without_a_clnp_state_or_with_wrong_masks_raises():
  params = _dense_params()
  part = sc.compute_partition(params, sc.mlp_layer_specs(params),
                              {"hidden_0": np.array([T, T, F, F])}, task=1)
  with pytest.raises(ConfigError, match="no clnp_partition"):
    sc.set_partition(optax.chain(optax.sgd(1.0)).init(params), part)
  state = optax.multi_transform(
      {"clnp": sc.clnp_partition(optax.sgd(1.0)), "other": optax.sgd(1.0)},
      _labels).init(params)
  short = sc.Partition({k: v for k, v in part.trainable.items()
                        if k != "hidden_0"}, part.zero)
  with pytest.raises(ConfigError, match="missing"):
    sc.set_partition(state, short)


# ----------------------------------------------------------------------------
# Sown names and unit_activity.


class _LinenSowing(nn.Module):
  """One hidden layer, its activations sown under ``sown_name``."""

  sown_name: str

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(3, name="hidden_0")(x))
    self.sow("intermediates", self.sown_name, h)
    return h


def test_the_documented_act_suffix_works_in_linen_and_nnx():
  x = jax.random.normal(jax.random.key(0), (5, 6))
  # Flax reserves the layer's own name: why LayerSpec documents '_act'.
  own = _LinenSowing("hidden_0")
  with pytest.raises(Exception, match="Duplicate use of scope name"):
    sc.unit_activity(own.apply, own.init(jax.random.key(0), x), x,
                     ["hidden_0"])
  linen = _LinenSowing("hidden_0_act")
  variables = linen.init(jax.random.key(0), x)
  kernel = np.asarray(variables["params"]["hidden_0"]["kernel"], np.float64)
  bias = np.asarray(variables["params"]["hidden_0"]["bias"], np.float64)
  h = np.maximum(np.asarray(x, np.float64) @ kernel + bias, 0.0)
  act = sc.unit_activity(linen.apply, variables, x, ["hidden_0"],
                         batch_size=2)
  np.testing.assert_allclose(act["hidden_0"], h.mean(0), rtol=1e-5)

  model = _Mlp(nnx.Rngs(0))
  layer = model.hidden_0
  h = np.maximum(np.asarray(x, np.float64) @ np.asarray(layer.kernel[...])
                 + np.asarray(layer.bias[...]), 0.0)
  act = sc.unit_activity(model, x, ["hidden_0", "hidden_1"], batch_size=2)
  np.testing.assert_allclose(act["hidden_0"], h.mean(0), rtol=1e-5)
  rate = sc.unit_activity(model, x, ["hidden_0"], reading="firing_rate")
  np.testing.assert_array_equal(rate["hidden_0"], (h > 0).mean(0))
  assert not nnx.state(model, nnx.Intermediate)  # the model is untouched
  with pytest.raises(ConfigError, match="hidden_2_act"):
    sc.unit_activity(model, x, ["hidden_2"])
  with pytest.raises(ConfigError, match="takes 2 arguments"):
    sc.unit_activity(model, None, x, ["hidden_0"])


# ----------------------------------------------------------------------------
# A CLNP task loop in the user's own NNX code, following commit_task's rule.


def test_nnx_task_loop_keeps_committed_logits_bit_identical():
  model = _Mlp(nnx.Rngs(0))
  x_fix = jax.random.normal(jax.random.key(42), (16, 6))
  init_fn = lambda key: nnx.state(_Mlp(nnx.Rngs(key)), nnx.Param)
  specs = sc.mlp_layer_specs(nnx.state(model, nnx.Param))
  used = sc.init_used(nnx.state(model, nnx.Param), specs)
  tx = sc.clnp_partition(optax.adam(5e-2))

  @nnx.jit  # one compilation serves every task
  def train_step(model, optimizer, x, y, t):
    def loss_fn(m):
      logits = jax.lax.dynamic_slice_in_dim(_logits(m, x), 2 * t, 2, axis=1)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return ce + 1e-3 * sc.l1_penalty(nnx.state(m, nnx.Param), None)
    optimizer.update(model, nnx.grad(loss_fn)(model))

  logits_of = nnx.jit(_logits)

  def accuracy(params, x, y, t):
    view = nnx.merge(nnx.graphdef(model), params,
                     nnx.state(model, nnx.Not(nnx.Param)))
    pred = jnp.argmax(logits_of(view, x)[:, 2 * t:2 * t + 2], -1)
    return 100.0 * float(jnp.mean(pred == y))

  reference, changed_by_commit = [], []
  for t in range(3):
    k_x, k_w = jax.random.split(jax.random.key(t))
    x = jax.random.normal(k_x, (64, 6))
    y = (x @ jax.random.normal(k_w, (6,)) > 0).astype(jnp.int32)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # fresh Adam
    sc.set_partition(optimizer, sc.compute_partition(
        nnx.state(model, nnx.Param), specs, used, task=t))
    for _ in range(20):
      train_step(model, optimizer, x, y, jnp.int32(t))
    params = nnx.state(model, nnx.Param)
    act = sc.unit_activity(model, x, ["hidden_0", "hidden_1"])
    res = sc.graceful_forgetting_search(
        lambda kept: accuracy(sc.apply_cut(params, specs, used, kept, t),
                              x, y, t),
        act, {k: ~u for k, u in used.items()}, margin=5.0, per_layer=True,
        acc_before=accuracy(params, x, y, t), strategy="bisect")
    assert res.accepted
    before_commit = np.asarray(logits_of(model, x_fix))[:, 2 * t:2 * t + 2]
    params, used = sc.commit_task(params, specs, used, res.kept,
                                  jax.random.key(100 + t), init_fn, task=t)
    nnx.update(model, params)
    logits = np.asarray(logits_of(model, x_fix))
    # The rule: reference logits after the commit; the earlier ones hold.
    for s, ref in enumerate(reference):
      assert np.array_equal(logits[:, 2 * s:2 * s + 2], ref)
    reference.append(logits[:, 2 * t:2 * t + 2])
    changed_by_commit.append(not np.array_equal(before_commit, reference[t]))
  # Taken before its commit, a reference would not have held.
  assert any(changed_by_commit)
  assert all(u.any() for u in used.values())


def test_linen_unit_activity_compiles_once_per_model():
  # Measuring every task with the same model_apply traces it once, as the
  # NNX path does; it used to build a new jit closure at every call.
  linen = _LinenSowing("hidden_0_act")
  x = jax.random.normal(jax.random.key(0), (4, 6))
  traces = []

  def apply(variables, inputs, mutable):
    traces.append(1)
    return linen.apply(variables, inputs, mutable=mutable)

  for task in range(3):
    variables = linen.init(jax.random.key(task), x)
    act = sc.unit_activity(apply, variables, x, ["hidden_0"])
    assert act["hidden_0"].shape == (3,)
  assert len(traces) == 1
  # model.apply of one module: bound methods compare equal, one compile.
  sums = [sc.clnp.activity._linen_sums(linen.apply, ["hidden_0"], "mean")
          for _ in range(2)]
  assert sums[0] is sums[1]
