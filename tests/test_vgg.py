"""The small VGG-style CNN: shapes, declared sparse layers, CLNP specs, a run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax import clnp
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods.clnp import layer_specs
from sparcl_jax.models import registry
from sparcl_jax.training import cli


def _params(model, shape):
  # Shapes are all these checks read: no initialiser is compiled.
  return jax.eval_shape(
      lambda: registry.init_model(model, jax.random.key(0), shape))["params"]


def test_small_vgg_layers_and_outputs():
  model = registry.make_model("small_vgg", 7)
  variables = jax.eval_shape(
      lambda: registry.init_model(model, jax.random.key(0), (1, 28, 28, 1)))
  assert set(variables) == {"params"}  # no batch norm
  shapes = jax.tree.map(lambda a: a.shape, variables["params"])
  assert shapes == {
      "conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
      "conv_1": {"kernel": (3, 3, 32, 32), "bias": (32,)},
      "conv_2": {"kernel": (3, 3, 32, 64), "bias": (64,)},
      "conv_3": {"kernel": (3, 3, 64, 64), "bias": (64,)},
      "dense_0": {"kernel": (7 * 7 * 64, 128), "bias": (128,)},
      "head": {"kernel": (128, 7), "bias": (7,)},
  }
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables,
      jnp.zeros((3, 28, 28, 1)))
  assert logits.shape == (3, 7)
  acts = registry.collect_activations(state["intermediates"])
  assert {k: v.shape for k, v in acts.items()} == {
      "conv_0": (3, 28, 28, 32), "conv_1": (3, 28, 28, 32),
      "conv_2": (3, 14, 14, 64), "conv_3": (3, 14, 14, 64),
      "dense_0": (3, 128)}
  multi = registry.make_model("small_vgg", 5, head="multi", head_sizes=(2, 3))
  v = jax.eval_shape(
      lambda: registry.init_model(multi, jax.random.key(1), (1, 8, 8, 3)))
  out = jax.eval_shape(multi.apply, v, jnp.zeros((2, 8, 8, 3)))
  assert out.shape == (2, 5)


def test_small_vgg_declares_sparse_layers_and_no_batch_norm():
  spec = registry.get("small_vgg")
  assert not spec.batch_norm and not spec.grouped
  params = _params(registry.make_model("small_vgg", 10), (1, 32, 32, 3))
  chosen = sorted(
      "/".join(k.key for k in path)
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
      if spec.sparse_filter("/".join(k.key for k in path), leaf))
  assert chosen == ["conv_1/kernel", "conv_2/kernel", "conv_3/kernel",
                    "dense_0/kernel"]
  with pytest.raises(ConfigError,
                     match="for the mlp, resnet18, zenke_cnn models only, not "
                     "'small_vgg'"):
    registry.make_model("small_vgg", 10, group=4)


def test_small_vgg_clnp_layer_specs_partition_its_units():
  params = _params(registry.make_model("small_vgg", 4, head="multi",
                                       head_sizes=(2, 2)), (1, 8, 8, 1))
  specs = layer_specs("small_vgg", params)
  assert [(s.name, s.kind, s.input_layer, s.role) for s in specs] == [
      ("conv_0", "conv", None, "hidden"),
      ("conv_1", "conv", "conv_0", "hidden"),
      ("conv_2", "conv", "conv_1", "hidden"),
      ("conv_3", "conv", "conv_2", "hidden"),
      ("dense_0", "flatten_dense", "conv_3", "hidden"),
      ("head/head_0", "dense", "dense_0", "head"),
      ("head/head_1", "dense", "dense_0", "head"),
  ]
  # 8x8 pooled twice leaves 2x2 positions per conv_3 channel.
  assert specs[4].spatial == 4
  used = clnp.init_used(params, specs)
  assert {k: v.shape for k, v in used.items()} == {
      "conv_0": (32,), "conv_1": (32,), "conv_2": (64,), "conv_3": (64,),
      "dense_0": (128,)}
  # Task 1 after task 0 kept the first half of every layer's units: task 1
  # trains only the free half, and no kept unit reads a free one.
  kept = {k: np.arange(len(v)) < len(v) // 2 for k, v in used.items()}
  part = clnp.compute_partition(params, specs, kept, task=1)
  trainable = jax.tree.map(np.asarray, part.trainable)
  zero = jax.tree.map(np.asarray, part.zero)
  conv = trainable["conv_1"]["kernel"]
  assert not conv[..., :16].any() and conv[..., 16:].all()
  assert zero["conv_1"]["kernel"][:, :, 16:, :16].all()
  assert not zero["conv_1"]["kernel"][:, :, :16, :].any()
  dense = trainable["dense_0"]["kernel"]
  assert not dense[:, :64].any() and dense[:, 64:].all()
  # dense_0's rows are (position, conv_3 channel) pairs: the free channels
  # 32..63 at each of the 4 positions feed no kept dense unit.
  rows = zero["dense_0"]["kernel"].reshape(4, 64, 128)
  assert rows[:, 32:, :64].all() and not rows[:, :32, :].any()
  assert trainable["head"]["head_1"]["kernel"].all()
  assert not trainable["head"]["head_0"]["kernel"].any()


def test_train_py_trains_small_vgg(tmp_path, capsys):
  workdir = tmp_path / "run"
  status = cli.main(["train.py", f"--workdir={workdir}", "--dataset=digits",
                     "--data_source=digits", "--scenario=split",
                     "--num_tasks=2", "--model=small_vgg", "--method=sgd",
                     "--epochs=1", "--batch_size=64"])
  assert status == 0, capsys.readouterr().err
  results = json.loads((workdir / "results.json").read_text())
  assert results["flags"]["model"] == "small_vgg"
  task_il = results["acc_matrix"]["task_il"]
  assert len(task_il) == 2 and all(len(row) == 2 for row in task_il)
