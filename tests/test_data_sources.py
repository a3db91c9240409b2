"""Tests for sparcl_jax.data.sources: real-format files written here."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from benchmarks.data_formats import (cifar_batch, idx_bytes, write_cifar_folder,
                                     write_cifar_tarball, write_idx)
from sparcl_jax.data import datasets, readers, sources
from sparcl_jax.data.datasets.digits import load_digits
from sparcl_jax.errors import DataError


def _hwc(flat_rows: np.ndarray) -> np.ndarray:
  # Reference conversion written out element by element.
  n = flat_rows.shape[0]
  out = np.zeros((n, 32, 32, 3), np.uint8)
  for i in range(n):
    for ch in range(3):
      for r in range(32):
        out[i, r, :, ch] = flat_rows[i, ch * 1024 + r * 32:ch * 1024 + r * 32
                                     + 32]
  return out


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_exactly(tmp_path, gz):
  arrays = write_idx(tmp_path, gz)
  ds = sources.load_dataset("mnist", "files", str(tmp_path))
  assert ds.name == "mnist" and ds.num_classes == 10
  assert ds.train_images.shape == (6, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (4, 28, 28, 1)
  assert ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images[..., 0],
                                arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.train_labels,
                                arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.test_images[..., 0],
                                arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_labels,
                                arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_found_in_named_subfolder(tmp_path):
  arrays = write_idx(tmp_path / "fashion_mnist", gz=True, seed=3)
  ds = sources.load_files("fashion_mnist", str(tmp_path))
  assert ds.name == "fashion_mnist"
  np.testing.assert_array_equal(ds.test_labels,
                                arrays["t10k-labels-idx1-ubyte"])


def test_missing_idx_folder_names_directory(tmp_path):
  with pytest.raises(DataError, match=re.escape(str(tmp_path))) as info:
    sources.load_dataset("mnist", "files", str(tmp_path))
  assert "train-images-idx3-ubyte" in str(info.value)
  assert "\n" not in str(info.value)


def test_data_dir_missing_or_a_file(tmp_path):
  # A --data_dir that does not exist is created for a download; with
  # --nodownload it is an error (tests/test_download.py covers the first).
  missing = tmp_path / "no_such_dir"
  with pytest.raises(DataError) as info:
    sources.load_files("mnist", str(missing), download=False)
  assert str(info.value).startswith(
      f"mnist: --data_dir={missing} does not exist; pass the directory")
  a_file = tmp_path / "train-images-idx3-ubyte"
  a_file.write_bytes(b"")
  for download in (True, False):
    with pytest.raises(DataError) as info:
      sources.load_files("cifar10", str(a_file), download=download)
    assert str(info.value).startswith(
        f"cifar10: --data_dir={a_file} is a file, not a directory; pass the "
        "directory that holds the dataset files")


@pytest.mark.parametrize("gz", [False, True])
def test_unreadable_file_says_check_permissions(tmp_path, monkeypatch, gz):
  """Permission denied is not a broken file: no advice to re-download.

  Injected (tests may run as root, whom file modes do not stop).
  """
  write_idx(tmp_path, gz=gz)

  def denied(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

  monkeypatch.setattr(readers, "open", denied, raising=False)
  monkeypatch.setattr(readers.gzip, "open", denied)
  path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
  with pytest.raises(DataError) as info:
    sources.load_files("mnist", str(tmp_path))
  assert str(info.value) == (f"cannot read {path}: permission denied; check "
                             "its permissions (it must be readable by this "
                             "user)")


def test_one_missing_idx_file(tmp_path):
  write_idx(tmp_path, gz=True)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*missing"):
    sources.load_files("mnist", str(tmp_path))


def test_idx_bad_magic(tmp_path):
  write_idx(tmp_path, gz=False)
  path = tmp_path / "train-labels-idx1-ubyte"
  raw = bytearray(path.read_bytes())
  raw[3] = 0x03  # an image magic number where labels are expected
  path.write_bytes(bytes(raw))
  with pytest.raises(DataError, match="magic"):
    sources.load_files("mnist", str(tmp_path))


def test_idx_truncated(tmp_path):
  write_idx(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(DataError, match="header promises 4704"):
    sources.load_files("mnist", str(tmp_path))


def test_idx_count_mismatch(tmp_path):
  write_idx(tmp_path, gz=False)
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(
      idx_bytes(np.zeros(5, np.uint8)))
  with pytest.raises(DataError, match="6 images but 5 labels"):
    sources.load_files("mnist", str(tmp_path))


def test_idx_corrupt_gzip(tmp_path):
  write_idx(tmp_path, gz=True)
  (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(DataError, match="cannot read"):
    sources.load_files("mnist", str(tmp_path))


# ---------------------------------------------------------------------------
# CIFAR


def test_cifar10_tarball(tmp_path):
  members = write_cifar_tarball(tmp_path, "cifar10")
  ds = sources.load_dataset("cifar10", "files", str(tmp_path))
  assert ds.train_images.shape == (10, 32, 32, 3)
  assert ds.test_images.shape == (3, 32, 32, 3)
  assert ds.num_classes == 10
  expected = np.concatenate(
      [members[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
  np.testing.assert_array_equal(ds.train_images, _hwc(expected))
  np.testing.assert_array_equal(
      ds.train_labels,
      sum((members[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
  np.testing.assert_array_equal(ds.test_labels,
                                members["test_batch"][b"labels"])


def test_cifar10_extracted_folder_and_folder_itself(tmp_path):
  folder, members = write_cifar_folder(tmp_path, "cifar10")
  from_parent = sources.load_files("cifar10", str(tmp_path))
  from_folder = sources.load_files("cifar10", folder)
  np.testing.assert_array_equal(from_parent.test_images,
                                _hwc(members["test_batch"][b"data"]))
  np.testing.assert_array_equal(from_folder.train_images,
                                from_parent.train_images)
  np.testing.assert_array_equal(from_folder.train_labels,
                                from_parent.train_labels)


def test_cifar100_fine_labels_from_tarball_and_folder(tmp_path):
  members = write_cifar_tarball(tmp_path / "tar", "cifar100")
  write_cifar_folder(tmp_path / "dir", "cifar100")
  for sub in ("tar", "dir"):
    ds = sources.load_files("cifar100", str(tmp_path / sub))
    assert ds.num_classes == 100
    assert ds.train_images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_labels,
                                  members["train"][b"fine_labels"])
    np.testing.assert_array_equal(ds.test_images,
                                  _hwc(members["test"][b"data"]))


def test_cifar_missing_names_directory(tmp_path):
  with pytest.raises(DataError, match=re.escape(str(tmp_path))) as info:
    sources.load_files("cifar10", str(tmp_path))
  assert "cifar-10-python.tar.gz" in str(info.value)


def test_cifar_missing_batch_in_folder(tmp_path):
  folder, _ = write_cifar_folder(tmp_path, "cifar10")
  os.remove(os.path.join(folder, "data_batch_3"))
  with pytest.raises(DataError, match="data_batch_3 is missing"):
    sources.load_files("cifar10", str(tmp_path))


def test_cifar_malformed_batch(tmp_path):
  folder, _ = write_cifar_folder(tmp_path, "cifar10")
  with open(os.path.join(folder, "data_batch_2"), "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(DataError, match=r"data_batch_2: expected data \[N, 3072"):
    sources.load_files("cifar10", str(tmp_path))
  with open(os.path.join(folder, "data_batch_2"), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(DataError, match="not a CIFAR python batch"):
    sources.load_files("cifar10", str(tmp_path))


def test_cifar_label_out_of_range(tmp_path):
  folder, _ = write_cifar_folder(tmp_path, "cifar10")
  batch = cifar_batch(2, b"labels", 0)
  batch[b"labels"] = [3, 10]
  with open(os.path.join(folder, "test_batch"), "wb") as f:
    pickle.dump(batch, f)
  with pytest.raises(DataError, match=r"labels outside \[0, 10\)"):
    sources.load_files("cifar10", str(tmp_path))


# ---------------------------------------------------------------------------
# Tiny-ImageNet


def _write_tiny(root):
  base = root / "tiny-imagenet-200"
  wnids = ["n0300", "n0100", "n0200"]  # sorted order: n0100, n0200, n0300
  (base / "val" / "images").mkdir(parents=True)
  (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
  rng = np.random.default_rng(0)
  for w in wnids:
    folder = base / "train" / w / "images"
    folder.mkdir(parents=True)
    for i in range(2):
      mode = "L" if i == 1 else "RGB"  # the real set has grayscale JPEGs too
      shape = (64, 64) if mode == "L" else (64, 64, 3)
      Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8),
                      mode=mode).save(folder / f"{w}_{i}.JPEG", "JPEG")
  lines = []
  for i, w in enumerate(["n0200", "n0300", "n0100", "n0200"]):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(
        base / "val" / "images" / f"val_{i}.JPEG", "JPEG")
    lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
  (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  return base


def test_tiny_imagenet_labels_follow_sorted_wnids(tmp_path):
  _write_tiny(tmp_path)
  ds = sources.load_dataset("tiny_imagenet", "files", str(tmp_path))
  assert ds.num_classes == 3
  assert ds.train_images.shape == (6, 64, 64, 3)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(ds.test_labels, [1, 2, 0, 1])
  assert ds.test_images.shape == (4, 64, 64, 3)
  # A grayscale source image comes back with three equal channels.
  gray = ds.train_images[1]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_tiny_imagenet_missing_annotations(tmp_path):
  base = _write_tiny(tmp_path)
  os.remove(base / "val" / "val_annotations.txt")
  with pytest.raises(DataError, match="val_annotations.txt is missing"):
    sources.load_files("tiny_imagenet", str(base))


def test_tiny_imagenet_missing_folder(tmp_path):
  with pytest.raises(DataError) as info:
    sources.load_files("tiny_imagenet", str(tmp_path), download=False)
  mirror = os.environ["SPARCL_JAX_DATA_MIRROR"]  # conftest.py's
  assert str(info.value) == (
      "tiny_imagenet: tiny-imagenet-200/ (unzipped tiny-imagenet-200.zip) "
      f"is not in {tmp_path / 'tiny_imagenet'} and --nodownload forbids "
      f"downloading; put it there by hand (from {mirror}/tiny_imagenet/"
      "tiny-imagenet-200.zip) or drop --nodownload")


def test_tiny_imagenet_reader_finds_the_download_folder(tmp_path):
  """Downloads unzip to DATA/tiny_imagenet/tiny-imagenet-200/."""
  _write_tiny(tmp_path / "tiny_imagenet")
  ds = sources.load_files("tiny_imagenet", str(tmp_path), download=False)
  np.testing.assert_array_equal(ds.test_labels, [1, 2, 0, 1])


# ---------------------------------------------------------------------------
# digits, tfds, dispatch


def test_digits_split_is_stratified_and_seeded():
  a = sources.load_dataset("digits", "embedded", None, seed=0)
  b = load_digits(0)
  c = load_digits(1)
  d = sources.load_dataset("digits", "digits", None, seed=1)
  np.testing.assert_array_equal(c.test_labels, d.test_labels)
  assert len(a.train_labels) + len(a.test_labels) == 1797
  assert a.train_images.shape[1:] == (8, 8, 1)
  assert a.train_images.dtype == np.uint8
  assert a.train_images.max() == 255 and a.train_images.min() == 0
  # Class c has n_c examples; round(0.2 * n_c) of them are held out.
  counts = np.bincount(np.concatenate([a.train_labels, a.test_labels]))
  np.testing.assert_array_equal(np.bincount(a.test_labels),
                                np.round(0.2 * counts).astype(int))
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert not np.array_equal(a.test_images, c.test_images)


def test_tfds_mock_mnist_through_data_source(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = sources.load_dataset("mnist", "tfds", str(tmp_path))
  assert ds.train_images.shape == (5, 28, 28, 1)
  assert ds.test_images.shape == (5, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.num_classes == 10
  assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10


def test_tfds_mock_cifar100_class_count(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=3,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = sources.load_tfds("cifar100", str(tmp_path))
  assert ds.num_classes == 100
  assert ds.train_images.shape == (3, 32, 32, 3)


def test_tfds_unprepared_names_directory(tmp_path):
  with pytest.raises(DataError, match="mnist: .*" + re.escape(str(tmp_path))):
    sources.load_tfds("mnist", str(tmp_path))


def test_tfds_unknown_name():
  with pytest.raises(DataError, match="tfds has no dataset 'no_such_set_x'"):
    sources.load_tfds("no_such_set_x", None)


@pytest.mark.parametrize("name,source,match", [
    ("imagenet_huge", "files", "valid names: mnist, fashion_mnist"),
    ("mnist", "ftp", "valid sources: files, tfds, embedded, digits"),
    ("mnist", "embedded", "only 'digits'"),
    ("cifar10", "digits", "only 'digits'"),
])
def test_unknown_dataset_or_source(tmp_path, name, source, match):
  with pytest.raises(DataError, match=match):
    sources.load_dataset(name, source, str(tmp_path))


def test_files_source_without_data_dir_reads_the_default_folder(tmp_path,
                                                              monkeypatch):
  monkeypatch.setenv("SPARCL_JAX_DATA_DIR", str(tmp_path))
  with pytest.raises(DataError) as info:
    sources.load_dataset("cifar10", "files", None, download=False)
  assert str(info.value).startswith(
      f"cifar10: cifar-10-python.tar.gz is not in {tmp_path / 'cifar10'} "
      "and --nodownload forbids downloading; put it there by hand")
  members = write_cifar_tarball(tmp_path / "cifar10", "cifar10")
  ds = sources.load_dataset("cifar10", "files", None, download=False)
  np.testing.assert_array_equal(ds.test_labels,
                                members["test_batch"][b"labels"])


# ---------------------------------------------------------------------------
# The registry


def test_every_dataset_is_one_module_and_drives_the_flag_choices():
  import pkgutil  # pylint: disable=g-import-not-at-top
  from sparcl_jax.training import config  # pylint: disable=g-import-not-at-top
  modules = {m.name for m in pkgutil.iter_modules(datasets.__path__)}
  assert modules == set(datasets.names())
  assert config.DATASETS == datasets.names()
  assert config.DATA_SOURCES == sources.SOURCES
  for name in datasets.names():
    spec = datasets.get(name)
    assert len(spec.image_shape) == 3 and spec.num_classes >= 2
    assert len(spec.mean) == len(spec.std) in (1, spec.image_shape[-1])
    assert spec.embedded or spec.files


def test_registry_refuses_a_taken_name_or_preset():
  mnist = datasets.get("mnist")
  with pytest.raises(ValueError, match="'mnist' is empty or taken"):
    datasets.register(mnist)
  with pytest.raises(ValueError,
                     match=r"preset names \['permuted_mnist', 'split_mnist'\]"):
    datasets.register(dataclasses.replace(mnist, name="mnist_copy"))
  assert "mnist_copy" not in datasets.names()
  with pytest.raises(DataError, match="valid names: mnist, fashion_mnist"):
    datasets.get("mnist_copy")
