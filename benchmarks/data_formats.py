"""Writers of datasets' original file formats, with random content.

Tests, the download tests' local mirror, the notebook test and the CPU
timings of the CIFAR configs all need files that the real readers accept
(IDX for MNIST-like sets, the pickled python batches of CIFAR-10/100, the
Tiny-ImageNet zip of JPEGs) without
the real data, which these machines do not have. The content is random; the
layout, dtypes, member names and sizes are the originals'.

Command line, a CIFAR-10 of the real size (50000 + 10000 images) in the real
format, for timing runs on a machine without the data:

  python -m benchmarks.data_formats --cifar10 DIR

Example:
  >>> import tempfile
  >>> from benchmarks import data_formats
  >>> folder = tempfile.mkdtemp()
  >>> members = data_formats.write_cifar_tarball(folder, "cifar10",
  ...                                            train_per_batch=2, test=3)
  >>> sorted(members)[:2], members["test_batch"][b"data"].shape
  (['data_batch_1', 'data_batch_2'], (3, 3072))
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of a uint8 array of 1 (labels) or 3 (images) dims.

  Args:
    array: labels ``(N,)`` or images ``(N, H, W)``.

  Returns:
    The bytes of the file (big-endian header, then the uint8 values).

  Example:
    >>> idx_bytes(np.array([1, 2]))[:4].hex()
    '00000801'
  """
  magic = 0x0803 if array.ndim == 3 else 0x0801
  header = np.array([magic, *array.shape], dtype=">u4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def write_idx(folder: str, gz: bool, n_train: int = 6, n_test: int = 4,
              seed: int = 0) -> dict[str, np.ndarray]:
  """Writes the four IDX files of an MNIST-like dataset.

  Args:
    folder: where to write (created if missing).
    gz: gzip each file (``NAME.gz``) as the official copies are.
    n_train, n_test: number of 28x28 images of each split.
    seed: seed of the random content.

  Returns:
    ``{IDX name (without .gz): the array written}``.

  Example:
    >>> import tempfile
    >>> arrays = write_idx(tempfile.mkdtemp(), gz=True, n_train=3)
    >>> arrays["train-images-idx3-ubyte"].shape
    (3, 28, 28)
  """
  rng = np.random.default_rng(seed)
  shapes = ((n_train, 28, 28), (n_train,), (n_test, 28, 28), (n_test,))
  arrays = {name: rng.integers(0, 256 if len(shape) == 3 else 10, shape)
            for name, shape in zip(IDX_NAMES, shapes)}
  os.makedirs(folder, exist_ok=True)
  for name, array in arrays.items():
    data = idx_bytes(array)
    opener = gzip.open if gz else open
    with opener(os.path.join(folder, name + (".gz" if gz else "")), "wb") as f:
      f.write(data)
  return arrays


def cifar_batch(n: int, label_key: bytes, seed: int) -> dict[bytes, object]:
  """One pickled CIFAR batch: ``data`` (N, 3072) uint8 and its labels.

  Args:
    n: number of images.
    label_key: ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100,
      which also gets ``coarse_labels``).
    seed: seed of the random content.

  Returns:
    The batch dictionary, as the original pickles hold it.

  Example:
    >>> sorted(cifar_batch(2, b"fine_labels", 0))
    [b'coarse_labels', b'data', b'fine_labels']
  """
  rng = np.random.default_rng(seed)
  num_classes = 10 if label_key == b"labels" else 100
  batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
           label_key: rng.integers(0, num_classes, n).tolist()}
  if label_key == b"fine_labels":
    batch[b"coarse_labels"] = [0] * n
  return batch


def cifar_members(name: str, train_per_batch: int = 2, test: int = 3):
  """The folder name, tarball name and batches of CIFAR-10 or CIFAR-100.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    train_per_batch: images in each CIFAR-10 ``data_batch_i`` (CIFAR-100
      has one ``train`` batch of twice this size).
    test: images in the test batch.

  Returns:
    ``(folder name, tarball name, {member name: batch})``.

  Example:
    >>> cifar_members("cifar100")[:2]
    ('cifar-100-python', 'cifar-100-python.tar.gz')
  """
  if name == "cifar10":
    members = {f"data_batch_{i}": cifar_batch(train_per_batch, b"labels", i)
               for i in range(1, 6)}
    members["test_batch"] = cifar_batch(test, b"labels", 9)
    return "cifar-10-batches-py", "cifar-10-python.tar.gz", members
  members = {"train": cifar_batch(2 * train_per_batch, b"fine_labels", 1),
             "test": cifar_batch(test, b"fine_labels", 2)}
  return "cifar-100-python", "cifar-100-python.tar.gz", members


