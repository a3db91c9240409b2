"""Structured Zenke CNN: which layers are grouped, the model against the
dense one it stands for (dropout on), grouped_tdm over it, its FLOPs (by
hand and against XLA) and a whole run through the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks.data_formats import write_cifar_folder
from grouped_checks import check_conv_update
from sparcl_jax import flops
from sparcl_jax.models import registry
from sparcl_jax.models.cnn import GROUPED_LAYERS, ZenkeCNN
from sparcl_jax.sparse import grouped_conv
from sparcl_jax.sparse.grouped_tdm import (dense_view, grouped_layers,
                                           grouped_tdm, tdm_rows)
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.sparsity import keep_count
from sparcl_jax.training import cli
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.run_state import model_layer_macs

GROUP, SPARSITY, SIDE = 16, 0.75, 16
FAN_IN = {"conv_1": 32, "conv_2": 32, "conv_3": 64}
SCHEDULE = MaskSchedule(update_interval=1, epochs_per_task=4,
                        extra_growth=0.125, swap_fraction=0.25)
STEPS_PER_EPOCH = 2


def _grouped_zenke(side=SIDE, group=GROUP, sparsity=SPARSITY):
  model = registry.make_model("zenke_cnn", 10, group=group,
                              sparsity=sparsity)
  return model, registry.init_model(model, jax.random.key(0),
                                    (1, side, side, 3))


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_conv_1_to_conv_3_are_grouped_and_keep_k_channels_a_block():
  assert GROUPED_LAYERS == ("conv_1", "conv_2", "conv_3")
  _, variables = _grouped_zenke()
  params = variables["params"]
  assert grouped_layers(variables["sparsity"]) == FAN_IN
  assert params["conv_0"]["kernel"].shape == (3, 3, 3, 32)
  # 16 -> 16 (SAME) -> 14 (VALID) -> 7 -> 7 -> 5 -> 2: 2 * 2 * 64 inputs.
  assert params["dense_0"]["kernel"].shape == (2 * 2 * 64, 512)
  assert params["head"]["kernel"].shape == (512, 10)
  for layer, fan_in in FAN_IN.items():
    k = round((1 - SPARSITY) * fan_in)
    width = 32 if layer == "conv_1" else 64
    assert params[layer]["values"].shape == (width // GROUP, 3, 3, k, GROUP)
    assert params[layer]["bias"].shape == (width,)
    rows = np.asarray(variables["sparsity"][layer]["rows"])
    assert all(len(set(block)) == k for block in rows.tolist())
    assert (np.asarray(variables["sparsity"][layer]["kept"]).sum(-1)
            == k).all()


def test_widths_and_default_group_follow_the_width_multiplier():
  args = registry.ModelArgs(10, width_multiplier=3)
  assert registry.get("zenke_cnn").grouped_widths(args) == {
      "conv_1": 96, "conv_2": 192, "conv_3": 192}
  assert registry.group_size("zenke_cnn", 0, args) == 16
  assert registry.group_size("zenke_cnn", 32, args) == 32
  model = registry.make_model("zenke_cnn", 10, width_multiplier=3, group=16,
                              sparsity=0.5)
  v = jax.eval_shape(lambda: registry.init_model(
      model, jax.random.key(0), (1, 12, 12, 3)))
  assert v["params"]["conv_3"]["values"].shape == (12, 3, 3, 96, 16)
  with pytest.raises(Exception, match="--mask_group=64 must divide every "
                     "hidden width: conv_1 has 32 outputs; valid sizes: 1, "
                     "2, 4, 8, 16, 32."):
    registry.make_model("zenke_cnn", 10, group=64, sparsity=0.5)


@pytest.mark.parametrize("train", [False, True])
def test_grouped_zenke_is_the_dense_zenke_with_the_channel_mask(train):
  # Outputs and the gradients to the kept kernels and to the input equal
  # the dense model's with the dense view of the kernels (dropout on with
  # the same key when training).
  model, variables = _grouped_zenke()
  dense_params = dense_view(variables["params"], variables["sparsity"])[0]
  dense = ZenkeCNN(10)
  x = jax.random.normal(jax.random.key(1), (4, SIDE, SIDE, 3))
  rngs = {"dropout": jax.random.key(2)}

  def loss(apply, p, x):
    out = apply(p, x)
    return (out**2).sum(), out

  def grouped_apply(p, x):
    return model.apply({"params": p, "sparsity": variables["sparsity"]}, x,
                       train=train, rngs=rngs)

  def dense_apply(p, x):
    return dense.apply({"params": p}, x, train=train, rngs=rngs)

  (gp, gx), g_out = jax.grad(lambda p, x: loss(grouped_apply, p, x),
                             argnums=(0, 1), has_aux=True)(
                                 variables["params"], x)
  (dp, dx), d_out = jax.grad(lambda p, x: loss(dense_apply, p, x),
                             argnums=(0, 1), has_aux=True)(dense_params, x)
  np.testing.assert_allclose(g_out, d_out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gx, dx, rtol=1e-4, atol=1e-5)
  for layer in FAN_IN:
    rows = variables["sparsity"][layer]["rows"]
    np.testing.assert_allclose(
        gp[layer]["values"],
        grouped_conv.from_dense(dp[layer]["kernel"], rows),
        rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gp[layer]["bias"], dp[layer]["bias"],
                               rtol=1e-4, atol=1e-5)
  for layer in ("conv_0", "dense_0"):
    np.testing.assert_allclose(gp[layer]["kernel"], dp[layer]["kernel"],
                               rtol=1e-4, atol=1e-5)


def _run_transform(tasks=1, lr=0.05):
  """Trains the grouped Zenke CNN (dropout on) on random data; yields per
  step what changed."""
  model, variables = _grouped_zenke()
  tx = grouped_tdm(optax.sgd(lr), kept_rows=variables["sparsity"],
                   schedule=SCHEDULE, importance_lambda=0.5, seed=3)
  params = variables["params"]
  state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (8, SIDE, SIDE, 3))
  y = jnp.arange(8) % 10

  @jax.jit
  def step(params, state, epoch, step_in_epoch, key):
    def loss(p):
      logits = model.apply({"params": p, "sparsity": tdm_rows(state)}, x,
                           train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             y).mean()

    grads = jax.grad(loss)(params)
    updates, new_state = tx.update(grads, state, params, epoch=epoch,
                                   step_in_epoch=step_in_epoch)
    return optax.apply_updates(params, updates), new_state, grads

  key = jax.random.key(4)
  for _ in range(tasks):
    for epoch in range(SCHEDULE.epochs_per_task):
      for s in range(STEPS_PER_EPOCH):
        key, sub = jax.random.split(key)
        new_params, new_state, grads = step(params, state, epoch, s, sub)
        yield epoch, s, params, state, new_params, new_state, grads
        params, state = new_params, new_state
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_drop_and_grow_keeps_exact_counts_and_zero_pruned_weights():
  seen_swaps = 0
  for epoch, s, params, state, new_params, new_state, grads in (
      _run_transform()):
    before, after = _flat(tdm_rows(state)), _flat(tdm_rows(new_state))
    assert grouped_layers(tdm_rows(new_state)) == FAN_IN
    values, new_values = _flat(params), _flat(new_params)
    grad_values = _flat(grads)
    dense, masks = dense_view(new_params, tdm_rows(new_state))
    dense, masks = _flat(dense), _flat(masks)
    assert {p for p, m in masks.items() if m is not None} == {
        f"{layer}/kernel" for layer in FAN_IN}
    for layer, fan_in in FAN_IN.items():
      seen_swaps += check_conv_update(
          layer, fan_in, round((1 - SPARSITY) * fan_in), before=before,
          after=after, values=values, grads=grad_values,
          new_values=new_values, dense=dense, masks=masks, lr=0.05,
          schedule=SCHEDULE, epoch=epoch, step=s)
  # The task start and 2 middle updates, in each of the 3 grouped convs.
  assert seen_swaps == 3 * 3


def _hand_layers(side, channels=3, w=1):
  """The Zenke CNN's kernels: ``{path: (output positions, fan-in, output
  units, taps)}``."""
  s1 = side - 2  # conv_1 VALID
  s2 = s1 // 2   # pool
  s3 = s2 - 2    # conv_3 VALID
  s4 = s3 // 2   # pool
  return {"conv_0/kernel": (side * side, channels, 32 * w, 9),
          "conv_1/kernel": (s1 * s1, 32 * w, 32 * w, 9),
          "conv_2/kernel": (s2 * s2, 32 * w, 64 * w, 9),
          "conv_3/kernel": (s3 * s3, 64 * w, 64 * w, 9),
          "dense_0/kernel": (1, s4 * s4 * 64 * w, 512 * w, 1),
          "head/kernel": (1, 512 * w, 10, 1)}


def _hand_macs(side, kept_share=None):
  macs = {}
  for path, (positions, fan_in, c_out, taps) in _hand_layers(side).items():
    if kept_share is not None and path.split("/")[0] in FAN_IN:
      fan_in = round(kept_share * fan_in)
    macs[path] = positions * fan_in * c_out * taps
  return macs


def test_grouped_conv_layers_are_90_percent_of_the_macs_at_32x32():
  macs = _hand_macs(32)
  total = sum(macs.values())
  assert total == 20_741_120
  share = {p.split("/")[0]: m / total for p, m in macs.items()}
  assert sum(share[layer] for layer in FAN_IN) == pytest.approx(0.9002,
                                                                abs=1e-4)
  assert share["conv_0"] == pytest.approx(0.0427, abs=1e-4)
  assert share["dense_0"] == pytest.approx(0.0569, abs=1e-4)
  model = registry.make_model("zenke_cnn", 10)
  v = registry.init_model(model, jax.random.key(0), (1, 32, 32, 3))
  assert model_layer_macs(model, v["params"], {}, (32, 32, 3)) == macs


def test_grouped_zenke_macs_match_a_hand_count_and_xla():
  model, variables = _grouped_zenke()
  want = _hand_macs(SIDE, kept_share=1 - SPARSITY)

  def forward(p, x):
    return model.apply({"params": p, "sparsity": variables["sparsity"]}, x)

  x = jnp.ones((2, SIDE, SIDE, 3))
  got = flops.layer_macs(forward, variables["params"], x)
  assert {p.replace("/values", "/kernel"): m for p, m in got.items()} == want
  # The dense view, as a run counts it: dense MACs discounted exactly by
  # the kept share.
  dense_params, masks = dense_view(variables["params"], variables["sparsity"])
  dense = model_layer_macs(ZenkeCNN(10), dense_params, {}, (SIDE, SIDE, 3))
  assert dense == _hand_macs(SIDE)
  for path, mask in _flat(masks).items():
    if mask is not None:
      assert dense[path] * float(np.asarray(mask).mean()) == want[path]

  # XLA's cost analysis of the whole model's gradient to the parameters,
  # grouped and dense: 2 FLOPs a MAC; every kernel's forward and
  # backward-to-weights product, and backward-to-activations except
  # conv_0's (the input needs none); the SAME convs (conv_0, conv_2) less
  # the taps XLA skips on the zero padding ((3n - 2) / 3n per axis of an
  # n x n map). The rest of the model (bias, ReLU, pooling, the loss) is
  # the same in both and about 3% of the grouped count, so the grouped
  # model saves exactly (to 0.1%) the MACs its blocks do not read.
  batch = 8
  xs = jax.random.normal(jax.random.key(1), (batch, SIDE, SIDE, 3))

  def xla_flops(apply, p):
    grad = jax.jit(jax.grad(lambda p, x: (apply(p, x)**2).sum()))
    return grad.lower(p, xs).compile().cost_analysis()["flops"]

  def ours(macs):
    padded = {"conv_0/kernel": SIDE, "conv_2/kernel": (SIDE - 2) // 2}
    total = 0.0
    for path, m in macs.items():
      products = 2 if path == "conv_0/kernel" else 3
      n = padded.get(path)
      share = ((3 * n - 2) / (3 * n))**2 if n else 1.0
      total += 2 * products * m * batch * share
    return total

  grouped_xla = xla_flops(forward, variables["params"])
  dense_xla = xla_flops(
      lambda p, x: ZenkeCNN(10).apply({"params": p}, x), dense_params)
  assert grouped_xla == pytest.approx(ours(want), rel=0.05)
  assert dense_xla - grouped_xla == pytest.approx(
      ours(_hand_macs(SIDE)) - ours(want), rel=1e-3)


def test_structured_zenke_run_compiles_its_chunk_once(tmp_path, caplog):
  # A CIFAR-10-shaped folder of 40 train and 10 test random 32x32x3 images
  # (digits' 8x8 images are too small for the CNN's two VALID convs and
  # two pools).
  write_cifar_folder(str(tmp_path / "data"), "cifar10", train_per_batch=8,
                     test=10)
  args = ["train.py", f"--workdir={tmp_path / 'run'}", "--dataset=cifar10",
          "--data_source=files", f"--data_dir={tmp_path / 'data'}",
          "--nodownload", "--scenario=split", "--model=zenke_cnn",
          "--method=sparcl_derpp", "--mask_structure=grouped",
          "--sparsity=0.75", "--epochs=1", "--num_tasks=2",
          "--batch_size=8", "--minibatch_size=8", "--buffer_size=20",
          "--steps_per_call=100", "--lr=0.05", "--mask_update_interval=1",
          # 1/32: the least share that moves a channel of conv_1's 32.
          "--mask_extra_growth=0.03125", "--mask_swap_fraction=0.03125",
          "--noprogress", "--notensorboard"]
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING, logger="jax"):
      assert cli.main(args) == 0
  finally:
    jax.config.update("jax_log_compiles", False)
  chunk_compiles = [r for r in caplog.records
                    if "Finished XLA compilation of jit(chunk)"
                    in r.getMessage()]
  assert len(chunk_compiles) == 1
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert np.shape(results["acc_matrix"]["class_il"]) == (2, 2)
  layers = results["sparsity"]["masks"]["layers"]
  assert sorted(layers) == ["conv_1/kernel", "conv_2/kernel",
                            "conv_3/kernel"]
  for layer, fan_in in FAN_IN.items():
    width = 32 if layer == "conv_1" else 64
    k = round(0.25 * fan_in)
    assert layers[f"{layer}/kernel"]["nnz"] == 9 * k * width
    assert layers[f"{layer}/kernel"]["sparsity"] == pytest.approx(0.75)
  # Exact FLOPs (as test_grouped_resnet): a grouped conv costs its kept
  # MACs forward and backward to activations, backward to weights the
  # share DGM keeps; every other kernel 3x its MACs.
  per_example = 0
  sparse = _hand_macs(32, kept_share=0.25)
  for path, (positions, fan_in, c_out, taps) in _hand_layers(32).items():
    macs = positions * fan_in * c_out * taps
    if path.split("/")[0] in FAN_IN:
      kept_grads = keep_count(round(0.25 * fan_in) * taps * c_out, 0.2)
      per_example += 2 * sparse[path] + macs * kept_grads / (
          fan_in * taps * c_out)
    else:
      per_example += 3 * macs
  assert results["train_flops"] == pytest.approx(
      2.0 * per_example * results["train_examples"], rel=1e-9)


def test_grouped_flags_name_the_zenke_layers_when_refusing():
  values = dict(workdir="/tmp/x", method="sparcl_derpp", model="zenke_cnn",
                mask_structure="grouped", sparse_layers="conv_0")
  with pytest.raises(Exception, match="Zenke CNN conv_1..conv_3"):
    config_lib.validate(config_lib.from_dict(values))
  values.pop("sparse_layers")
  assert config_lib.validate(config_lib.from_dict(values)).group_size == 16


def test_structured_zenke_run_killed_mid_task_resumes_bit_identically(
    tmp_path):
  # The kill lands in task 2's second epoch, after a mid-task checkpoint:
  # the kept channels, the kept kernels, the dropout key, the DGM state and
  # the buffer all come back from it. (The runs are subprocesses of
  # experiments/train.py: they import the sparcl_jax that PYTHONPATH or
  # the installed package gives.)
  from test_faults import EXACT_KEYS, _kill_in_task_2_then_rerun
  write_cifar_folder(str(tmp_path / "data"), "cifar10", train_per_batch=40,
                     test=20)
  _kill_in_task_2_then_rerun(
      tmp_path, ["--dataset=cifar10", "--data_source=files",
                 f"--data_dir={tmp_path / 'data'}", "--nodownload",
                 "--scenario=split", "--model=zenke_cnn",
                 "--method=sparcl_derpp", "--mask_structure=grouped",
                 "--sparsity=0.75", "--epochs=2", "--num_tasks=2",
                 "--batch_size=8", "--minibatch_size=8",
                 "--buffer_size=30", "--lr=0.05", "--steps_per_call=1",
                 "--checkpoint_every_steps=5", "--ddr_epochs=1",
                 "--mask_update_interval=1", "--mask_swap_fraction=0.2",
                 # 1/32: the least share that moves a channel of 32.
                 "--mask_extra_growth=0.03125",
                 "--noprogress", "--notensorboard"], EXACT_KEYS)


_DATA_PARALLEL = r"""
import json, sys
from sparcl_jax.training import cli, config as config_lib, loop, run_state
base = cli.parse_config(["train.py", "--workdir=" + sys.argv[1]]
                        + sys.argv[2:])
