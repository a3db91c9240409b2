"""Checkpoint/resume of the task-incremental runner (CLNP, single-task...).

A run stopped mid-task, or at a task's end, and resumed in the same work
directory must end with exactly the results of an uninterrupted run.
"""

from __future__ import annotations

import signal
import time

import pytest

from sparcl_jax.data import scenarios, sources
from sparcl_jax.training import checkpoint, loop, trainer
from sparcl_jax.training.config import RunConfig, validate

_DIGITS = sources.load_dataset("digits", "embedded", None)
_SCENARIO = scenarios.permuted_scenario(_DIGITS, 3, seed=0, val_fraction=0.2)


def _config(workdir, method: str) -> RunConfig:
  return validate(RunConfig(
      workdir=str(workdir), dataset="digits", data_source="digits",
      scenario="permuted", num_tasks=3, model="mlp", hidden_sizes="16,16",
      head="multi", method=method, epochs=1, batch_size=32,
      optimizer="adam", lr=1e-2, l1=3e-3, margin=2.0,
      val_fraction=0.2, eval_batch_size=128, steps_per_call=10, seed=0,
      progress=False))


def _run(config, checkpoints=None):
  records = []
  results = loop.run(config, scenario=_SCENARIO, log_fn=records.append,
                     start_time=time.perf_counter(), checkpoints=checkpoints)
  return results, records


def _events(records):
  return [(r["event"], r["task"]) for r in records]


# single_task also restores its list of per-task networks; EWC and SI only
# add their regulariser to the train state that both of these restore.
@pytest.mark.parametrize("method", ["clnp", "single_task"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, method):
  results_a, records_a = _run(_config(tmp_path / "a", method))

  config = _config(tmp_path / "b", method)
  first = checkpoint.Checkpointer(config.workdir)
  # Asked before the run starts: the run saves after its first chunk of
  # 10 steps, in the middle of the first task's epoch, and stops there.
  first.request_stop(signal.SIGTERM)
  with pytest.raises(checkpoint.RunInterrupted,
                     match="task 1 of 3, epoch 1, step 10 of 35"):
    _run(config, first)
  meta = first.read_meta()
  first.close()
  assert (meta["task"], meta["in_task"], meta["step"]) == (0, True, 10)

  second = checkpoint.Checkpointer(config.workdir)
  results_b, records_b = _run(config, second)
  assert second.read_meta()["task"] == 3
  second.close()

  assert results_b["acc_matrix"] == results_a["acc_matrix"]
  assert results_b["final"] == results_a["final"]
  assert len(results_b["task_time_s"]) == 3
  # The metrics log keeps `logged` records of the stopped run; the resumed
  # run logs the rest, so together they are the uninterrupted run's log.
  assert meta["logged"] == len(records_a) - len(records_b)
  assert _events(records_b) == _events(records_a)[meta["logged"]:]
  if method == "clnp":
    assert results_b["clnp"] == results_a["clnp"]
    assert (results_b["capacity_plot_data"]
            == results_a["capacity_plot_data"])
    assert len(results_b["clnp"]["tasks"]) == 3


def test_stop_during_the_pruning_search_is_honoured_at_the_task_end(
    tmp_path, monkeypatch):
  results_a, _ = _run(_config(tmp_path / "a", "clnp"))
  config = _config(tmp_path / "b", "clnp")
  ckpt = checkpoint.Checkpointer(config.workdir)
  original = trainer.Trainer.activity
  calls = []

  def stop_in_second_search(self, params, task, layers):
    calls.append(task)
    if task == 1:
      ckpt.request_stop(signal.SIGTERM)
    return original(self, params, task, layers)

  monkeypatch.setattr(trainer.Trainer, "activity", stop_in_second_search)
  with pytest.raises(checkpoint.RunInterrupted,
                     match="the end of task 2 of 3"):
    loop.run(config, log_fn=lambda r: None, checkpoints=ckpt)
  assert calls == [0, 1]
  assert (ckpt.read_meta()["task"], ckpt.read_meta()["in_task"]) == (2, False)
  ckpt.close()
  monkeypatch.undo()
  second = checkpoint.Checkpointer(config.workdir)
  results_b = loop.run(config, log_fn=lambda r: None, checkpoints=second)
  second.close()
  assert results_b["acc_matrix"] == results_a["acc_matrix"]
  assert results_b["clnp"] == results_a["clnp"]