def write_cifar_folder(root: str, name: str, train_per_batch: int = 2,
                       test: int = 3):
  """Writes the extracted folder (``cifar-10-batches-py/``) under ``root``.

  Args:
    root: parent folder.
    name: ``"cifar10"`` or ``"cifar100"``.
    train_per_batch, test: sizes, as in :func:`cifar_members`.

  Returns:
    ``(the folder written, {member name: batch})``.

  Example:
    >>> import tempfile
    >>> folder, _ = write_cifar_folder(tempfile.mkdtemp(), "cifar10")
    >>> os.path.basename(folder)
    'cifar-10-batches-py'
  """
  folder_name, _, members = cifar_members(name, train_per_batch, test)
  folder = os.path.join(root, folder_name)
  os.makedirs(folder)
  for member, batch in members.items():
    with open(os.path.join(folder, member), "wb") as f:
      pickle.dump(batch, f)
  return folder, members


def write_cifar_tarball(root: str, name: str, train_per_batch: int = 2,
                        test: int = 3) -> dict[str, dict[bytes, object]]:
  """Writes ``cifar-10-python.tar.gz`` (or CIFAR-100's) under ``root``.

  Args:
    root: folder of the tarball (created if missing).
    name: ``"cifar10"`` or ``"cifar100"``.
    train_per_batch, test: sizes, as in :func:`cifar_members`
      (10000 and 10000 give CIFAR-10's real size).

  Returns:
    ``{member name: batch}``.

  Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> _ = write_cifar_tarball(root, "cifar100")
    >>> os.listdir(root)
    ['cifar-100-python.tar.gz']
  """
  folder_name, tarball, members = cifar_members(name, train_per_batch, test)
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, tarball), "w:gz") as tar:
    for member, batch in members.items():
      raw = pickle.dumps(batch)
      info = tarfile.TarInfo(f"{folder_name}/{member}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return members


def write_tiny_imagenet_zip(root: str, wnids=("n02", "n01"), train: int = 2,
                            val: int = 3, seed: int = 0) -> dict[str, object]:
  """Writes ``tiny-imagenet-200.zip`` under ``root``, laid out as the real one.

  ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG``
  and ``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt``. The
  images are 64x64 RGB PNGs under the JPEG names (PIL reads them by
  content), so what a reader decodes is exactly what was written.

  Args:
    root: folder of the zip (created if missing).
    wnids: the class ids, in any order (readers sort them).
    train: training images per class.
    val: validation images, their classes taken in turn.
    seed: seed of the random content.

  Returns:
    ``{"train": {wnid: [images]}, "val": [(image, wnid)]}``, uint8 arrays.

  Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> written = write_tiny_imagenet_zip(root)
    >>> os.listdir(root), sorted(written["train"])
    (['tiny-imagenet-200.zip'], ['n01', 'n02'])
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  def image_bytes():
    array = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return array, buffer.getvalue()

  written = {"train": {}, "val": []}
  os.makedirs(root, exist_ok=True)
  base = "tiny-imagenet-200"
  with zipfile.ZipFile(os.path.join(root, f"{base}.zip"), "w") as archive:
    archive.writestr(f"{base}/wnids.txt", "\n".join(wnids) + "\n")
    for wnid in wnids:
      written["train"][wnid] = []
      for i in range(train):
        array, raw = image_bytes()
        archive.writestr(f"{base}/train/{wnid}/images/{wnid}_{i}.JPEG", raw)
        written["train"][wnid].append(array)
    lines = []
    for i in range(val):
      wnid = wnids[i % len(wnids)]
      array, raw = image_bytes()
      archive.writestr(f"{base}/val/images/val_{i}.JPEG", raw)
      lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
      written["val"].append((array, wnid))
    archive.writestr(f"{base}/val/val_annotations.txt",
                     "\n".join(lines) + "\n")
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cifar10", metavar="DIR", required=True,
                      help="folder to write a real-size cifar-10-python.tar.gz")
  args = parser.parse_args(argv)
  write_cifar_tarball(args.cifar10, "cifar10", train_per_batch=10000,
                      test=10000)
  print(os.path.join(args.cifar10, "cifar-10-python.tar.gz"))


if __name__ == "__main__":
  main()
