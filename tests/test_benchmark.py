"""Smoke tests of the benchmark harness's building blocks (not timed)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax.benchmarks import convnets
from sparcl_jax.benchmarks.harness import (summarize, time_interleaved,
                                           whole_epoch)
from sparcl_jax.benchmarks.inputs import make_config, random_scenario
from sparcl_jax.benchmarks.machine import environment, memory_report
from sparcl_jax.benchmarks.reference import build_bare_step, matmul_call
from sparcl_jax.benchmarks.variants import benchmark_steps
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
  lib = jax.eval_shape(lambda: ZenkeCNN(num_outputs=10).init(
      key, jnp.zeros((1, 32, 32, 3))))
  params, _ = jax.eval_shape(lambda: convnets.init_zenke_cnn(key, 10,
                                                             (32, 32, 3)))
  assert _sorted_shapes(params) == _sorted_shapes(lib["params"])


def test_bare_step_trains_and_counts_derpp_examples():
  sc = random_scenario((8, 8, 3), 16)
  cfg = make_config("sgd", model="resnet18", nf=2, batch_size=4,
                    minibatch_size=4, steps_per_call=2)
  bench = build_bare_step("derpp", cfg, sc, 2)
  assert bench.steps == 2 and bench.examples_per_step == 12
  before = convnets.init_resnet18(jax.random.key(cfg.seed), 2, 10, 3)[0]
  after = bench.call(0)
  moved = [float(jnp.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(after), jax.tree.leaves(before))]
  assert max(moved) > 0
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(after))
