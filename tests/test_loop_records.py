"""One loop for every family: the same records, FLOPs and progress lines."""

import io

import pytest

from sparcl_jax.training import loop
from sparcl_jax.training.config import RunConfig, validate
from sparcl_jax.training.progress import ProgressLines

# What every epoch and evaluation record carries, whatever the method.
EPOCH_KEYS = {"event", "task", "epoch", "steps", "kept", "examples",
              "replayed_examples", "train_flops", "train_flops_so_far",
              "loss", "global_step", "weight_sparsity"}
EVAL_KEYS = {"event", "task", "class_il", "task_il", "task_time_s",
             "global_step"}
RESULT_KEYS = {"acc_matrix", "final", "wall_time_s", "task_time_s",
               "train_time_s", "eval_time_s", "train_steps", "train_flops",
               "dense_train_flops", "train_examples", "data_kept_per_epoch",
               "sparsity", "weights_zero_fraction", "scenario", "flags"}

METHODS = {
    "derpp": {},
    "sparcl_derpp": dict(sparsity=0.5, tdm=True, dgm=True, ddr=True,
                         ddr_epochs="1", ddr_fraction=0.1),
    "joint": {},
    "clnp": dict(val_fraction=0.2, head="multi", l1=1e-4, margin=5.0),
    "ewc": dict(val_fraction=0.2, head="multi", ewc_lambda=10.0),
    "si": dict(val_fraction=0.2, head="multi", si_c=0.1),
    "single_task": dict(head="multi"),
}


def _run(method, **changes):
  records = []
  config = validate(RunConfig(
      workdir="/unused", dataset="digits", data_source="digits",
      hidden_sizes="16", epochs=2, num_tasks=2, batch_size=16,
      minibatch_size=8, buffer_size=40, progress=False, method=method,
      **changes))
  return loop.run(config, log_fn=records.append), records


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_family_writes_the_same_core_records(method):
  results, records = _run(method, **METHODS[method])
  epochs = [r for r in records if r["event"] == "epoch"]
  evals = [r for r in records if r["event"] == "eval"]
  assert len(epochs) == 4 and len(evals) == 2
  for record in epochs:
    assert EPOCH_KEYS <= set(record), EPOCH_KEYS - set(record)
  for record in evals:
    assert EVAL_KEYS <= set(record), EVAL_KEYS - set(record)
  assert RESULT_KEYS <= set(results), RESULT_KEYS - set(results)
  # The FLOPs count is every epoch's, and global_step counts every step.
  assert results["train_flops"] == pytest.approx(
      sum(r["train_flops"] for r in records if "train_flops" in r))
  steps = [r["steps"] for r in records if "steps" in r]
  assert epochs[-1]["global_step"] == sum(steps)
  assert results["train_flops"] > 0


def test_progress_lines_read_the_records_of_every_family():
  out = io.StringIO()
  lines = ProgressLines(2, 2, stream=out)
  _, records = _run("ewc", **METHODS["ewc"])
  for record in records:
    lines(record)
  printed = out.getvalue().splitlines()
  assert [l.split("  ")[0] for l in printed] == [
      "task 1/2 epoch 1/2", "task 1/2 epoch 2/2", "task 1/2 done",
      "task 2/2 epoch 1/2", "task 2/2 epoch 2/2", "task 2/2 done"]
  assert printed[-1].endswith(
      "task-IL " + " ".join(f"{a:.2f}" for a in records[-1]["task_il"]))


def test_progress_lines_show_only_the_first_seed_of_a_run():
  out = io.StringIO()
  lines = ProgressLines(1, 1, first_seed=3, stream=out)
  for seed in (3, 4):
    lines({"event": "eval", "task": 0, "class_il": [50.0],
           "task_il": [75.0], "seed": seed})
  assert out.getvalue() == "task 1/1 done  class-IL 50.00  task-IL 75.00\n"


def test_progress_lines_that_cannot_be_written_stop_without_an_error(capsys):
  written = []

  class Full:
    def write(self, text):
      written.append(text)
      raise OSError(28, "No space left on device")

    def flush(self):
      pass

  lines = ProgressLines(1, 2, stream=Full())
  for epoch in range(2):
    lines({"event": "epoch", "task": 0, "epoch": epoch, "loss": 0.5,
           "examples": 10})
  assert lines.broken and len(written) == 1  # tried once, then stopped
  assert capsys.readouterr().err == ""
