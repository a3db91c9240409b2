"""The task-level runner's validation accuracy (what a lambda sweep reads).

Tiny EWC runs on permuted 8x8 digits: with a validation split the results
hold the final network's Task-IL accuracy on every task's validation split,
without one they hold none.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from sparcl_jax.data import scenarios, sources
from sparcl_jax.training import clnp_runner
from sparcl_jax.training.config import RunConfig, validate

_DIGITS = sources.load_digits(0)


def _config(tmp_path, val_fraction: float) -> RunConfig:
  return validate(RunConfig(
      workdir=str(tmp_path), dataset="digits", data_source="digits",
      scenario="permuted", num_tasks=2, model="mlp", hidden_sizes="16",
      head="multi", method="ewc", ewc_lambda=10.0, epochs=1, batch_size=32,
      optimizer="adam", lr=1e-2, val_fraction=val_fraction,
      eval_batch_size=128, steps_per_call=40, seed=0, progress=False))


def _run(config, scenario):
  return clnp_runner.run(config, scenario, lambda record: None,
                         time.perf_counter())


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


def test_no_val_final_without_a_validation_split(tmp_path):
  scenario = scenarios.permuted_scenario(_DIGITS, 2, seed=0)
  results = _run(_config(tmp_path, 0.0), scenario)
  assert "val_final" not in results
