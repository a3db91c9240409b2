"""Tests for the Flax models, heads and registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax.errors import ConfigError
from sparcl_jax.models.heads import OutputHead
from sparcl_jax.sparse import sparsity
from sparcl_jax.clnp import cnn_layer_specs, mlp_layer_specs
from sparcl_jax.models import registry
from sparcl_jax.models.registry import (collect_activations, init_model,
                                        make_model, names)


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def _relu(a):
  return np.maximum(a, 0.0)


def _variables(model, input_shape, seed=0):
  """Variables with the shapes init_model gives, filled by numpy.

  Compiling the PRNG initialisers costs seconds per shape on a busy CPU;
  eval_shape runs init_model without compiling anything.
  """
  shapes = jax.eval_shape(
      lambda: init_model(model, jax.random.key(0), (1, *input_shape)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("var", "scale"):
      return np.ones(leaf.shape, np.float32)
    if name == "mean":
      return np.zeros(leaf.shape, np.float32)
    return (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _normal(shape, seed=1):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_mlp_computes_relu_layers_and_sows_them():
  model = make_model("mlp", 4, hidden_sizes=(6, 5))
  variables = _variables(model, (3, 3, 1))
  assert set(variables) == {"params"}  # sown intermediates are dropped
  p = variables["params"]
  assert _shapes(p) == {
      "hidden_0": {"kernel": (9, 6), "bias": (6,)},
      "hidden_1": {"kernel": (6, 5), "bias": (5,)},
      "head": {"kernel": (5, 4), "bias": (4,)},
  }
  x = _normal((2, 3, 3, 1))
  logits, state = jax.jit(model.apply, static_argnames="mutable")(
      variables, x, mutable=("intermediates",))
  h0 = _relu(x.reshape(2, 9) @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
  h1 = _relu(h0 @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
  acts = collect_activations(state["intermediates"])
  assert set(acts) == {"hidden_0", "hidden_1"}
  np.testing.assert_allclose(acts["hidden_0"], h0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(acts["hidden_1"], h1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      logits, h1 @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5,
      atol=1e-6)


def test_multi_head_concatenates_task_heads_in_order():
  head = OutputHead("multi", 5, (2, 3))
  feats = _normal((3, 4))
  p = {"head_0": {"kernel": _normal((4, 2), 2), "bias": _normal((2,), 3)},
       "head_1": {"kernel": _normal((4, 3), 4), "bias": _normal((3,), 5)}}
  variables = {"params": p}
  assert _shapes(jax.eval_shape(head.init, jax.random.key(0), feats)) == (
      _shapes(variables))
  out = np.asarray(jax.jit(head.apply)(variables, feats))
  assert out.shape == (3, 5)
  np.testing.assert_allclose(
      out[:, :2], feats @ p["head_0"]["kernel"] + p["head_0"]["bias"],
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      out[:, 2:], feats @ p["head_1"]["kernel"] + p["head_1"]["bias"],
      rtol=1e-5, atol=1e-6)
  # Inside a model the heads sit under params['head'].
  model = make_model("mlp", 5, hidden_sizes=(3,), head="multi",
                     head_sizes=(2, 3))
  shapes = jax.eval_shape(lambda: init_model(model, jax.random.key(0), (1, 4)))
  assert _shapes(shapes["params"]["head"]) == {
      "head_0": {"kernel": (3, 2), "bias": (2,)},
      "head_1": {"kernel": (3, 3), "bias": (3,)}}


def test_init_model_needs_a_batch_axis():
  with pytest.raises(ConfigError, match="batch axis"):
    init_model(make_model("mlp", 3), jax.random.key(0), (784,))


def test_registry_rejects_bad_configs_with_one_line():
  assert names()[:3] == ("mlp", "resnet18", "zenke_cnn")
  with pytest.raises(ConfigError) as err:
    make_model("vgg", 10)
  msg = str(err.value)
  assert "\n" not in msg
  assert all(name in msg for name in names())
  with pytest.raises(ConfigError, match="head_sizes"):
    make_model("mlp", 10, head="multi")
  with pytest.raises(ConfigError, match="sum to"):
    make_model("zenke_cnn", 10, head="multi", head_sizes=(5, 4))
  with pytest.raises(ConfigError, match="valid heads"):
    make_model("resnet18", 10, head="per_task")
  with pytest.raises(ConfigError, match="nf"):
    make_model("resnet18", 10, nf=0)
  with pytest.raises(ConfigError, match="width_multiplier"):
    make_model("zenke_cnn", 10, width_multiplier=0)
  with pytest.raises(ConfigError, match="hidden_sizes"):
    make_model("mlp", 10, hidden_sizes=(10, 0))


def test_resnet18_parameter_names_and_shapes():
  model = make_model("resnet18", 10, nf=4)
  shapes = _shapes(jax.eval_shape(
      lambda: init_model(model, jax.random.key(0), (1, 32, 32, 3))))
  assert set(shapes) == {"params", "batch_stats"}
  p = shapes["params"]
  blocks = [f"layer{s}_{b}" for s in range(1, 5) for b in range(2)]
  assert set(p) == {"conv1", "bn1", "head", *blocks}
  # Convs have no bias; only the first block of stages 2-4 changes shape.
  assert p["conv1"] == {"kernel": (3, 3, 3, 4)}
  assert p["bn1"] == {"scale": (4,), "bias": (4,)}
  for name in blocks:
    expect = {"conv1", "bn1", "conv2", "bn2"}
    if name in ("layer2_0", "layer3_0", "layer4_0"):
      expect |= {"shortcut_conv", "shortcut_bn"}
    assert set(p[name]) == expect, name
    assert set(p[name]["conv1"]) == {"kernel"}
  assert p["layer2_0"]["conv1"]["kernel"] == (3, 3, 4, 8)
  assert p["layer2_0"]["shortcut_conv"]["kernel"] == (1, 1, 4, 8)
  assert p["layer4_1"]["conv2"]["kernel"] == (3, 3, 32, 32)
  assert p["head"] == {"kernel": (32, 10), "bias": (10,)}
  assert shapes["batch_stats"]["bn1"] == {"mean": (4,), "var": (4,)}


def test_resnet18_train_mode_updates_batch_stats_pytorch_style():
  model = make_model("resnet18", 3, nf=4)
  variables = _variables(model, (8, 8, 3))
  x = _normal((2, 8, 8, 3))
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  logits, state = apply(variables, x, train=True,
                        mutable=("batch_stats", "intermediates"))
  assert logits.shape == (2, 3)
  acts = collect_activations(state["intermediates"])
  assert acts["conv1"].shape == (2, 8, 8, 4)
  assert acts["layer2_0/conv1"].shape == (2, 4, 4, 8)
  assert acts["layer4_1/conv2"].shape == (2, 1, 1, 32)
  assert len(acts) == 17 and all(float(a.min()) >= 0 for a in acts.values())
  # Running stats move 10% towards the batch statistics (PyTorch momentum
  # 0.1) of the stem conv output, a stride-1 conv with padding 1.
  conv = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stats = state["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"], 0.1 * conv.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"],
                             0.9 + 0.1 * conv.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Eval mode uses the running averages and needs nothing mutable.
  eval_logits = apply({**variables, "batch_stats": state["batch_stats"]}, x)
  assert eval_logits.shape == (2, 3)
  assert not np.allclose(eval_logits, logits)


def test_resnet18_runs_on_32_and_64_pixel_inputs():
  model = make_model("resnet18", 5, nf=4)
  variables = jax.eval_shape(
      lambda: init_model(model, jax.random.key(0), (1, 32, 32, 3)))
  for side in (32, 64):
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    out, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True,
                                 mutable=["batch_stats", "intermediates"]),
        variables, x)
    assert out.shape == (1, 5)
    acts = collect_activations(state["intermediates"])
    assert acts["layer4_1/conv2"].shape == (1, side // 8, side // 8, 32)


def test_zenke_cnn_layers_and_dropout():
  model = make_model("zenke_cnn", 4)
  variables = _variables(model, (12, 12, 3))
  # 12 -> 12 (same) -> 10 (valid) -> 5 (pool) -> 5 -> 3 -> 1: 64 features.
  assert _shapes(variables["params"]) == {
      "conv_0": {"kernel": (3, 3, 3, 32), "bias": (32,)},
      "conv_1": {"kernel": (3, 3, 32, 32), "bias": (32,)},
      "conv_2": {"kernel": (3, 3, 32, 64), "bias": (64,)},
      "conv_3": {"kernel": (3, 3, 64, 64), "bias": (64,)},
      "dense_0": {"kernel": (64, 512), "bias": (512,)},
      "head": {"kernel": (512, 4), "bias": (4,)},
  }
  x = _normal((2, 12, 12, 3))
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  out, state = apply(variables, x, mutable=("intermediates",))
  acts = collect_activations(state["intermediates"])
  assert {k: v.shape for k, v in acts.items()} == {
      "conv_0": (2, 12, 12, 32), "conv_1": (2, 10, 10, 32),
      "conv_2": (2, 5, 5, 64), "conv_3": (2, 3, 3, 64), "dense_0": (2, 512)}
  np.testing.assert_array_equal(out, apply(variables, x))
  key_a, key_b = jax.random.key(2), jax.random.key(3)
  train_a = apply(variables, x, train=True, rngs={"dropout": key_a})
  np.testing.assert_array_equal(
      train_a, apply(variables, x, train=True, rngs={"dropout": key_a}))
  assert not np.allclose(train_a, out)
  assert not np.allclose(
      train_a, apply(variables, x, train=True, rngs={"dropout": key_b}))


def test_zenke_cnn_width_multiplier_scales_hidden_layers():
  model = make_model("zenke_cnn", 10, width_multiplier=2, head="multi",
                     head_sizes=(4, 6))
  p = _shapes(jax.eval_shape(
      lambda: init_model(model, jax.random.key(0), (1, 32, 32, 3)))["params"])
  assert p["conv_0"]["kernel"] == (3, 3, 3, 64)
  assert p["conv_3"]["kernel"] == (3, 3, 128, 128)
  # 32 -> 30 -> 15 -> 13 -> 6: 6 * 6 * 128 inputs to dense_0.
  assert p["dense_0"]["kernel"] == (6 * 6 * 128, 1024)
  assert p["head"]["head_1"]["kernel"] == (1024, 6)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", dict(hidden_sizes=(6, 5)), (1, 3, 3, 1)),
    ("mlp", dict(hidden_sizes=(6, 4), group=2, sparsity=0.5), (1, 8)),
    ("resnet18", dict(nf=4), (1, 8, 8, 3)),
    ("resnet18", dict(nf=4, head="multi", head_sizes=(2, 3)), (1, 8, 8, 3)),
    ("zenke_cnn", dict(), (1, 12, 12, 3)),
    ("zenke_cnn", dict(group=16, sparsity=0.75), (1, 12, 12, 3)),
])
def test_declared_sparse_layers_are_sparcls_default_rule(name, kwargs, shape):
  # Each model now declares its sparse layers; on the built-in models the
  # declaration must select exactly what the one shared rule selected.
  num_outputs = 5 if kwargs.get("head") == "multi" else 4
  model = make_model(name, num_outputs, **kwargs)
  params = jax.eval_shape(
      lambda: init_model(model, jax.random.key(0), shape))["params"]
  declared = registry.get(name).sparse_filter
  chosen = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    text = "/".join(k.key for k in path)
    assert declared(text, leaf) == sparsity.default_sparse_filter(text, leaf)
    if declared(text, leaf):
      chosen.add(text)
  expected = {"mlp": 0 if kwargs.get("group") else 2, "resnet18": 16,
              "zenke_cnn": 0}[name]
  assert len(chosen) == expected


def test_models_declare_clnp_specs_and_batch_norm():
  assert registry.get("mlp").clnp_layer_specs is mlp_layer_specs
  assert registry.get("zenke_cnn").clnp_layer_specs is cnn_layer_specs
  assert registry.get("resnet18").clnp_layer_specs is None
  assert [n for n in names() if registry.get(n).batch_norm] == ["resnet18"]
  assert [n for n in names() if registry.get(n).grouped] == [
      "mlp", "resnet18", "zenke_cnn"]
  with pytest.raises(ConfigError, match="exist for the mlp, resnet18, "
                     "zenke_cnn models only, not 'small_vgg'"):
    make_model("small_vgg", 10, group=2)
  with pytest.raises(ValueError, match="'mlp' is empty or taken"):
    registry.register(registry.get("mlp"))


def test_model_choices_come_from_the_registry():
  from sparcl_jax.training import config  # pylint: disable=g-import-not-at-top
  assert config.MODELS == names()
