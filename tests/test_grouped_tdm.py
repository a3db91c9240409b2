"""Structured TDM: grouped_tdm's drop-and-grow, the grouped MLP, its FLOPs,
its runs (one compilation, exact resume) and its flags."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparcl_jax import flops
from sparcl_jax.sparse import grouped
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.grouped_tdm import (dense_view, grouped_layers, grouped_tdm,
                                    sparsity_variables, swap_counts, tdm_rows)
from sparcl_jax.methods.sparse import grouped_gradient_sparsity
from sparcl_jax.models.grouped_dense import GroupedSparseDense
from sparcl_jax.models.mlp import MLP
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import loop
from sparcl_jax.training import optimizers

from grouped_checks import check_rows_update
from test_faults import EXACT_KEYS, QUICKSTART, _kill_in_task_2_then_rerun

IN, WIDTHS, GROUP, SPARSITY = 16, (40, 40), 10, 0.75
# Rows kept per block: round(0.25 * 16) = 4 of the first layer's 16,
# round(0.25 * 40) = 10 of the second layer's 40.
K = {"hidden_0": 4, "hidden_1": 10}
FAN_IN = {"hidden_0": 16, "hidden_1": 40}
SCHEDULE = MaskSchedule(update_interval=1, epochs_per_task=4,
                        extra_growth=0.125, swap_fraction=0.1)
STEPS_PER_EPOCH = 3


def _grouped_mlp():
  model = MLP(WIDTHS, 3, group=GROUP, sparsity=SPARSITY)
  variables = model.init(jax.random.key(0), jnp.ones((1, IN)))
  return model, variables


def _run_transform(tasks=2, lr=0.1):
  """Trains the grouped MLP on random data; yields per step what changed."""
  model, variables = _grouped_mlp()
  tx = grouped_tdm(optax.sgd(lr), kept_rows=variables["sparsity"],
                   schedule=SCHEDULE, importance_lambda=0.5, seed=3)
  params, state = variables["params"], tx.init(variables["params"])
  x = jax.random.normal(jax.random.key(1), (8, IN))
  y = jnp.arange(8) % 3

  @jax.jit
  def step(params, state, epoch, step_in_epoch):
    def loss(p):
      logits = model.apply({"params": p, "sparsity": tdm_rows(state)}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss)(params)
    updates, new_state = tx.update(grads, state, params, epoch=epoch,
                                   step_in_epoch=step_in_epoch)
    return optax.apply_updates(params, updates), new_state, grads

  for _ in range(tasks):
    for epoch in range(SCHEDULE.epochs_per_task):
      for s in range(STEPS_PER_EPOCH):
        new_params, new_state, grads = step(params, state, epoch, s)
        yield epoch, s, params, state, new_params, new_state, grads
        params, state = new_params, new_state
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_swap_counts_are_shares_of_the_fan_in():
  assert swap_counts(16, 4, SCHEDULE) == (2, 2)
  assert swap_counts(40, 10, SCHEDULE) == (5, 4)
  # Never more than the kept rows, nor than the rows left to grow into.
  assert swap_counts(10, 9, MaskSchedule(swap_fraction=0.5)) == (0, 1)


def test_every_update_keeps_exact_distinct_rows_and_swaps_exact_counts():
  seen_swaps = 0
  for epoch, s, _, state, _, new_state, _ in _run_transform():
    before, after = tdm_rows(state), tdm_rows(new_state)
    for layer, k in K.items():
      rows, kept = after[layer]["rows"], after[layer]["kept"]
      assert rows.shape == (WIDTHS[0] // GROUP if layer == "hidden_0"
                            else WIDTHS[1] // GROUP, k)
      seen_swaps += check_rows_update(
          layer, rows, kept, before[layer]["kept"], FAN_IN[layer], k,
          schedule=SCHEDULE, epoch=epoch, step=s)
  assert seen_swaps == 2 * 2 * 3  # 2 tasks x 2 layers x 3 swapping epochs


def test_grown_slots_start_at_zero_and_kept_slots_take_the_sgd_step():
  for _, s, params, state, new_params, new_state, grads in _run_transform(
      tasks=1):
    for layer in K:
      changed = np.asarray(tdm_rows(state)[layer]["rows"] !=
                           tdm_rows(new_state)[layer]["rows"])
      w, g = params[layer]["values"], grads[layer]["values"]
      new_w = new_params[layer]["values"]
      np.testing.assert_array_equal(
          np.asarray(new_w)[changed], 0.0)
      # To rounding: inside jit, XLA may fuse the step into one FMA.
      np.testing.assert_allclose(
          np.asarray(new_w)[~changed], np.asarray(w - 0.1 * g)[~changed],
          rtol=1e-6, atol=1e-8)
      # The dense kernel it stands for is exactly zero off the kept rows.
      dense, masks = dense_view(new_params, tdm_rows(new_state))
      kernel = np.asarray(dense[layer]["kernel"])
      assert (kernel[~np.asarray(masks[layer]["kernel"])] == 0).all()
    del s


def test_drop_removes_the_rows_of_lowest_importance():
  values = jnp.ones((1, 4, 2)).at[0, 2].set(0.01)  # slot 2 least important
  kept_rows = {"rows": jnp.array([[0, 1, 2, 3]], jnp.int32),
               "kept": grouped.kept_membership(jnp.array([[0, 1, 2, 3]]), 8)}
  tx = grouped_tdm(optax.sgd(0.0), kept_rows=kept_rows,
                   schedule=MaskSchedule(update_interval=1, epochs_per_task=3,
                                         extra_growth=0.125,
                                         swap_fraction=0.125))
  params = {"values": values}
  state = tx.init(params)
  _, state = tx.update({"values": jnp.zeros_like(values)}, state, params,
                       epoch=0, step_in_epoch=0)
  rows = np.asarray(tdm_rows(state)["rows"])[0]
  assert rows[[0, 1, 3]].tolist() == [0, 1, 3] and rows[2] >= 4


def test_grouped_mlp_is_the_dense_mlp_with_the_row_mask():
  model, variables = _grouped_mlp()
  dense_params, masks = dense_view(variables["params"], variables["sparsity"])
  x = jax.random.normal(jax.random.key(2), (5, IN))
  got = model.apply(variables, x)
  want = MLP(WIDTHS, 3).apply({"params": dense_params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  loss = lambda out: jnp.sum(out ** 2)
  g_grouped = jax.grad(lambda p: loss(model.apply(
      {"params": p, "sparsity": variables["sparsity"]}, x)))(
          variables["params"])
  g_dense = jax.grad(lambda p: loss(MLP(WIDTHS, 3).apply({"params": p}, x)))(
      dense_params)
  for layer in K:
    rows = variables["sparsity"][layer]["rows"]
    np.testing.assert_allclose(
        g_grouped[layer]["values"],
        grouped.from_dense(g_dense[layer]["kernel"], rows), rtol=1e-5,
        atol=1e-6)
  assert grouped_layers(variables["sparsity"]) == FAN_IN


def test_grouped_train_flops_are_exact_and_match_xla_cost_analysis():
  # Wide enough that the matrix products dominate XLA's count, as in
  # test_flops' dense twin: 64 -> 400 -> 400 -> 10, blocks of 100 units,
  # k = 16 and 100 rows.
  widths, batch = (400, 400), 32
  model = MLP(widths, 10, group=100, sparsity=0.75)
  variables = model.init(jax.random.key(0), jnp.ones((1, 64)))
  dense_params, _ = dense_view(variables["params"], variables["sparsity"])
  dense_macs = flops.layer_macs(
      lambda p, x: MLP(widths, 10).apply({"params": p}, x), dense_params,
      jnp.ones((1, 64)))
  ours = flops.train_flops(
      dense_macs, {"hidden_0/kernel": 1 - 16 / 64,
                   "hidden_1/kernel": 1 - 100 / 400}, None, batch)
  # By hand: a grouped layer costs 3 x k x fan_out MACs per example, the
  # head 3 x 400 x 10; 2 FLOPs per MAC.
  assert ours == 2 * batch * 3 * (16 * 400 + 100 * 400 + 400 * 10)

  x = jax.random.normal(jax.random.key(0), (batch, 64))
  y = jnp.zeros((batch,), jnp.int32)

  def step(p):
    def loss(p):
      logits = model.apply({"params": p, "sparsity": variables["sparsity"]},
                           x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.tree.map(lambda w, g: w - 0.1 * g, p, jax.grad(loss)(p))

  xla = jax.jit(step).lower(variables["params"]).compile().cost_analysis()
  xla = xla["flops"]
  # XLA skips the input gradient of the first layer, which the paper's
  # count charges, and adds elementwise work (bias, ReLU, softmax, SGD).
  matmul_only = ours - 2 * batch * 16 * 400
  assert matmul_only <= xla < 1.05 * matmul_only
  assert abs(xla - ours) / ours < 0.05


def test_grouped_dgm_keeps_the_share_unstructured_dgm_keeps():
  base = config_lib.RunConfig(method="sparcl_derpp", gradient_sparsity=0.8)
  assert grouped_gradient_sparsity(
      config_lib.replace(base, sparsity=0.75)) == 0.2
  assert grouped_gradient_sparsity(
      config_lib.replace(base, sparsity=0.5)) == 0.6
  assert grouped_gradient_sparsity(
      config_lib.replace(base, sparsity=0.9)) == 0.0


def test_unstructured_run_leaves_out_a_dgm_that_cannot_act():
  # tdm refuses a nested dgm keeping no fewer gradient entries than the
  # weight mask at its densest (sparsity - extra growth); the run trains
  # without it, so the FLOPs charge the weight gradient at the mask's share.
  base = config_lib.RunConfig(method="sparcl_derpp", gradient_sparsity=0.8)
  params = MLP(hidden_sizes=(20, 20), num_outputs=4).init(
      jax.random.key(0), jnp.zeros((1, 12)))["params"]
  for sparsity, acts in ((0.75, True), (0.79, True), (0.81, False),
                         (0.9, False)):
    config = config_lib.replace(base, sparsity=sparsity)
    assert (optimizers.gradient_masking(config) is not None) == acts
    optimizers.make_optimizer(config).init(params)  # never refused


def _digits_args(*extra):
  return ["--dataset=digits", "--data_source=digits", "--scenario=split",
          "--model=mlp", "--hidden_sizes=40,40", "--method=sparcl_derpp",
          "--mask_structure=grouped", "--mask_group=10", "--sparsity=0.75",
          "--batch_size=16", "--minibatch_size=16", "--buffer_size=50",
          "--lr=0.05", "--epochs=2", "--num_tasks=2", "--ddr_epochs=1",
          "--mask_update_interval=1", "--noprogress", "--notensorboard",
          *extra]


def test_grouped_run_compiles_once_and_counts_exact_flops(tmp_path):
  from benchmarks import runs
  config = config_lib.validate(config_lib.from_dict(dict(
      workdir=str(tmp_path), dataset="digits", data_source="digits",
      method="sparcl_derpp", hidden_sizes="40,40", mask_structure="grouped",
      mask_group=10, sparsity=0.75, epochs=2, batch_size=16,
      minibatch_size=16, buffer_size=50, steps_per_call=8, ddr_epochs="1",
      mask_update_interval=1, mask_extra_growth=0.025, progress=False,
      num_tasks=2)))
  jax.clear_caches()
  counts = runs.count_run_compiles(config, runs.digits_scenario(2))
  assert counts["compiles"] >= 3
  assert counts["compiles_after_first_task"] == 0

  results = loop.run(config,
                     runs.digits_scenario(2))
  # Digits: 8x8 inputs, so 64 -> 40 -> 40 -> 10; k = 16 and 10 rows; DGM
  # keeps 80% of the kept weights' gradient (0.2 / 0.25), exactly
  # keep_count(4 * 16 * 10, 0.2) = 512 and keep_count(4 * 10 * 10, 0.2) =
  # 320 entries.
  per_example = (2 * 16 * 40 + 512) + (2 * 10 * 40 + 320) + 3 * 40 * 10
  assert results["train_flops"] == pytest.approx(
      2.0 * per_example * results["train_examples"], rel=1e-12)
  assert results["dense_train_flops"] == pytest.approx(2.0 * 3 * (
      64 * 40 + 40 * 40 + 40 * 10) * results["train_examples"], rel=1e-12)
  masks = results["sparsity"]["masks"]["layers"]
  assert masks["hidden_0/kernel"]["nnz"] == 16 * 40
  assert masks["hidden_1/kernel"]["nnz"] == 10 * 40


def test_grouped_run_killed_mid_task_resumes_bit_identically(tmp_path):
  _kill_in_task_2_then_rerun(
      tmp_path, [f"--flagfile={QUICKSTART}", "--method=sparcl_derpp",
                 "--mask_structure=grouped", "--mask_group=25",
                 "--epochs=2", "--num_tasks=2", "--steps_per_call=1",
                 "--checkpoint_every_steps=10", "--ddr_epochs=1",
                 "--mask_update_interval=1", "--noprogress",
                 "--notensorboard"], EXACT_KEYS)


@pytest.mark.parametrize("changes, message", [
    (dict(model="small_vgg"), "--model=mlp, --model=resnet18, "
                              "--model=zenke_cnn only"),
    (dict(mask_group=30), "must divide every hidden width"),
    (dict(mask_growth="gradient"), "grows rows at random"),
    (dict(method="rigl_derpp"), "grows rows at random"),
    (dict(method="snip_derpp"), "keeps a static mask"),
    (dict(sparsity_distribution="erk"), "every MLP hidden layer"),
    (dict(mask_structure="blocks"), "mask_structure"),
])
def test_grouped_flags_refuse_what_they_cannot_do(changes, message):
  values = dict(workdir="/tmp/x", method="sparcl_derpp", hidden_sizes="40,40",
                mask_structure="grouped", mask_group=10)
  values.update(changes)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config_lib.from_dict(values))


def test_dense_methods_ignore_the_structure_flag():
  config = config_lib.validate(config_lib.from_dict(dict(
      workdir="/tmp/x", method="derpp", mask_structure="grouped")))
  assert not config.grouped


def test_nnx_layer_trains_under_grouped_tdm_and_takes_its_rows_back():
  from flax import nnx
  from sparcl_jax.models.grouped_dense import GroupedSparseLinear, KeptRows
  layer = GroupedSparseLinear(16, 20, group=10, sparsity=0.75,
                              rngs=nnx.Rngs(0))
  graphdef, params, rows = nnx.split(layer, nnx.Param, KeptRows)
  tx = grouped_tdm(optax.sgd(0.1), kept_rows=rows, schedule=SCHEDULE)
  state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (4, 16))

  def loss(params, rows):
    return jnp.sum(nnx.merge(graphdef, params, rows)(x) ** 2)

  kept_before = np.asarray(rows["kept"].value)
  rows_before = np.asarray(rows["rows"].value)
  grads = jax.grad(loss)(params, tdm_rows(state))
  updates, state = tx.update(grads, state, params, epoch=0, step_in_epoch=0)
  new_params, new_rows = optax.apply_updates(params, updates), tdm_rows(state)
  assert isinstance(new_rows, nnx.State)
  nnx.update(layer, new_params, new_rows)
  # Task start: round(0.125 * 16) = 2 rows swapped in each of the 2 blocks.
  moved = (np.asarray(layer.kept.value) != kept_before).sum(-1) // 2
  assert moved.tolist() == [2, 2]
  assert (np.asarray(layer.kept.value).sum(-1) == 4).all()
  changed = np.asarray(layer.rows.value) != rows_before
  assert (np.asarray(layer.values.value)[changed] == 0).all()


def test_tdm_rows_found_inside_optax_wrappers():
  layer = GroupedSparseDense(4, group=2, sparsity=0.5)
  variables = layer.init(jax.random.key(0), jnp.ones((1, 60)))
  inner = grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"])
  want = inner.init(variables["params"]).collection
  for tx in (optax.chain(optax.clip_by_global_norm(1.0), inner),
             optax.inject_hyperparams(lambda: inner)(),
             optax.MultiSteps(inner, every_k_schedule=2)):
    state = tx.init(variables["params"])
    got = tdm_rows(state)
    assert jax.tree.all(jax.tree.map(
        lambda a, b: bool((a == b).all()), got, want))
    assert sparsity_variables(state)["sparsity"] is got


def test_a_share_that_moves_no_row_is_refused_naming_the_layer():
  # On a 40-input layer the default 1% swaps round(0.4) = 0 rows: it used
  # to run and never change the layer, without a word.
  layer = GroupedSparseDense(4, group=2, sparsity=0.5)
  variables = layer.init(jax.random.key(0), jnp.ones((1, 40)))
  with pytest.raises(ConfigError) as err:
    grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"])
  assert str(err.value) == (
      "grouped_tdm: MaskSchedule(extra_growth=0.01) swaps round(0.01 x 40) "
      "= 0 rows per block of layer (top) (fan-in 40), so it would never "
      "change; use extra_growth >= 0.025 (1/40), or 0 to keep its rows "
      "fixed.")
  schedule = MaskSchedule(extra_growth=0.025)
  with pytest.raises(ConfigError, match=r"swap_fraction >= 0\.025 \(1/40\)"):
    grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"],
                schedule=schedule)
  # The smallest share named moves a row; a share of 0 is taken as meant.
  moving = MaskSchedule(extra_growth=0.025, swap_fraction=0.025)
  tx = grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"],
                   schedule=moving)
  state = tx.init(variables["params"])
  grads = jax.tree.map(jnp.ones_like, variables["params"])
  _, state = tx.update(grads, state, variables["params"], epoch=0,
                       step_in_epoch=0)
  moved = (tdm_rows(state)["rows"] != variables["sparsity"]["rows"]).sum(-1)
  assert moved.tolist() == [1, 1]
  grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"],
              schedule=MaskSchedule(extra_growth=0.0, swap_fraction=0.0))
  grouped_tdm(optax.sgd(0.1), kept_rows=variables["sparsity"],
              schedule=MaskSchedule(static=True))
