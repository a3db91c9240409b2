"""The training loop, losses and FLOPs bookkeeping, on scikit-learn's digits."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax import losses
from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.sparse.tdm import tdm_masks
from sparcl_jax.training import accounting, loop
from sparcl_jax.training.config import RunConfig, validate


def _config(**changes):
  base = dict(workdir="/unused", dataset="digits", data_source="digits",
              hidden_sizes="32", epochs=2, batch_size=16, minibatch_size=8,
              lr=0.05, buffer_size=50, alpha=0.2, beta=1.0,
              replay_first_task=True, progress=False, steps_per_call=7)
  base.update(changes)
  return validate(RunConfig(**base))


def test_cross_entropy_matches_hand_computation():
  logits = jnp.array([[0.0, 0.0], [2.0, 0.0]])
  labels = jnp.array([0, 1])
  expected = (np.log(2.0) + (np.log(np.exp(2.0) + 1.0) - 0.0)) / 2
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
      expected, rel=1e-6)
  weighted = losses.cross_entropy(logits, labels, jnp.array([1.0, 0.0]))
  assert float(weighted) == pytest.approx(np.log(2.0), rel=1e-6)


def test_masked_logits_never_win():
  logits = jnp.array([[5.0, 1.0, 2.0]])
  masked = losses.mask_logits(logits, jnp.array([False, True, True]))
  assert int(jnp.argmax(masked)) == 2
  ce = losses.cross_entropy(masked, jnp.array([1]))
  assert float(ce) == pytest.approx(np.log1p(np.exp(1.0)), rel=1e-6)


def test_logit_matching_is_mean_square():
  value = losses.logit_matching(jnp.array([[1.0, 2.0]]),
                                jnp.array([[0.0, 0.0]]))
  assert float(value) == pytest.approx(2.5)


def test_replayed_examples_counts_steps_after_buffer_fills():
  # 8 examples per step reach the buffer; replay needs 20: steps 0-2 do not
  # replay, steps 3..9 do, each with two terms of 20.
  assert accounting.replayed_examples(10, 8, 20, 2, True, 0) == 7 * 2 * 20
  assert accounting.replayed_examples(10, 8, 20, 2, True, 500) == 400
  assert accounting.replayed_examples(10, 8, 20, 2, False, 500) == 0


def test_flops_counter_adds_sparse_and_dense():
  counter = accounting.FlopsCounter({"a": 100, "b": 10})
  counter.add(3, {"a": 0.75}, {"a": 0.8})
  # per example: a: (0.25*2 + 0.2) * 100 = 70 MACs, b: 3 * 10 = 30 MACs.
  assert counter.train_flops == pytest.approx(2 * 100 * 3)
  assert counter.dense_train_flops == pytest.approx(2 * 330 * 3)
  assert counter.examples == 3


def test_same_seed_gives_identical_results(digits_two_tasks):
  first = loop.run(_config(), scenario=digits_two_tasks)
  second = loop.run(_config(), scenario=digits_two_tasks)
  assert first["acc_matrix"] == second["acc_matrix"]
  assert first["final"] == second["final"]
  assert first["train_flops"] == second["train_flops"]
  other = loop.run(_config(seed=1), scenario=digits_two_tasks)
  assert other["acc_matrix"] != first["acc_matrix"]


def test_results_contract(digits_two_tasks):
  results = loop.run(_config(method="er"), scenario=digits_two_tasks)
  assert np.asarray(results["acc_matrix"]["class_il"]).shape == (2, 2)
  assert np.asarray(results["acc_matrix"]["task_il"]).shape == (2, 2)
  assert set(results["final"]) == {
      "class_il", "task_il", "forgetting_class_il", "forgetting_task_il",
      "bwt_class_il", "bwt_task_il"}
  assert results["flags"]["method"] == "er"
  assert results["wall_time_s"] > 0
  # Timing split: the steps of every epoch, compilation counted apart.
  records = []
  loop.run(_config(method="er", seed=5), scenario=digits_two_tasks,
           log_fn=records.append)
  epoch_steps = sum(r["steps"] for r in records if r["event"] == "epoch")
  assert results["train_steps"] == epoch_steps > 0
  assert results["compiles"] >= 2 and results["compile_time_s"] > 0
  assert results["train_time_s"] > 0 and results["eval_time_s"] > 0
  spent = (results["train_time_s"] + results["eval_time_s"] +
           results["compile_time_s"])
  assert spent <= results["wall_time_s"]
  assert results["ms_per_step"] == pytest.approx(
      1e3 * (results["train_time_s"] + results["eval_time_s"]) /
      results["train_steps"])
  # Dense method: both FLOPs counts agree.
  assert results["train_flops"] == results["dense_train_flops"]


def test_sparcl_run_keeps_masks_exact_and_removes_data(digits_two_tasks):
  # Removal waits two epochs, so every example has been classified
  # correctly at least once and may go (never-learned ones always stay).
  config = _config(method="sparcl_derpp", epochs=4, mask_update_interval=1,
                   ddr_epochs="2,3", ddr_fraction=0.1, sparsity=0.75,
                   sparse_layers="hidden_.*/kernel")
  results = loop.run(config, scenario=digits_two_tasks)
  layer = results["sparsity"]["masks"]["layers"]["hidden_0/kernel"]
  # The last update of a task (epoch 3 = 4 - 1) prunes to 0.75 exactly.
  assert layer["nnz"] == round(0.25 * 64 * 32)
  weights = results["sparsity"]["weights"]["layers"]["hidden_0/kernel"]
  assert weights["nnz"] <= layer["nnz"]
  for task, kept in enumerate(results["data_kept_per_epoch"]):
    n = results["scenario"]["train_examples_per_task"][task]
    step = round(0.1 * n)
    assert kept == [n, n, n - step, n - 2 * step]
  assert results["train_flops"] < 0.5 * results["dense_train_flops"]


def test_sparse_weights_are_zero_outside_masks(digits_two_tasks, monkeypatch,
                                               run_capturing):
  config = _config(method="sparcl_er", epochs=2, mask_update_interval=1,
                   sparse_layers="hidden_.*/kernel", ddr=False)
  _, seen = run_capturing(config, digits_two_tasks, monkeypatch)
  state = seen["state"]
  mask = tdm_masks(state.opt_state)["hidden_0"]["kernel"]
  kernel = state.params["hidden_0"]["kernel"]
  assert not np.any(np.asarray(kernel)[~np.asarray(mask)])
  summary = masks_lib.summarize_sparsity(tdm_masks(state.opt_state))
  assert summary["layers"]["hidden_0/kernel"]["nnz"] == round(0.25 * 64 * 32)


def test_joint_training_sees_all_classes(digits_two_tasks):
  results = loop.run(_config(method="joint", epochs=3),
                     scenario=digits_two_tasks)
  assert results["acc_matrix"]["class_il"][1][0] > 80.0
  assert results["acc_matrix"]["class_il"][1][1] > 80.0
