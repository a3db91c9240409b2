"""--num_seeds: several seeds in one run, each matching its single-seed run.

On scikit-learn's digits, whose train/test split is itself seeded, so the
vmapped run also carries per-seed data.
"""

import json
import os
import signal
import types

import numpy as np
import pytest

from benchmarks import seeds as seeds_benchmark
from sparcl_jax.training import checkpoint, cli, loop, run_state
from sparcl_jax.training.config import RunConfig, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")
# The quickstart, shortened: the same path, a few seconds per run.
SHORT = ("--epochs=2", "--num_tasks=5", "--progress=false",
         "--tensorboard=false")


def _single(seed, **changes):
  base = dict(workdir="/unused", dataset="digits", data_source="digits",
              hidden_sizes="100,100", epochs=2, batch_size=16,
              minibatch_size=16, lr=0.05, buffer_size=200, alpha=0.2,
              beta=1.0, replay_first_task=True, progress=False,
              tensorboard=False, seed=seed)
  base.update(changes)
  return loop.run(validate(RunConfig(**base)))


def _predictions_apart(results_a, results_b, scenario_sizes):
  """Largest difference, in test predictions, of two accuracy matrices."""
  worst = 0
  for key in ("class_il", "task_il"):
    a = np.asarray(results_a["acc_matrix"][key])
    b = np.asarray(results_b["acc_matrix"][key])
    worst = max(worst, int(np.round(np.max(
        np.abs(a - b) * np.asarray(scenario_sizes)[None, :] / 100.0))))
  return worst


@pytest.fixture(scope="module")
def quickstart_three_seeds(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("seeds") / "run"
  status = cli.main(["train.py", f"--flagfile={QUICKSTART}", *SHORT,
                     "--num_seeds=3", "--seed=4", f"--workdir={workdir}"])
  assert status == 0
  with open(workdir / "results.json") as f:
    return json.load(f)


def test_quickstart_num_seeds_matches_each_single_seed_run(
    quickstart_three_seeds):
  results = quickstart_three_seeds
  assert results["seeds"] == [4, 5, 6]
  assert results["seeds_vmapped"]
  assert len(results["per_seed"]) == 3
  for seed, entry in zip([4, 5, 6], results["per_seed"]):
    single = _single(seed)
    assert entry["flags"]["seed"] == seed
    for key in ("class_il", "task_il"):
      assert abs(entry["final"][key] - single["final"][key]) <= 0.5
    assert entry["data_kept_per_epoch"] == single["data_kept_per_epoch"]
    assert entry["train_flops"] == single["train_flops"]


def test_final_is_the_mean_and_final_std_the_std_of_per_seed(
    quickstart_three_seeds):
  results = quickstart_three_seeds
  for key, value in results["final"].items():
    values = [entry["final"][key] for entry in results["per_seed"]]
    assert value == pytest.approx(np.mean(values), abs=1e-9)
    assert results["final_std"][key] == pytest.approx(np.std(values),
                                                      abs=1e-9)
  mean_matrix = np.mean([entry["acc_matrix"]["class_il"]
                         for entry in results["per_seed"]], axis=0)
  np.testing.assert_allclose(results["acc_matrix"]["class_il"], mean_matrix)


def test_one_vmapped_seed_matches_its_single_seed_run():
  # SparCL (TDM, DGM, DDR) with DDR removing a different number of examples
  # per seed: the seeds' epochs differ in length, so the shorter ones run
  # masked no-op steps, and masks, buffer and DDR state are all per seed.
  changes = dict(method="sparcl_derpp", num_tasks=2, hidden_sizes="16",
                 batch_size=16, minibatch_size=8, buffer_size=50, epochs=2,
                 ddr_epochs="1", ddr_fraction=0.3, mask_update_interval=1)
  both = _single(4, num_seeds=2, **changes)
  assert both["seeds_vmapped"]
  kept = [entry["data_kept_per_epoch"] for entry in both["per_seed"]]
  assert kept[0] != kept[1]
  single = _single(5, **changes)
  scenario = run_state.build_scenario(validate(RunConfig(
      workdir="/unused", num_tasks=2, seed=5)))
  test_sizes = [len(task.test_indices) for task in scenario.tasks]
  assert _predictions_apart(both["per_seed"][1], single, test_sizes) <= 2
  assert both["per_seed"][1]["data_kept_per_epoch"] == (
      single["data_kept_per_epoch"])


def test_seeds_that_cannot_share_a_program_run_one_after_another():
  changes = dict(method="er", num_tasks=2, hidden_sizes="16", epochs=1,
                 buffer_size=50, minibatch_size=8, shuffle_classes=True)
  both = _single(4, num_seeds=2, **changes)
  assert not both["seeds_vmapped"]  # seeds 4, 5 pad their tasks differently
  single = _single(5, **changes)
  assert both["per_seed"][1]["acc_matrix"] == single["acc_matrix"]
  assert both["final"]["class_il"] == pytest.approx(np.mean(
      [entry["final"]["class_il"] for entry in both["per_seed"]]))


@pytest.mark.parametrize("flags,fragment", [
    (("--num_seeds=0",), "--num_seeds=0 must be at least 1"),
    (("--num_seeds=-3",), "--num_seeds=-3 must be at least 1"),
    (("--num_seeds=two",), "num_seeds"),
    (("--num_seeds=2", "--checkpoint_every_steps=50"),
     "keep no checkpoints"),
    (("--num_seeds=3", f"--seed={2**32 - 2}"), "lower --seed or --num_seeds"),
])
def test_bad_num_seeds_is_one_line_exit_2(capsys, tmp_path, flags, fragment):
  status = cli.main(["train.py", f"--workdir={tmp_path / 'run'}", *flags])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert status == 2
  assert len(lines) == 1, err
  assert fragment in lines[0]
  assert not os.path.exists(tmp_path / "run" / "results.json")


def test_a_stop_request_ends_a_multi_seed_run_without_saving():
  stop = types.SimpleNamespace(stop_requested=True,
                               stop_signal=signal.SIGTERM)
  config = validate(RunConfig(workdir="/unused", num_tasks=2, epochs=1,
                              hidden_sizes="8", num_seeds=2, progress=False,
                              tensorboard=False))
  with pytest.raises(checkpoint.RunInterrupted) as stopped:
    loop.run(config, checkpoints=stop)
  assert stopped.value.signum == signal.SIGTERM
  assert "keeps no checkpoints" in str(stopped.value)


def test_benchmark_compares_many_seeds_with_one(tmp_path):
  result = seeds_benchmark.seeds_against_one(
      QUICKSTART, str(tmp_path), num_seeds=2, rounds=1,
      extra=["--epochs=1", "--num_tasks=2", "--hidden_sizes=16"],
      warm_up=False)
  one, many = result["one"], result["many"]
  assert result["ratio"] == pytest.approx(many["median_wall_s"] /
                                          one["median_wall_s"])
  assert result["seeds_vmapped"]
  assert result["final_first_of_many"] == pytest.approx(
      result["final_one_seed"], abs=0.5)
  assert "ratio 2 seeds / 1 seed" in seeds_benchmark.format_seeds(result)
