"""A whole multi-task run compiles no more often than a shorter one."""

from __future__ import annotations

import jax
import numpy as np

from benchmarks import harness, runs


def test_five_tasks_compile_no_more_than_two():
  counts = runs.compile_counts("sparcl_derpp", (2, 5))
  two, five = counts["2"], counts["5"]
  # The run-local jitted functions (train chunk, epoch order, evaluation)
  # must compile in every run: a zero count would mean nothing was counted.
  assert two["compiles"] >= 3
  assert five["compiles"] <= two["compiles"]
  # Everything is compiled during the first task; later tasks and epochs
  # reuse it.
  assert two["compiles_after_first_task"] == 0
  assert five["compiles_after_first_task"] == 0


def test_compile_counter_counts_each_new_shape_once():
  f = jax.jit(lambda x: x * 3.0 + 1.0)
  three, four = np.ones(3, np.float32), np.ones(4, np.float32)
  with harness.CompileCounter() as counter:
    f(three)
    f(three)
    f(four)
  assert counter.count == 2
  assert counter.seconds > 0
