"""experiments/colab.ipynb runs top to bottom on CPU with its small config.

The code cells are plain Python (no ``!`` or ``%`` lines), so they are
executed in order in one namespace with ``exec``: no Jupyter kernel is
needed, and the install cell finds the package already installed.
"""

import json
import os

import matplotlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab.ipynb")


def _code_cells():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  assert {c["cell_type"] for c in notebook["cells"]} == {"markdown", "code"}
  return ["".join(c["source"]) for c in notebook["cells"]
          if c["cell_type"] == "code"]


def test_code_cells_have_no_shell_or_magic_lines():
  cells = _code_cells()
  assert len(cells) == 5
  for source in cells:
    for line in source.splitlines():
      assert not line.lstrip().startswith(("!", "%")), line
    compile(source, NOTEBOOK, "exec")


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  matplotlib.use("Agg")
  monkeypatch.setenv("SPARCL_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("SPARCL_JAX_REPO", REPO)
  monkeypatch.setenv("SPARCL_NOTEBOOK_WORKDIR", str(tmp_path))
  # The notebook changes into the repository; monkeypatch changes back.
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__main__"}
  for index, source in enumerate(_code_cells()):
    exec(compile(source, f"colab.ipynb cell {index}", "exec"), namespace)  # pylint: disable=exec-used
  assert os.getcwd() == REPO
  quick, sparcl = namespace["quick"], namespace["sparcl"]
  assert quick["flags"]["method"] == "derpp"
  assert sparcl["flags"]["method"] == "sparcl_derpp"
  for results in (quick, sparcl):
    assert len(results["acc_matrix"]["class_il"]) == 2
    assert results["final"]["task_il"] > 50.0
  assert (tmp_path / "summary.png").stat().st_size > 10000
  assert (tmp_path / "quickstart" / "results.json").exists()
  assert os.listdir(tmp_path / "split_cifar10_sparcl_derpp" / "tensorboard")
  # Running the cells again loads the finished runs instead of retraining.
  before = (tmp_path / "quickstart" / "results.json").stat().st_mtime_ns
  exec(compile(_code_cells()[3], "colab.ipynb cell 3", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["quick"] == quick
  assert (tmp_path / "quickstart" / "results.json").stat().st_mtime_ns == before
  matplotlib.pyplot.close("all")
