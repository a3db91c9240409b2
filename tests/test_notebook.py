"""experiments/colab.ipynb runs in a Jupyter kernel as it runs on Colab.

nbclient executes the notebook in a real IPython kernel. The only cell the
test adds is the one papermill would add after the cell tagged
``parameters``: ``SETTING = "small"``, and the md5 of the CIFAR-10 tarball
that a mirror on 127.0.0.1 serves (small, in the real format), which stands
in for the published one. Everything else is the notebook's own code path on
Colab: the repository found where the install cell clones it, CIFAR-10
downloaded on first use (through ``SPARCL_JAX_DATA_MIRROR``) into the data
folder, dense DER++ and SparCL-DER++ trained on the same split, and the
comparison table and plots.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading

import nbclient
import nbformat
import pytest

from benchmarks.data_formats import write_cifar_tarball

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab.ipynb")
TARBALL = "cifar-10-python.tar.gz"


class _Mirror(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, root):
    self.requested = []
    handler = functools.partial(_Handler, directory=root)
    super().__init__(("127.0.0.1", 0), handler)


class _Handler(http.server.SimpleHTTPRequestHandler):

  def do_GET(self):
    self.server.requested.append(self.path)
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
  """A CIFAR-10 mirror on 127.0.0.1: ``(server, md5 of its tarball)``."""
  write_cifar_tarball(str(tmp_path / "mirror" / "cifar10"), "cifar10",
                      train_per_batch=40, test=50)
  with open(tmp_path / "mirror" / "cifar10" / TARBALL, "rb") as f:
    md5 = hashlib.md5(f.read()).hexdigest()
  server = _Mirror(str(tmp_path / "mirror"))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  # The kernel inherits the environment: conftest.py's temporary data
  # folder, and this mirror.
  monkeypatch.setenv("SPARCL_JAX_DATA_MIRROR",
                     f"http://127.0.0.1:{server.server_address[1]}")
  yield server, md5
  server.shutdown()
  server.server_close()


def _parameters_cell(md5: str):
  source = f"""\
SETTING = "small"
import contextlib, dataclasses
from sparcl_jax.data import datasets, download
_small_cifar10 = contextlib.ExitStack()
_small_cifar10.enter_context(datasets.replaced(dataclasses.replace(
    datasets.get("cifar10"), downloads=(download.RemoteFile(
        "{TARBALL}", "https://www.cs.toronto.edu/~kriz/{TARBALL}",
        "{md5}", also=("cifar-10-batches-py",)),))))
"""
  return nbformat.v4.new_code_cell(source)


def _text(cell) -> str:
  return "".join(out.get("text", "") for out in cell.get("outputs", ())
                 if out.get("output_type") == "stream")


def test_notebook_is_colab_ready():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == "code"]
  # The one edit a user makes: the form field at the top.
  assert code[0].metadata.get("tags") == ["parameters"]
  assert "REPO_URL = " in code[0].source
  assert '# @param {type:"string"}' in code[0].source
  assert notebook.metadata["accelerator"] == "GPU"
  # Saved without outputs, so it opens clean.
  assert all(not c.outputs for c in code)


def test_notebook_runs_in_a_kernel(tmp_path, mirror):
  server, md5 = mirror
  workspace = tmp_path / "colab"
  workspace.mkdir()
  # Where the install cell clones the repository; it is installed already.
  os.symlink(REPO, workspace / "sparcl_jax")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  at = next(i for i, c in enumerate(notebook.cells)
            if "parameters" in c.metadata.get("tags", ()))
  notebook.cells.insert(at + 1, _parameters_cell(md5))
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(workspace)}})
  client.execute()

  # Downloaded once, from the mirror, into the data folder.
  assert server.requested == [f"/cifar10/{TARBALL}"]
  cached = os.path.join(os.environ["SPARCL_JAX_DATA_DIR"], "cifar10", TARBALL)
  with open(cached, "rb") as f:
    assert hashlib.md5(f.read()).hexdigest() == md5

  runs = workspace / "runs" / "small"
  results = {}
  for name in ("derpp", "sparcl_derpp"):
    with open(runs / name / "results.json") as f:
      results[name] = json.load(f)
  dense, sparcl = results["derpp"], results["sparcl_derpp"]
  assert (dense["flags"]["method"], sparcl["flags"]["method"]) == (
      "derpp", "sparcl_derpp")
  # The same Split CIFAR-10 setting for both.
  for key in ("dataset", "scenario", "num_tasks", "epochs", "model", "nf",
              "batch_size", "buffer_size"):
    assert dense["flags"][key] == sparcl["flags"][key], key
  assert dense["flags"]["dataset"] == "cifar10"
  assert (dense["flags"]["num_tasks"], dense["flags"]["nf"]) == (2, 4)
  assert sparcl["parts"] == ["TDM", "DGM", "DDR"]
  assert sparcl["train_flops"] < dense["train_flops"]

  # Progress lines while training, and the comparison at the end.
  text = "\n".join(_text(c) for c in notebook.cells if c.cell_type == "code")
  assert "task 1/2 epoch 1/2" in text and "task 2/2 epoch 2/2" in text
  compared = next(_text(c) for c in notebook.cells
                  if "compare.main" in c.source)
  table = [line for line in compared.splitlines() if line.startswith("|")]
  assert table[0].startswith("| run | method | parts | Class-IL | Task-IL")
  assert [line.split(" | ")[:3] for line in table[2:]] == [
      ["| derpp", "derpp", "-"],
      ["| sparcl_derpp", "sparcl_derpp s=0.75", "TDM+DGM+DDR"]]
  assert os.path.getsize(runs / "frontier.png") > 10000
  assert os.path.getsize(runs / "acc_matrices.png") > 10000
