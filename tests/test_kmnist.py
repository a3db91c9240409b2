"""KMNIST: IDX files written here, read by the real reader, trained on."""

import gzip
import json
import os
import re

import numpy as np
import pytest

from sparcl_jax.data import datasets, scenarios, sources
from sparcl_jax.errors import DataError
from sparcl_jax.training import cli

_FILES = {"train-images-idx3-ubyte": (20, 28, 28),
          "train-labels-idx1-ubyte": (20,),
          "t10k-images-idx3-ubyte": (10, 28, 28),
          "t10k-labels-idx1-ubyte": (10,)}


def _write_kmnist(folder, seed=0):
  """The four gzipped IDX files, every class in both splits."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  arrays = {}
  for base, shape in _FILES.items():
    if len(shape) == 1:
      array = rng.permutation(np.arange(shape[0]) % 10).astype(np.uint8)
    else:
      array = rng.integers(0, 256, shape).astype(np.uint8)
    magic = 0x0803 if len(shape) == 3 else 0x0801
    header = np.array([magic, *shape], dtype=">u4").tobytes()
    with gzip.open(os.path.join(folder, base + ".gz"), "wb") as f:
      f.write(header + array.tobytes())
    arrays[base] = array
  return arrays


def test_kmnist_is_registered_with_its_files_and_presets():
  spec = datasets.get("kmnist")
  assert spec.num_classes == 10 and spec.image_shape == (28, 28, 1)
  assert spec.files == tuple(_FILES)
  assert spec.url == "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
  assert spec.checksums is None
  assert scenarios.input_defaults("kmnist") == (False, (0.0,), (1.0,))
  assert {"split_kmnist", "permuted_kmnist"} <= set(scenarios.SCENARIOS)
  assert scenarios.default_num_tasks("permuted", "kmnist") == 10


def test_kmnist_idx_files_are_read_exactly(tmp_path):
  arrays = _write_kmnist(tmp_path / "kmnist")  # the named sub-folder
  ds = sources.load_dataset("kmnist", "files", str(tmp_path))
  assert ds.name == "kmnist" and ds.num_classes == 10
  assert ds.train_images.shape == (20, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_images[..., 0],
                                arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.train_labels,
                                arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.test_images[..., 0],
                                arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_labels,
                                arrays["t10k-labels-idx1-ubyte"])
  split = scenarios.build_scenario("split", ds, 5)
  assert [list(t.classes) for t in split.tasks][1] == [2, 3]


def test_kmnist_missing_files_name_its_url(tmp_path, monkeypatch):
  monkeypatch.delenv("SPARCL_JAX_DATA_MIRROR")  # the official location
  with pytest.raises(DataError, match=re.escape(
      "by hand (from http://codh.rois.ac.jp/kmnist/dataset/kmnist/) or "
      "drop --nodownload")):
    sources.load_dataset("kmnist", "files", str(tmp_path), download=False)


def test_train_py_trains_on_kmnist(tmp_path, capsys):
  _write_kmnist(tmp_path / "data")
  workdir = tmp_path / "run"
  status = cli.main(["train.py", f"--workdir={workdir}", "--dataset=kmnist",
                     "--data_source=files", f"--data_dir={tmp_path / 'data'}",
                     "--scenario=split", "--num_tasks=2", "--model=mlp",
                     "--hidden_sizes=8", "--method=sgd", "--epochs=1",
                     "--batch_size=5"])
  assert status == 0, capsys.readouterr().err
  results = json.loads((workdir / "results.json").read_text())
  assert results["flags"]["dataset"] == "kmnist"
  task_il = results["acc_matrix"]["task_il"]
  assert len(task_il) == 2 and all(len(row) == 2 for row in task_il)
