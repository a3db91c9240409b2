"""Datasets that fetch and check themselves (sparcl_jax/data/download.py).

A ThreadingHTTPServer on 127.0.0.1 serves small files in the real formats
(benchmarks/data_formats.py) laid out as a mirror (``<dataset>/<file>``);
the registered entries are stood in for (``datasets.replaced``) by copies
carrying those files' md5s. Besides serving, the server can cut a transfer
short or accept a request and never answer. conftest.py points every test
at a temporary data folder and a refused mirror; these tests replace those.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import os
import threading
import time

import numpy as np
import pooch
import pytest
from PIL import Image

from benchmarks.data_formats import (write_cifar_tarball, write_idx,
                                     write_tiny_imagenet_zip)
from sparcl_jax.data import datasets, download, sources
from sparcl_jax.data.download import RemoteFile
from sparcl_jax.errors import DataError
from sparcl_jax.training import cli

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GZ = tuple(f"{f}.gz" for f in IDX)


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, root):
    self.root = root
    self.paths = []  # every path requested, in order
    self.cut = set()  # paths answered with a body shorter than promised
    self.hang = set()  # paths accepted and never answered
    self.release = threading.Event()
    super().__init__(("127.0.0.1", 0), _Handler)

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.SimpleHTTPRequestHandler):
  """``python -m http.server`` on the mirror folder, plus two faults."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, directory=args[2].root, **kwargs)

  def do_GET(self):
    self.server.paths.append(self.path)
    if self.path in self.server.hang:
      self.server.release.wait(30)
      return
    if self.path in self.server.cut:
      self.send_response(200)
      self.send_header("Content-Length", "100000")
      self.end_headers()
      self.wfile.write(b"x" * 1000)
      self.wfile.flush()
      self.close_connection = True
      return
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture
def server(tmp_path, monkeypatch):
  """A mirror serving tmp_path/mirror; SPARCL_JAX_DATA_MIRROR points at it."""
  srv = _Server(str(tmp_path / "mirror"))
  os.makedirs(srv.root)
  thread = threading.Thread(target=srv.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  monkeypatch.setenv("SPARCL_JAX_DATA_MIRROR", srv.url)
  yield srv
  srv.release.set()
  srv.shutdown()
  srv.server_close()


def _md5(path):
  with open(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def _mnist_on(srv, n_train=6, n_test=4, seed=0):
  """Writes MNIST-format files on the mirror; returns (arrays, spec)."""
  folder = os.path.join(srv.root, "mnist")
  arrays = write_idx(folder, gz=True, n_train=n_train, n_test=n_test,
                     seed=seed)
  official = datasets.get("mnist")
  spec = dataclasses.replace(official, downloads=tuple(
      dataclasses.replace(r, md5=_md5(os.path.join(folder, r.fname)))
      for r in official.downloads))
  return arrays, spec


def _listing(folder):
  """Every file and folder under ``folder``, relative, sorted."""
  found = []
  for path, dirs, files in os.walk(folder):
    found += [os.path.relpath(os.path.join(path, n), folder)
              for n in dirs + files]
  return sorted(found)


def _error(fn, *args, **kwargs):
  with pytest.raises(DataError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


def _by_hand(fname, folder):
  return (f"put {fname} in {folder} by hand (or pass --data_dir=FOLDER "
          "holding it)")


# ---------------------------------------------------------------------------
# Downloads that work


def test_download_reads_back_exactly_and_only_once(server, tmp_path):
  arrays, spec = _mnist_on(server)
  data = tmp_path / "data"
  with datasets.replaced(spec):
    ds = sources.load_dataset("mnist", "files", str(data))
    assert server.paths == [f"/mnist/{f}" for f in GZ]
    assert _listing(data) == ["mnist"] + [f"mnist/{f}" for f in sorted(GZ)]
    np.testing.assert_array_equal(ds.train_images[..., 0],
                                  arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.train_labels,
                                  arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_images[..., 0],
                                  arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels,
                                  arrays["t10k-labels-idx1-ubyte"])
    again = sources.load_dataset("mnist", "files", str(data))
  assert len(server.paths) == 4  # nothing downloaded the second time
  np.testing.assert_array_equal(again.train_images, ds.train_images)


def test_default_folder_is_sparcl_jax_data_dir(server, tmp_path, monkeypatch):
  _, spec = _mnist_on(server)
  monkeypatch.setenv("SPARCL_JAX_DATA_DIR", str(tmp_path / "cache"))
  assert download.data_folder(None) == str(tmp_path / "cache")
  with datasets.replaced(spec):
    sources.load_dataset("mnist", "files", None)
  assert _listing(tmp_path / "cache" / "mnist") == sorted(GZ)


def test_default_folder_without_the_variable_is_pooch_cache(monkeypatch):
  monkeypatch.delenv("SPARCL_JAX_DATA_DIR")
  assert download.data_folder("") == str(
      pooch.os_cache("sparcl_jax").expanduser())
  assert download.data_folder("~/d") == os.path.expanduser("~/d")


def test_mirror_url_is_dataset_then_file(monkeypatch):
  remote = datasets.get("fashion_mnist").downloads[1]
  assert download.source_url("fashion_mnist", remote, "http://m:8/a/") == (
      "http://m:8/a/fashion_mnist/train-labels-idx1-ubyte.gz")
  monkeypatch.delenv("SPARCL_JAX_DATA_MIRROR")
  assert download.source_url("fashion_mnist", remote) == (
      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
      "train-labels-idx1-ubyte.gz")


def test_files_by_hand_are_not_downloaded(server, tmp_path):
  # Uncompressed files in the folder itself: nothing to fetch.
  arrays = write_idx(str(tmp_path), gz=False)
  ds = sources.load_dataset("mnist", "files", str(tmp_path))
  assert server.paths == []
  np.testing.assert_array_equal(ds.test_labels,
                                arrays["t10k-labels-idx1-ubyte"])


def test_cifar10_tarball_download(server, tmp_path):
  members = write_cifar_tarball(os.path.join(server.root, "cifar10"),
                                "cifar10")
  remote = datasets.get("cifar10").downloads[0]
  spec = dataclasses.replace(datasets.get("cifar10"), downloads=(
      dataclasses.replace(remote, md5=_md5(os.path.join(
          server.root, "cifar10", remote.fname))),))
  with datasets.replaced(spec):
    ds = sources.load_dataset("cifar10", "files", str(tmp_path / "d"))
  assert _listing(tmp_path / "d") == ["cifar10",
                                      "cifar10/cifar-10-python.tar.gz"]
  np.testing.assert_array_equal(
      ds.test_images,
      members["test_batch"][b"data"].reshape(-1, 3, 32, 32).transpose(
          0, 2, 3, 1))


def test_tiny_imagenet_zip_is_unzipped_and_read(server, tmp_path):
  written = write_tiny_imagenet_zip(os.path.join(server.root,
                                                 "tiny_imagenet"))
  remote = datasets.get("tiny_imagenet").downloads[0]
  spec = dataclasses.replace(
      datasets.get("tiny_imagenet"), downloads=(dataclasses.replace(
          remote, md5=_md5(os.path.join(server.root, "tiny_imagenet",
                                        remote.fname))),))
  with datasets.replaced(spec):
    ds = sources.load_dataset("tiny_imagenet", "files", str(tmp_path / "d"))
    sources.load_dataset("tiny_imagenet", "files", str(tmp_path / "d"))
  assert len(server.paths) == 1
  # The zip is gone, its folder in place, no scratch folder left.
  assert sorted(os.listdir(tmp_path / "d" / "tiny_imagenet")) == [
      "tiny-imagenet-200"]
  # Sorted wnids: n01 is class 0, n02 class 1.
  expected = written["train"]["n01"] + written["train"]["n02"]
  np.testing.assert_array_equal(ds.train_images, np.stack(expected))
  np.testing.assert_array_equal(ds.train_labels, [0, 0, 1, 1])
  np.testing.assert_array_equal(ds.test_images,
                                np.stack([a for a, _ in written["val"]]))
  np.testing.assert_array_equal(ds.test_labels, [1, 0, 1])
  with Image.open(tmp_path / "d" / "tiny_imagenet" / "tiny-imagenet-200" /
                  "val" / "images" / "val_0.JPEG") as im:
    assert im.format == "PNG"  # what was written, byte for byte


# ---------------------------------------------------------------------------
# Downloads that fail: one line, nothing left behind


def test_wrong_checksum_is_named_and_the_file_deleted(server, tmp_path):
  _, spec = _mnist_on(server)
  first = spec.downloads[0]
  spec = dataclasses.replace(spec, downloads=(
      dataclasses.replace(first, md5="0" * 32),) + spec.downloads[1:])
  data = tmp_path / "data"
  data.mkdir()
  with datasets.replaced(spec):
    message = _error(sources.load_dataset, "mnist", "files", str(data))
  got = _md5(os.path.join(server.root, "mnist", first.fname))
  assert message == (
      f"mnist: wrong checksum: {server.url}/mnist/{first.fname} gave "
      f"{first.fname} with md5 {got}, the published md5 is {'0' * 32}; the "
      f"download was deleted; retry, or "
      f"{_by_hand(first.fname, data / 'mnist')}")
  assert _listing(data) == []


def test_server_down_fails_fast_with_the_url(tmp_path, closed_port,
                                             monkeypatch):
  url = f"http://127.0.0.1:{closed_port}"
  monkeypatch.setenv("SPARCL_JAX_DATA_MIRROR", url)
  start = time.perf_counter()
  message = _error(sources.load_dataset, "mnist", "files",
                   str(tmp_path / "new" / "data"))
  assert time.perf_counter() - start < 5
  folder = tmp_path / "new" / "data" / "mnist"
  assert message == (
      f"mnist: cannot download {url}/mnist/train-images-idx3-ubyte.gz "
      "(connection refused: the server is down or offline); check the "
      f"connection, or {_by_hand('train-images-idx3-ubyte.gz', folder)}")
  assert _listing(tmp_path) == []  # the folders it created are gone too


def test_transfer_cut_short_leaves_no_partial_file(server, tmp_path):
  _, spec = _mnist_on(server)
  server.cut.add("/mnist/t10k-images-idx3-ubyte.gz")
  with datasets.replaced(spec):
    message = _error(sources.load_dataset, "mnist", "files",
                     str(tmp_path / "d"))
  assert message.startswith(
      f"mnist: cannot download {server.url}/mnist/t10k-images-idx3-ubyte.gz "
      "(the transfer was cut short); check the connection")
  # The two verified files before it stay; nothing of the cut one does.
  assert _listing(tmp_path / "d") == [
      "mnist", "mnist/train-images-idx3-ubyte.gz",
      "mnist/train-labels-idx1-ubyte.gz"]


def test_server_that_never_answers_times_out(server, tmp_path, monkeypatch):
  _, spec = _mnist_on(server)
  server.hang.add("/mnist/train-images-idx3-ubyte.gz")
  monkeypatch.setattr(download, "TIMEOUT", (2.0, 0.5))
  start = time.perf_counter()
  with datasets.replaced(spec):
    message = _error(sources.load_dataset, "mnist", "files",
                     str(tmp_path / "d"))
  assert time.perf_counter() - start < 5
  assert message.startswith(
      f"mnist: cannot download {server.url}/mnist/train-images-idx3-ubyte.gz "
      "(the server sent nothing for 0.5 s); check the connection")
  assert not (tmp_path / "d").exists()


def test_nodownload_names_the_folder_and_the_files(server, tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  message = _error(sources.load_dataset, "mnist", "files", str(data),
                   download=False)
  assert message == (
      f"mnist: {', '.join(GZ)} are not in {data / 'mnist'} and --nodownload "
      f"forbids downloading; put them there by hand (from {server.url}/"
      "mnist/) or drop --nodownload")
  assert server.paths == [] and _listing(data) == []


def test_disk_full_is_named_and_leaves_nothing(server, tmp_path, monkeypatch):
  _, spec = _mnist_on(server)

  def fill_the_disk(self, url, output_file, pooch_, check_only=False):
    del self, url, pooch_, check_only
    with open(output_file, "wb") as f:
      f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(pooch.HTTPDownloader, "__call__", fill_the_disk)
  data = tmp_path / "data"
  data.mkdir()
  with datasets.replaced(spec):
    message = _error(sources.load_dataset, "mnist", "files", str(data))
  assert message == (
      "the disk is full: no space left to write train-images-idx3-ubyte.gz "
      f"in {data / 'mnist'}; free some space, or set SPARCL_JAX_DATA_DIR or "
      "--data_dir to a folder on another disk")
  assert _listing(data) == []


# ---------------------------------------------------------------------------
# The command line


def test_train_downloads_from_the_mirror_then_trains(server, tmp_path,
                                                     monkeypatch, capsys):
  _, spec = _mnist_on(server, n_train=40, n_test=20)
  monkeypatch.setenv("SPARCL_JAX_DATA_DIR", str(tmp_path / "cache"))
  workdir = tmp_path / "run"
  with datasets.replaced(spec):
    status = cli.main(["train.py", f"--workdir={workdir}", "--dataset=mnist",
                       "--data_source=files", "--scenario=split",
                       "--num_tasks=2", "--model=mlp", "--hidden_sizes=8",
                       "--method=sgd", "--epochs=1", "--batch_size=5",
                       "--noprogress", "--notensorboard", "--quiet"])
  err = capsys.readouterr().err
  assert status == 0, err
  assert err == ""
  assert server.paths == [f"/mnist/{f}" for f in GZ]
  assert _listing(tmp_path / "cache" / "mnist") == sorted(GZ)
  assert (workdir / "results.json").exists()


def test_train_failed_download_is_one_line_exit_2(tmp_path, closed_port,
                                                  capsys):
  # conftest.py's mirror is the closed port.
  status = cli.main(["train.py", f"--workdir={tmp_path / 'run'}",
                     "--dataset=cifar10", "--data_source=files",
                     f"--data_dir={tmp_path / 'data'}", "--model=mlp"])
  err = capsys.readouterr().err
  assert status == 2
  assert err.splitlines() == [
      f"train.py: error: cifar10: cannot download http://127.0.0.1:"
      f"{closed_port}/cifar10/cifar-10-python.tar.gz (connection refused: "
      "the server is down or offline); check the connection, or "
      f"{_by_hand('cifar-10-python.tar.gz', tmp_path / 'data' / 'cifar10')}"]
  assert not (tmp_path / "data").exists()


def test_nodownload_flag_reaches_the_loader(tmp_path, capsys):
  status = cli.main(["train.py", f"--workdir={tmp_path / 'run'}",
                     "--dataset=mnist", "--data_source=files",
                     "--nodownload"])
  err = capsys.readouterr().err
  assert status == 2
  assert len(err.splitlines()) == 1
  assert err.startswith(
      f"train.py: error: mnist: {', '.join(GZ)} are not in "
      f"{os.environ['SPARCL_JAX_DATA_DIR']}/mnist and --nodownload forbids")
