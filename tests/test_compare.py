"""experiments/compare.py: rows from results.json, parts that ran, warnings,
CSV, the frontier plot, one-line errors."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from sparcl_jax.training import cli
from sparcl_jax.training import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")
TINY = ("--epochs=2", "--num_tasks=2", "--hidden_sizes=32", "--quiet",
        "--notensorboard")


def _real_runs(root):
  """Dense DER++ and SparCL-DER++ at sparsity 0.98 (DGM dropped: 0.8 of the
  gradient is not above 0.98 of the weights), DDR from the second epoch.
  Trained once, by the one test that reads them (pytest-xdist would train
  a module fixture's runs again in every worker)."""
  workdirs = []
  for name, extra in (("derpp", ()),
                      ("sparcl98", ("--method=sparcl_derpp",
                                    "--sparsity=0.98", "--ddr_epochs=1"))):
    workdir = str(root / name)
    assert cli.main(["train.py", f"--flagfile={QUICKSTART}", *TINY, *extra,
                     f"--workdir={workdir}"]) == 0
    workdirs.append(workdir)
  return workdirs


def _results(method, class_il, task_il, flops, time, seeds=None, parts=(),
             **flags):
  final = {"class_il": class_il, "task_il": task_il,
           "forgetting_class_il": 10.0, "bwt_class_il": -10.0}
  one = {"final": final, "train_flops": flops, "train_time_s": time,
         "parts": list(parts), "scenario": {"num_tasks": 5},
         "flags": {"method": method, "dataset": "mnist", "epochs": 5,
                   "batch_size": 32, "model": "mlp", "hidden_sizes": "400,400",
                   **flags}}
  if seeds is None:
    return one
  per_seed = [dict(one, final=dict(final, class_il=c, task_il=t))
              for c, t in seeds]
  cs, ts = zip(*seeds)
  mean = lambda v: sum(v) / len(v)
  std = lambda v: (sum((x - mean(v)) ** 2 for x in v) / len(v)) ** 0.5
  return dict(one, final=dict(final, class_il=mean(cs), task_il=mean(ts)),
              final_std={"class_il": std(cs), "task_il": std(ts),
                         "forgetting_class_il": 0.0, "bwt_class_il": 0.0},
              per_seed=per_seed, seeds=list(range(len(seeds))))


def _write(tmp_path, name, results):
  workdir = tmp_path / name
  workdir.mkdir()
  (workdir / "results.json").write_text(json.dumps(results))
  return str(workdir)


def _main(capsys, *args):
  status = compare.main(list(args))
  out, err = capsys.readouterr()
  return status, out, err


def test_real_runs(tmp_path, capsys):
  real_runs = _real_runs(tmp_path)
  capsys.readouterr()  # the runs' summaries
  _check_parts_are_what_ran_not_the_flags(real_runs, capsys)
  _check_csv_parses_back(real_runs, capsys)
  _check_plot_draws_the_frontier(real_runs, tmp_path, capsys)
  _check_the_script_runs_the_package(real_runs)


def _check_parts_are_what_ran_not_the_flags(real_runs, capsys):
  dense, sparse = compare.load_runs(real_runs)
  assert dense.results["parts"] == []
  # --dgm is on, but DGM was dropped at sparsity 0.98: not labelled DGM.
  assert sparse.flags["dgm"] and sparse.flags["ddr"]
  assert sparse.results["parts"] == ["TDM", "DDR"]
  status, out, err = _main(capsys, *real_runs)
  assert status == 0
  assert err == ""  # one setting: no warning
  rows = out.splitlines()[2:]
  assert rows[0].startswith("| run | method | parts | Class-IL | Task-IL | "
                            "forgetting (Class-IL) | BWT (Class-IL) | "
                            "training FLOPs | FLOPs vs first |")
  assert rows[2].startswith("| derpp | derpp | - | ")
  assert rows[3].startswith("| sparcl98 | sparcl_derpp s=0.98 | TDM+DDR | ")
  assert "DGM" not in out
  flops = [r.results["train_flops"] for r in (dense, sparse)]
  change = 100 * (flops[1] / flops[0] - 1)
  assert f"| {change:+.0f}% |" in rows[3] and change < -50


def test_exact_numbers_against_the_first_run(tmp_path, capsys):
  dense = _write(tmp_path, "dense", _results("derpp", 88.5, 99.1, 4e12, 30.0))
  sparse = _write(tmp_path, "sparse", _results(
      "sparcl_derpp", 89.25, 98.75, 1.52e12, 20.0, parts=["TDM", "DGM"],
      sparsity=0.75))
  status, out, err = _main(capsys, dense, sparse)
  assert (status, err) == (0, "")
  lines = out.splitlines()
  assert lines[0].startswith("FLOPs vs first: change in training FLOPs "
                             "against the first run (dense), -62% = 62% "
                             "fewer; speed-up:")
  # 1.52e12 / 4e12 = 0.38: -62%; 30 s / 20 s = 1.50x
  assert lines[4:] == [
      "| dense | derpp | - | 88.50 | 99.10 | 10.00 | -10.00 | 4e+12 | +0% | "
      "30 | 1.00x |",
      "| sparse | sparcl_derpp | TDM+DGM | 89.25 | 98.75 | 10.00 | -10.00 | "
      "1.52e+12 | -62% | 20 | 1.50x |"]


def test_several_seeds_show_mean_std_and_seed_count(tmp_path, capsys):
  dense = _write(tmp_path, "dense", _results(
      "derpp", 0, 0, 4e12, 40.0, seeds=[(88.0, 99.0), (90.0, 98.0),
                                        (89.0, 98.5)]))
  single = _write(tmp_path, "single", _results("er", 80.0, 97.0, 2e12, 10.0))
  status, out, err = _main(capsys, dense, single)
  assert status == 0
  assert err == ("warning: runs differ in num_seeds (3, 1); their FLOPs and "
                 "times are not comparable\n")
  lines = out.splitlines()
  assert "mean +- std over 1 or 3 seeds (numpy std, ddof 0)" in lines[0]
  assert lines[2].endswith("| speed-up | seeds |")
  # np.std([88, 90, 89]) = 0.8165; np.std([99, 98, 98.5]) = 0.4082
  assert lines[4] == ("| dense | derpp | - | 89.00 +- 0.82 | 98.50 +- 0.41 | "
                      "10.00 +- 0.00 | -10.00 +- 0.00 | 4e+12 | +0% | 40 | "
                      "1.00x | 3 |")
  assert lines[5] == ("| single | er | - | 80.00 | 97.00 | 10.00 | -10.00 | "
                      "2e+12 | -50% | 10 | 4.00x | 1 |")


def test_warning_names_each_differing_setting(tmp_path, capsys):
  a = _write(tmp_path, "a", dict(_results("derpp", 80, 90, 1e9, 1.0, epochs=1,
                                          buffer_size=200),
                                 scenario={"num_tasks": 2}))
  b = _write(tmp_path, "b", _results("sparcl_derpp", 80, 90, 1e9, 1.0,
                                     epochs=10, buffer_size=200, sparsity=0.9,
                                     tdm=True))
  # CLNP has no buffer and its own flags: neither is a difference.
  c = _write(tmp_path, "c", _results("clnp", 80, 90, 1e9, 1.0, epochs=10,
                                     l1=1e-5))
  status, _, err = _main(capsys, a, b, c)
  assert status == 0
  assert err.splitlines() == [
      "warning: runs differ in num_tasks (2, 5), epochs (1, 10); their FLOPs "
      "and times are not comparable"]
  status, _, err = _main(capsys, b, c)
  assert (status, err) == (0, "")


def _check_csv_parses_back(real_runs, capsys):
  status, out, _ = _main(capsys, "--csv", *real_runs)
  assert status == 0
  rows = list(csv.DictReader(io.StringIO(out)))
  assert [r["run"] for r in rows] == ["derpp", "sparcl98"]
  assert [r["parts"] for r in rows] == ["-", "TDM+DDR"]
  assert rows[1]["method"] == "sparcl_derpp s=0.98"
  results = [json.load(open(os.path.join(w, "results.json")))
             for w in real_runs]
  assert float(rows[1]["train_flops"]) == results[1]["train_flops"]
  assert float(rows[1]["class_il"]) == results[1]["final"]["class_il"]
  assert rows[0]["class_il_std"] == ""
  assert float(rows[0]["flops_change_pct"]) == 0.0
  assert float(rows[1]["speedup"]) == pytest.approx(
      results[0]["train_time_s"] / results[1]["train_time_s"])


def _check_plot_draws_the_frontier(real_runs, tmp_path, capsys):
  path = tmp_path / "frontier.png"
  assert _main(capsys, f"--plot={path}", *real_runs)[0] == 0
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert path.stat().st_size > 20_000
  figure = compare.plot_frontier(compare.load_runs(real_runs),
                                 str(tmp_path / "again.png"))
  time_axes, flops_axes = figure.axes
  assert time_axes.get_xlabel() == "training time (s, net of compilation)"
  assert flops_axes.get_xlabel() == "training FLOPs (log scale)"
  assert time_axes.get_ylabel() == "accuracy after the last task (%)"
  assert figure._suptitle.get_text().startswith(
      "Accuracy against training cost, 2 runs")
  for axes in figure.axes:
    assert [t.get_text() for t in axes.texts] == ["derpp",
                                                   "sparcl98 (TDM+DDR)"]
  legend = [t.get_text() for t in figure.legends[0].get_texts()]
  assert legend == ["Class-IL", "Task-IL"]


@pytest.mark.parametrize("case,fragment", [
    ("no_dir", "no such work directory"),
    ("no_results", "results.json does not exist; run experiments/train.py"),
    ("not_json", "is not a run's results.json (not JSON"),
    ("not_results", "is not the results.json of a run of experiments/train.py "
                    "(it has no flags, train_flops, final.class_il"),
    ("bad_flag", "unrecognized arguments: --baseline=x"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, fragment):
  good = _write(tmp_path, "good", _results("derpp", 80, 90, 1e9, 1.0))
  other = tmp_path / "other"
  other.mkdir()
  args = {"no_dir": [str(tmp_path / "missing")],
          "no_results": [str(other)],
          "not_json": [str(other / "notes.txt")],
          "not_results": [str(other / "results.json")],
          "bad_flag": ["--baseline=x"]}[case]
  (other / "notes.txt").write_text("not json\n")
  if case == "not_results":
    (other / "results.json").write_text('{"final": {}}')
  status, out, err = _main(capsys, good, *args)
  assert status == 2
  assert out == ""
  assert len(err.splitlines()) == 1, err
  assert err.startswith("compare.py: error: ")
  assert fragment in err


def _check_the_script_runs_the_package(real_runs):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "compare.py"),
       "--csv", *real_runs], capture_output=True, text=True, timeout=120,
      cwd=REPO, check=False, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[0].startswith("run,method,parts,class_il")
