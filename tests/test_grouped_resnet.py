"""Structured ResNet-18: grouped_tdm over conv kernels, the grouped model,
its FLOPs (by hand and against XLA) and a whole run through the CLI."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grouped_checks import check_conv_update
from sparcl_jax import flops
from sparcl_jax.errors import ConfigError
from sparcl_jax.models import registry
from sparcl_jax.models.grouped_conv import GroupedSparseConv
from sparcl_jax.sparse import grouped
from sparcl_jax.sparse.grouped_tdm import (dense_view, grouped_layers,
                                           grouped_tdm, tdm_rows)
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.sparsity import keep_count
from sparcl_jax.training import cli
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.run_state import model_layer_macs

NF, GROUP, SPARSITY, SIDE = 4, 4, 0.75, 8
# Swaps of 1, 2, 4, 8 rows (input channels) in the stages' fan-ins 4..32.
SCHEDULE = MaskSchedule(update_interval=1, epochs_per_task=4,
                        extra_growth=0.25, swap_fraction=0.25)
STEPS_PER_EPOCH = 2


def _grouped_resnet(nf=NF, group=GROUP, sparsity=SPARSITY, side=SIDE,
                    channels=1):
  model = registry.make_model("resnet18", 10, nf=nf, group=group,
                              sparsity=sparsity)
  variables = registry.init_model(model, jax.random.key(0),
                                  (1, side, side, channels))
  return model, variables


def _run_transform(tasks=2, lr=0.1):
  """Trains the grouped ResNet on random data; yields per step what
  changed."""
  model, variables = _grouped_resnet()
  tx = grouped_tdm(optax.sgd(lr), kept_rows=variables["sparsity"],
                   schedule=SCHEDULE, importance_lambda=0.5, seed=3)
  params, stats = variables["params"], variables["batch_stats"]
  state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (8, SIDE, SIDE, 1))
  y = jnp.arange(8) % 10

  @jax.jit
  def step(params, stats, state, epoch, step_in_epoch):
    def loss(p):
      logits, new = model.apply(
          {"params": p, "batch_stats": stats, "sparsity": tdm_rows(state)},
          x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), new["batch_stats"]

    grads, stats = jax.grad(loss, has_aux=True)(params)
    updates, new_state = tx.update(grads, state, params, epoch=epoch,
                                   step_in_epoch=step_in_epoch)
    return optax.apply_updates(params, updates), stats, new_state, grads

  for _ in range(tasks):
    for epoch in range(SCHEDULE.epochs_per_task):
      for s in range(STEPS_PER_EPOCH):
        new_params, stats, new_state, grads = step(params, stats, state,
                                                   epoch, s)
        yield epoch, s, params, state, new_params, new_state, grads
        params, state = new_params, new_state
  assert step._cache_size() == 1  # pylint: disable=protected-access


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_conv_drop_and_grow_keeps_exact_counts_and_zero_pruned_weights():
  seen_swaps = 0
  for epoch, s, params, state, new_params, new_state, grads in (
      _run_transform(tasks=1)):
    before, after = tdm_rows(state), tdm_rows(new_state)
    fan_ins = grouped_layers(after)
    assert len(fan_ins) == 16  # two convs in each of 8 residual blocks
    flat_before, flat_after = _flat(before), _flat(after)
    values, new_values = _flat(params), _flat(new_params)
    grad_values = _flat(grads)
    dense, masks = dense_view(new_params, after)
    dense, masks = _flat(dense), _flat(masks)
    for layer, fan_in in fan_ins.items():
      seen_swaps += check_conv_update(
          layer, fan_in, round(0.25 * fan_in), before=flat_before,
          after=flat_after, values=values, grads=grad_values,
          new_values=new_values, dense=dense, masks=masks, lr=0.1,
          schedule=SCHEDULE, epoch=epoch, step=s)
  # 3 swapping epochs (the task start, 2 middle updates) x the 16 convs.
  assert seen_swaps == 3 * 16


def test_conv_drop_removes_the_channel_of_lowest_importance_over_taps():
  # Channel slot 2 is least important summed over its 9 taps and 2 units,
  # though one of its taps is the largest weight of the block.
  values = jnp.ones((1, 3, 3, 4, 2)).at[0, :, :, 2].set(0.01)
  values = values.at[0, 1, 1, 2, 0].set(5.0)
  rows = jnp.array([[0, 1, 2, 3]], jnp.int32)
  kept_rows = {"conv": {"rows": rows,
                        "kept": grouped.kept_membership(rows, 8)}}
  tx = grouped_tdm(optax.sgd(0.0), kept_rows=kept_rows,
                   schedule=MaskSchedule(update_interval=1, epochs_per_task=3,
                                         extra_growth=0.125,
                                         swap_fraction=0.125))
  params = {"conv": {"values": values}}
  state = tx.init(params)
  updates, state = tx.update({"conv": {"values": jnp.zeros_like(values)}},
                             state, params, epoch=0, step_in_epoch=0)
  new_rows = np.asarray(tdm_rows(state)["conv"]["rows"])[0]
  assert new_rows[[0, 1, 3]].tolist() == [0, 1, 3] and new_rows[2] >= 4
  new = np.asarray(optax.apply_updates(params, updates)["conv"]["values"])
  assert (new[0, :, :, 2] == 0.0).all()
  assert (new[0, :, :, [0, 1, 3]] == 1.0).all()


def _hand_layers(nf, side, channels):
  """ResNet-18's kernels from its architecture: ``{kernel path: (output
  positions, fan-in, output channels, taps)}``."""
  layers = {"conv1/kernel": (side * side, channels, nf, 9)}
  c_in = nf
  for stage in range(4):
    width = nf * 2**stage
    if stage:
      side = (side + 1) // 2  # 3x3 pad 1 (and 1x1) stride 2: ceil
    for b in range(2):
      name = f"layer{stage + 1}_{b}"
      layers[f"{name}/conv1/kernel"] = (side * side, c_in if b == 0 else
                                        width, width, 9)
      layers[f"{name}/conv2/kernel"] = (side * side, width, width, 9)
      if b == 0 and stage:
        layers[f"{name}/shortcut_conv/kernel"] = (side * side, c_in, width,
                                                  1)
    c_in = width
  layers["head/kernel"] = (1, 8 * nf, 10, 1)
  return layers


def _is_block_conv(path):
  return path.startswith("layer") and "shortcut" not in path


def _hand_macs(nf, side, channels, kept_share=None):
  """Forward MACs per example by hand; with ``kept_share``, the block convs
  read ``round(kept_share * fan_in)`` input channels (every tap)."""
  macs = {}
  for path, (positions, fan_in, c_out, taps) in _hand_layers(
      nf, side, channels).items():
    if kept_share is not None and _is_block_conv(path):
      fan_in = round(kept_share * fan_in)
    macs[path] = positions * fan_in * c_out * taps
  return macs


def test_grouped_resnet_macs_match_a_hand_count_and_xla():
  model, variables = _grouped_resnet(side=16)
  want = _hand_macs(NF, 16, 1, kept_share=0.25)
  stats = variables["batch_stats"]

  def forward(p, x):
    return model.apply({"params": p, "batch_stats": stats,
                        "sparsity": variables["sparsity"]}, x)

  x = jnp.ones((2, 16, 16, 1))
  got = flops.layer_macs(forward, variables["params"], x)
  assert {p.replace("/values", "/kernel"): m for p, m in got.items()} == want
  # The dense view, as a run counts it: the dense MACs, discounted exactly
  # by the kept share k / fan_in.
  dense_params, masks = dense_view(variables["params"], variables["sparsity"])
  dense = model_layer_macs(registry.make_model("resnet18", 10, nf=NF),
                           dense_params, stats, (16, 16, 1))
  assert dense == _hand_macs(NF, 16, 1)
  for path, mask in _flat(masks).items():
    if mask is not None:
      assert dense[path] * float(np.asarray(mask).mean()) == want[path]

  # XLA's cost analysis of one grouped conv's forward and both backward
  # products: 2 FLOPs a MAC, 3 products, less the taps XLA skips on the
  # zero padding ((46 / 48)^2 of a 16x16 map's 3x3 window positions).
  layer = GroupedSparseConv(64, (3, 3), group=16, sparsity=0.75,
                            use_bias=False)
  xs = jnp.ones((8, 16, 16, 64))
  v = layer.init(jax.random.key(0), xs)

  def apply(p, x):
    return layer.apply({"params": p, "sparsity": v["sparsity"]}, x)

  macs = flops.layer_macs(apply, v["params"], xs)
  assert macs == {"values": 16 * 16 * 64 * 16 * 9}
  grads = jax.grad(lambda p, x: (apply(p, x)**2).sum(), argnums=(0, 1))
  xla = jax.jit(grads).lower(v["params"], xs).compile().cost_analysis()
  ours = 2 * 3 * macs["values"] * 8
  assert xla["flops"] == pytest.approx(ours * (46 / 48)**2, rel=0.02)


def test_shortcuts_stem_and_head_are_a_small_share_of_the_macs():
  for side, channels, stem, shortcut in ((28, 1, 0.0032, 0.0116),
                                         (32, 3, 0.0101, 0.0112)):
    macs = _hand_macs(20, side, channels)
    total = sum(macs.values())
    shortcuts = sum(m for p, m in macs.items() if "shortcut" in p)
    assert shortcuts / total == pytest.approx(shortcut, abs=0.0001)
    assert macs["conv1/kernel"] / total == pytest.approx(stem, abs=0.0002)
    assert macs["head/kernel"] / total < 1e-4
    model = registry.make_model("resnet18", 10, nf=20)
    v = registry.init_model(model, jax.random.key(0),
                            (1, side, side, channels))
    assert model_layer_macs(model, v["params"], v["batch_stats"],
                            (side, side, channels)) == macs


@pytest.mark.parametrize("changes, message", [
    (dict(mask_group=8), "--mask_group=8 must divide every hidden width: "
                         "layer1 has 20 outputs; valid sizes: 1, 2, 4, 5, "
                         "10, 20."),
    (dict(model="small_vgg"), "--mask_structure=grouped has layers for "
                              "--model=mlp, --model=resnet18, "
                              "--model=zenke_cnn only, not 'small_vgg'; use "
                              "the unstructured masks."),
])
def test_structured_resnet_flags_refuse_in_one_line(changes, message):
  values = dict(workdir="/tmp/x", method="sparcl_derpp", model="resnet18",
                nf=20, mask_structure="grouped")
  values.update(changes)
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    config_lib.validate(config_lib.from_dict(values))


def test_cli_refuses_a_group_that_does_not_divide_a_width(tmp_path, capsys):
  status = cli.main(["train.py", f"--workdir={tmp_path}", "--model=resnet18",
                     "--nf=20", "--method=sparcl_derpp",
                     "--mask_structure=grouped", "--mask_group=8",
                     "--dataset=digits", "--data_source=digits"])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2
  assert err == ["train.py: error: --mask_group=8 must divide every hidden "
                 "width: layer1 has 20 outputs; valid sizes: 1, 2, 4, 5, 10, "
                 "20."]


def test_default_group_is_nf_for_resnet_and_a_divisor_for_the_mlp():
  config = config_lib.from_dict(dict(workdir="/tmp/x", model="resnet18",
                                     nf=20, method="sparcl_derpp",
                                     mask_structure="grouped"))
  assert config_lib.validate(config).group_size == 20
  assert config_lib.replace(config, nf=64).group_size == 64
  assert config_lib.replace(config, nf=6).group_size == 6
  assert config_lib.replace(config, model="mlp",
                            hidden_sizes="2000,2000").group_size == 50
  assert config_lib.replace(config, model="mlp",
                            hidden_sizes="100,100").group_size == 50
  assert config_lib.replace(config, model="mlp",
                            hidden_sizes="64,96").group_size == 32


def test_structured_resnet_run_compiles_its_chunk_once(tmp_path, caplog):
  # Digits (8x8x1), nf 4: blocks of 4 channels keep round(0.25 C_in).
  args = ["train.py", f"--workdir={tmp_path}", "--dataset=digits",
          "--data_source=digits", "--scenario=split", "--model=resnet18",
          "--nf=4", "--method=sparcl_derpp", "--mask_structure=grouped",
          "--sparsity=0.75", "--epochs=1", "--num_tasks=2",
          "--batch_size=16", "--minibatch_size=16", "--buffer_size=50",
          "--steps_per_call=100", "--lr=0.05", "--mask_update_interval=1",
          "--mask_extra_growth=0.25", "--noprogress", "--notensorboard"]
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
  results = json.loads((tmp_path / "results.json").read_text())
  assert np.shape(results["acc_matrix"]["class_il"]) == (2, 2)
  # Exact FLOPs: a block conv costs its kept MACs forward and backward to
  # activations, and backward to weights the share of its dense kernel
  # whose gradient DGM keeps (0.2 of the kept gradient zeroed: --sparsity
  # 0.75, --gradient_sparsity 0.8); every other kernel 3x its MACs.
  per_example = 0
  sparse = _hand_macs(4, 8, 1, kept_share=0.25)
  for path, (positions, fan_in, c_out, taps) in _hand_layers(4, 8, 1).items():
    macs = positions * fan_in * c_out * taps
    if _is_block_conv(path):
      kept_grads = keep_count(round(0.25 * fan_in) * taps * c_out, 0.2)
      per_example += 2 * sparse[path] + macs * kept_grads / (
          fan_in * taps * c_out)
    else:
      per_example += 3 * macs
  assert results["train_flops"] == pytest.approx(
      2.0 * per_example * results["train_examples"], rel=1e-9)
  assert results["dense_train_flops"] == pytest.approx(
      2.0 * 3 * sum(_hand_macs(4, 8, 1).values())
      * results["train_examples"], rel=1e-12)
  layers = results["sparsity"]["masks"]["layers"]
  assert layers["layer3_1/conv2/kernel"]["nnz"] == 9 * 4 * 16
  assert layers["layer1_0/conv1/kernel"]["nnz"] == 9 * 1 * 4


def test_structured_resnet_run_killed_mid_task_resumes_bit_identically(
    tmp_path):
  # The kill lands in task 2's second epoch, after a mid-task checkpoint:
  # the kept channels, the kept kernels, batch norm's statistics, the DGM
  # state and the buffer all come back from it.
  from test_faults import EXACT_KEYS, _kill_in_task_2_then_rerun
  _kill_in_task_2_then_rerun(
      tmp_path, ["--dataset=digits", "--data_source=digits",
                 "--scenario=split", "--model=resnet18", "--nf=4",
                 "--method=sparcl_derpp", "--mask_structure=grouped",
                 "--sparsity=0.75", "--epochs=2", "--num_tasks=2",
                 "--batch_size=16", "--minibatch_size=16",
                 "--buffer_size=50", "--lr=0.05", "--steps_per_call=1",
                 "--checkpoint_every_steps=10", "--ddr_epochs=1",
                 "--mask_update_interval=1", "--mask_swap_fraction=0.2",
                 "--mask_extra_growth=0.25", "--noprogress",
                 "--notensorboard"], EXACT_KEYS)