scenario = run_state.build_scenario(base)
out = {}
for n in (1, 2):
  out[n] = loop.run(config_lib.replace(base, num_devices=n,
                                       workdir=sys.argv[1] + str(n)),
                    scenario=scenario)
print("RESULT " + json.dumps(out))
"""


def test_structured_zenke_on_two_devices_matches_one(tmp_path):
  # 2 forced host devices in a subprocess (the count is fixed when JAX
  # starts); it imports the sparcl_jax that PYTHONPATH or the installed
  # package gives.
  write_cifar_folder(str(tmp_path / "data"), "cifar10", train_per_batch=8,
                     test=10)
  script = tmp_path / "probe.py"
  script.write_text(_DATA_PARALLEL)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
      [sys.executable, str(script), str(tmp_path / "run"),
       "--dataset=cifar10", "--data_source=files",
       f"--data_dir={tmp_path / 'data'}", "--nodownload", "--scenario=split",
       "--model=zenke_cnn", "--method=sparcl_derpp",
       "--mask_structure=grouped", "--sparsity=0.75", "--epochs=1",
       "--num_tasks=2", "--batch_size=8", "--minibatch_size=8",
       "--buffer_size=20", "--lr=0.05", "--mask_update_interval=1",
       "--mask_extra_growth=0.03125", "--mask_swap_fraction=0.03125",
       "--noprogress", "--notensorboard"],
      capture_output=True, text=True, timeout=400, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  out = json.loads(line[len("RESULT "):])
  one, two = out["1"], out["2"]
  assert two["flags"]["num_devices"] == 2
  for kind in ("class_il", "task_il"):
    np.testing.assert_allclose(one["acc_matrix"][kind],
                               two["acc_matrix"][kind], atol=0.5)
  assert one["train_flops"] == two["train_flops"]
  assert one["sparsity"]["masks"] == two["sparsity"]["masks"]
