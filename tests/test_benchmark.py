"""Smoke tests of the benchmark harness's building blocks (not timed)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import convnets
from benchmarks.harness import (summarize, time_interleaved,
                                whole_epoch)
from benchmarks.inputs import make_config, random_scenario
from benchmarks.machine import environment, memory_report
from benchmarks.reference import build_bare_step, matmul_call
from benchmarks.variants import benchmark_steps
from sparcl_jax.models.cnn import ZenkeCNN
from sparcl_jax.models.resnet import ResNet18


def test_summarize_hand_computed():
  s = summarize([4.0, 1.0, 3.0, 2.0, 5.0], scale=2.0)
  assert s["median"] == 6.0
  assert s["p25"] == 4.0 and s["p75"] == 8.0
  assert s["min"] == 2.0 and s["n"] == 5
  assert s["spread"] == (8.0 - 4.0) / 6.0


def test_time_interleaved_round_robin_order():
  calls = []
  times = time_interleaved(
      {"a": lambda r: calls.append(("a", r)), "b":
       lambda r: calls.append(("b", r))}, 3)
  assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2),
                   ("b", 2)]
  assert [len(times["a"]), len(times["b"])] == [3, 3]


def test_random_scenario_shapes_and_tasks():
  sc = random_scenario((6, 5, 3), 40, test_per_task=8, num_tasks=5)
  assert sc.image_shape == (6, 5, 3)
  assert sc.train_images.dtype == np.uint8
  assert [len(t.train_indices) for t in sc.tasks] == [40] * 5
  assert [t.classes.tolist() for t in sc.tasks][1] == [2, 3]


def test_step_benchmark_on_a_tiny_mlp():
  sc = random_scenario((4, 4, 1), 64)
  cfg = make_config("sgd", hidden_sizes="8", batch_size=8,
                    minibatch_size=8, buffer_size=16, steps_per_call=4)
  out = benchmark_steps(cfg, sc, 8, 2, 1e9,
                        ("plain", "derpp", "sparcl_derpp"))
  assert set(out) == {"plain", "derpp", "sparcl_derpp"}
  # MACs of 16-8-10: 16 * 8 + 8 * 10 = 208 per example; DER++ trains on
  # the stream batch and two replay batches.
  assert out["plain"]["flops_per_step"] == 6 * 208 * 8
  assert out["derpp"]["flops_per_step"] == 6 * 208 * 24
  assert out["plain"]["ratio_to_plain"] == 1.0
  assert out["sparcl_derpp"]["ratio_to_derpp"] > 0
  assert out["derpp"]["compiles"] >= 1
  assert out["derpp"]["ms_per_step"]["n"] == 2


def test_interleaved_matmul_reference_replaces_the_given_peak():
  sc = random_scenario((4, 4, 1), 64)
  cfg = make_config("sgd", hidden_sizes="8", batch_size=8,
                    minibatch_size=8, steps_per_call=4)
  out = benchmark_steps(cfg, sc, 8, 2, 1.0, ("plain",), matmul_n=32)
  peak = out["plain"]["peak_flops_per_s"]
  assert peak > 1.0
  assert out["plain"]["fraction_of_peak"] == pytest.approx(
      out["plain"]["flops_per_s"] / peak)
  product = matmul_call(4, 2)(0)
  assert product.shape == (4, 4)


def test_each_timed_sample_is_a_whole_epoch_of_chunks_in_order():
  seen = []
  epoch = whole_epoch(lambda i: seen.append(i) or i, 5)
  assert epoch(0) == 4 and epoch(1) == 4
  assert seen == [0, 1, 2, 3, 4] * 2


def test_environment_and_table():
  env = environment()
  assert env["cpu_count"] == os.cpu_count()
  for key in ("device", "jax", "flax", "optax"):
    assert env[key]
  mem = memory_report()
  assert mem["host_peak_rss_mb"] > 0


def _sorted_shapes(tree):
  return sorted(tuple(x.shape) for x in jax.tree.leaves(tree))


def test_bare_convnets_are_the_library_architectures():
  # The bare step's models are written apart from the library's; the same
  # architecture means the same parameter shapes, layer for layer.
  key = jax.random.key(0)
  lib = jax.eval_shape(lambda: ResNet18(nf=4, num_outputs=10).init(
      key, jnp.zeros((1, 16, 16, 3))))
  params, state = jax.eval_shape(
      lambda: convnets.init_resnet18(key, 4, 10, 3))
  assert _sorted_shapes(params) == _sorted_shapes(lib["params"])
  assert _sorted_shapes(state) == _sorted_shapes(lib["batch_stats"])
  logits, new_state = jax.eval_shape(
      convnets.apply_resnet18, params, state,
      jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32), key)
  assert logits.shape == (2, 10)
  assert _sorted_shapes(new_state) == _sorted_shapes(state)
  lib = jax.eval_shape(lambda: ZenkeCNN(num_outputs=10).init(
      key, jnp.zeros((1, 32, 32, 3))))
  params, _ = jax.eval_shape(lambda: convnets.init_zenke_cnn(key, 10,
                                                             (32, 32, 3)))
  assert _sorted_shapes(params) == _sorted_shapes(lib["params"])


def test_bare_step_trains_and_counts_derpp_examples():
  # The Zenke CNN: compiling ResNet-18's DER++ step (three passes) took 40 s
  # of the suite; the ResNet's forward pass is checked by shape above.
  sc = random_scenario((16, 16, 3), 16)
  cfg = make_config("sgd", model="zenke_cnn", batch_size=4,
                    minibatch_size=4, steps_per_call=2)
  bench = build_bare_step("derpp", cfg, sc, 2)
  assert bench.steps == 2 and bench.examples_per_step == 12
  before = convnets.init_zenke_cnn(jax.random.key(cfg.seed), 10,
                                   (16, 16, 3))[0]
  after = bench.call(0)
  moved = [float(jnp.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(after), jax.tree.leaves(before))]
  assert max(moved) > 0
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(after))


def test_structured_steps_time_every_variant_against_dense():
  from benchmarks.report import format_structured_steps
  from benchmarks.structured import structured_steps
  out = structured_steps(batch_sizes=(8,), sparsities=(0.75,),
                         repeats=2, hidden_sizes="40,40", steps_per_call=4,
                         mask_group=0, steps_per_epoch=6,
                         image_shape=(8, 8, 1), buffer_size=16,
                         # 1/40: the least share that moves a row of 40.
                         structured_flags=lambda sparsity: dict(
                             mask_extra_growth=0.025,
                             mask_swap_fraction=0.025))
  # --mask_group=0 resolves to the MLP's default block: its width, 40.
  assert out["mask_group"] == 40
  batch = out["batches"]["8"]
  # Chunks capped at the epoch's steps; the last chunk is partly skipped.
  assert batch["steps_per_epoch"] == 6 and batch["steps_per_call"] == 4
  variants = batch["variants"]
  assert list(variants) == ["dense", "structured_s75", "unstructured_s75"]
  assert variants["dense"]["speedup"] == 1.0
  dense_flops = variants["dense"]["dense_flops_per_step"]
  # 64-40-40-10: 64 * 40 + 40 * 40 + 40 * 10 MACs, on the stream batch and
  # two replay batches of 8; every variant counts the dense model's.
  assert dense_flops == 6 * (64 * 40 + 40 * 40 + 40 * 10) * 24
  for name, v in variants.items():
    assert v["ms_per_step"]["n"] == 2 and v["ms_per_step"]["median"] > 0
    assert v["speedup"] > 0 and v["compile_s"] > 0
    assert v["dense_flops_per_step"] == dense_flops
  assert "grouped" in variants["structured_s75"]["built_by"]
  assert "grouped" not in variants["unstructured_s75"]["built_by"]
  assert variants["structured_s75"]["sparsity"] == 0.75
  assert variants["dense"]["sparsity"] is None
  table = format_structured_steps(out)
  assert "structured 0.75" in table and "unstructured 0.75" in table
  assert "blocks of 40 outputs" in table


def test_structured_chunk_trains_only_the_kept_weights():
  from benchmarks.chunks import build_train_chunk
  from sparcl_jax.sparse.grouped_tdm import sparsity_variables
  cfg = make_config("sparcl_derpp", hidden_sizes="40,40", batch_size=8,
                    minibatch_size=8, buffer_size=16, steps_per_call=2,
                    sparsity=0.75, mask_structure="grouped", mask_group=10,
                    # 1/40: the least share that moves a row of 40.
                    mask_extra_growth=0.025, mask_swap_fraction=0.025)
  state, _ = build_train_chunk(cfg, random_scenario((8, 8, 1), 16), 2,
                               epoch=1).call(0)
  # Each block of 10 outputs keeps round(0.25 * fan_in) input rows.
  assert state.params["hidden_0"]["values"].shape == (4, 16, 10)
  assert state.params["hidden_1"]["values"].shape == (4, 10, 10)
  rows = sparsity_variables(state.opt_state)["sparsity"]
  assert rows["hidden_0"]["kept"].sum(-1).tolist() == [16] * 4


def test_structured_train_times_reads_what_train_py_writes(tmp_path):
  from benchmarks.report import format_structured_train_times
  from benchmarks.structured import structured_train_times
  common = ["--dataset=digits", "--data_source=digits", "--num_tasks=2",
            "--hidden_sizes=40,40", "--epochs=1", "--batch_size=16",
            "--steps_per_call=8", "--buffer_size=50", "--lr=0.03",
            "--eval_batch_size=500"]
  # Dense and structured only: each run is mostly compilation here, and the
  # unstructured chunk is timed by the test above.
  configs = [("dense", common + ["--method=derpp"]),
             ("structured_s75", common + [
                 "--method=sparcl_derpp", "--sparsity=0.75",
                 "--mask_structure=grouped", "--mask_group=10",
                 # 1/40: the least share that moves a row of 40.
                 "--mask_extra_growth=0.025", "--mask_swap_fraction=0.025"])]
  # Each run is train.py in its own process, as in the benchmark.
  out = structured_train_times(None, str(tmp_path), configs)
  assert out["baseline"] == "dense"
  assert list(out["runs"]) == ["dense", "structured_s75"]
  assert out["runs"]["dense"]["speedup"] == 1.0
  assert out["runs"]["dense"]["flops_ratio"] == 1.0
  for name, r in out["runs"].items():
    assert r["train_time_s"] > 0 and r["speedup"] > 0
    assert 0.0 <= r["class_il"] <= 100.0 and 0.0 <= r["task_il"] <= 100.0
    assert 0.0 < r["flops_ratio"] <= 1.0
    with open(tmp_path / name / "results.json") as f:
      assert r["train_time_s"] == json.load(f)["train_time_s"]
    assert (tmp_path / f"{name}.log").exists()
  # Sparse runs count fewer training FLOPs than the dense run.
  assert out["runs"]["structured_s75"]["flops_ratio"] < 1.0
  table = format_structured_train_times(out)
  assert table.count("\n") == 3 and "structured_s75" in table
