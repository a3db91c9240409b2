"""What a sweep of EWC's lambda reads from a task-level run.

Tiny EWC runs on permuted 8x8 digits: with a validation split the results
hold the final network's Task-IL accuracy on every task's validation split,
without one they hold none; every consolidated task logs its Fisher's scale.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from sparcl_jax.data import scenarios, sources
from sparcl_jax.methods import task_level
from sparcl_jax.training import loop
from sparcl_jax.training.config import RunConfig, validate

_DIGITS = sources.load_dataset("digits", "embedded", None)


def _config(tmp_path, val_fraction: float) -> RunConfig:
  return validate(RunConfig(
      workdir=str(tmp_path), dataset="digits", data_source="digits",
      scenario="permuted", num_tasks=2, model="mlp", hidden_sizes="16",
      head="multi", method="ewc", ewc_lambda=10.0, epochs=1, batch_size=32,
      optimizer="adam", lr=1e-2, val_fraction=val_fraction,
      eval_batch_size=128, steps_per_call=40, seed=0, progress=False))


def _run(config, scenario, log_fn=lambda record: None):
  return loop.run(config, scenario=scenario, log_fn=log_fn,
                  start_time=time.perf_counter())


def test_val_final_is_the_last_row_when_val_and_test_are_the_same_examples(
    tmp_path):
  scenario = scenarios.permuted_scenario(_DIGITS, 2, seed=0,
                                         val_fraction=0.2)
  # The test split made of each task's validation examples: the final
  # network's validation accuracy must then be the last row of the test
  # matrix, to the bit.
  same = dataclasses.replace(
      scenario, test_images=scenario.train_images,
      test_labels=scenario.train_labels,
      tasks=[dataclasses.replace(t, test_indices=t.val_indices)
             for t in scenario.tasks])
  results = _run(_config(tmp_path, 0.2), same)
  last_row = results["acc_matrix"]["task_il"][-1]
  val = results["val_final"]
  assert val["task_il_per_task"] == last_row
  assert val["task_il"] == np.mean(last_row)
  # Whole examples of the validation split: 100 * k / n.
  n = len(scenario.tasks[0].val_indices)
  k = val["task_il_per_task"][0] * n / 100
  assert abs(k - round(k)) < 1e-6 and 0 < k <= n


def test_no_val_final_without_a_validation_split_and_the_fisher_is_logged(
    tmp_path):
  scenario = scenarios.permuted_scenario(_DIGITS, 2, seed=0)
  records = []
  results = _run(_config(tmp_path, 0.0), scenario, records.append)
  assert "val_final" not in results
  # One Fisher per consolidated task: task 0's (the last one is never read).
  fishers = [r for r in records if r["event"] == "fisher"]
  assert [r["task"] for r in fishers] == [0]
  assert 0.0 < fishers[0]["mean"] < 1.0


def test_fisher_mean_weighs_every_entry_alike():
  # (1 + 2 + 3 + 6 + 0 + 0) / 6 entries, not the mean of the leaf means.
  fisher = {"a": np.array([1.0, 2.0, 3.0], np.float32),
            "b": {"k": np.array([[6.0, 0.0, 0.0]], np.float32)}}
  assert task_level.fisher_mean(fisher) == 2.0
