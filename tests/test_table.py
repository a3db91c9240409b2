"""experiments/table.py: single-seed tables as before, multi-seed ones as mean +- std."""

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "table", os.path.join(REPO, "experiments", "table.py"))
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


def _results(method, class_il, task_il, flops, seeds=None, **flags):
  one = {"final": {"class_il": class_il, "task_il": task_il},
         "train_flops": flops, "train_examples": 1000, "wall_time_s": 12.3,
         "flags": {"method": method, "seed": 0, **flags}}
  if seeds is None:
    return one
  per_seed = [dict(one, final={"class_il": c, "task_il": t})
              for c, t in seeds]
  cs, ts = zip(*seeds)
  mean = lambda v: sum(v) / len(v)
  std = lambda v: (sum((x - mean(v)) ** 2 for x in v) / len(v)) ** 0.5
  return dict(one, final={"class_il": mean(cs), "task_il": mean(ts)},
              final_std={"class_il": std(cs), "task_il": std(ts)},
              per_seed=per_seed, seeds=list(range(len(seeds))))


def _write(tmp_path, name, results):
  workdir = tmp_path / name
  workdir.mkdir()
  (workdir / "results.json").write_text(json.dumps(results))
  return str(workdir)


def test_single_seed_table_unchanged(tmp_path):
  dense = _write(tmp_path, "dense", _results("derpp", 88.5, 99.1, 4e12))
  sparse = _write(tmp_path, "sparse", _results(
      "sparcl_derpp", 89.25, 98.75, 1e12, sparsity=0.75, tdm=True, dgm=True,
      ddr=True))
  assert table.markdown_table([dense, sparse], dense) == "\n".join([
      "| run | Class-IL | Task-IL | training FLOPs | FLOPs saved | "
      "examples | wall time (s) |",
      "|---|---|---|---|---|---|---|",
      "| derpp | 88.50 | 99.10 | 4e+12 | 1.00x | 1000 | 12 |",
      "| sparcl_derpp (TDM+DGM+DDR), s=0.75 | 89.25 | 98.75 | 1e+12 | 4.00x "
      "| 1000 | 12 |"])


def test_multi_seed_table_shows_mean_std_and_seed_count(tmp_path):
  dense = _write(tmp_path, "dense", _results(
      "derpp", 0, 0, 4e12, seeds=[(88.0, 99.0), (90.0, 98.0), (89.0, 98.5)]))
  single = _write(tmp_path, "single", _results("er", 80.0, 97.0, 2e12))
  lines = table.markdown_table([dense, single], dense).splitlines()
  assert lines[0].startswith("Class-IL, Task-IL: mean +- std over 1 or 3 "
                             "seeds (numpy std, ddof 0)")
  assert lines[2].endswith("| wall time (s) | seeds |")
  assert lines[3] == "|---|---|---|---|---|---|---|---|"
  # np.std([88, 90, 89]) = 0.8165; np.std([99, 98, 98.5]) = 0.4082
  assert lines[4] == ("| derpp | 89.00 +- 0.82 | 98.50 +- 0.41 | 4e+12 | "
                      "1.00x | 1000 | 12 | 3 |")
  assert lines[5] == "| er | 80.00 | 97.00 | 2e+12 | 2.00x | 1000 | 12 | 1 |"
