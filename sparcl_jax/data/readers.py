"""Readers of the file formats several datasets share, and their checks.

* IDX (MNIST and its look-alikes): :func:`read_idx_dataset`.
* CIFAR's pickled python batches: :func:`cifar_reader`.

A reader is what a :class:`~sparcl_jax.data.datasets.DatasetSpec` declares:
``reader(spec, data_dir, seed) -> Dataset``. The helpers at the end
(:func:`make_dataset`, :func:`stack`, ...) are the checks every reader, the
tfds source included, runs on what it read, so a broken download fails in
the same one-line way whatever its format.

Every failure a user can fix raises :class:`~sparcl_jax.errors.DataError`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import DataError

if TYPE_CHECKING:  # the specs module imports this one to declare readers
  from sparcl_jax.data.datasets import DatasetSpec

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


# ----------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST, ...)


def read_idx_dataset(spec: "DatasetSpec", data_dir: str,
                     seed: int = 0) -> Dataset:
  """Reads the four IDX files of an MNIST-like dataset.

  The files (``spec.files``, each optionally gzipped) may lie in ``data_dir``
  or in its sub-folder named after the dataset (``mnist/``,
  ``fashion_mnist/`` or ``fashion-mnist/``).

  Args:
    spec: the dataset's entry; its ``files`` are the train images, train
      labels, test images and test labels, in that order.
    data_dir: the folder to look in.
    seed: unused (the files carry their own split).

  Returns:
    The :class:`Dataset`: uint8 images [N, H, W, 1], int32 labels.

  Raises:
    DataError: missing, truncated or malformed files.

  Examples:
    >>> from sparcl_jax.data import datasets
    >>> read_idx_dataset(datasets.get("mnist"), "/data")  # doctest: +SKIP
  """
  del seed
  name = spec.name
  dirs = candidate_dirs(data_dir, name, name.replace("_", "-"))
  folder = next((d for d in dirs if _find_idx(d, spec.files[0])), None)
  if folder is None:
    raise DataError(
        f"{name}: no IDX files in {data_dir} (also tried its {name}/ "
        f"sub-folder); expected {', '.join(spec.files)} (optionally .gz) "
        f"from {spec.url}, or use --data_source=tfds")
  parts = []
  for base in spec.files:
    path = _find_idx(folder, base)
    if path is None:
      raise DataError(f"{name}: {base}[.gz] is missing in {folder}; "
                      f"get it from {spec.url}")
    parts.append(read_idx(path, images=("images" in base)))
  train_x, train_y, test_x, test_y = parts
  return make_dataset(name, train_x[..., None], train_y, test_x[..., None],
                      test_y, spec.num_classes, folder)


def _find_idx(folder: str, base: str) -> Optional[str]:
  for path in (os.path.join(folder, base), os.path.join(folder, base + ".gz")):
    if os.path.isfile(path):
      return path
  return None


def read_idx(path: str, images: bool) -> np.ndarray:
  """Reads one IDX file: a big-endian header, then uint8 records.

  Args:
    path: the file, gzipped when its name ends in ``.gz``.
    images: whether it holds images (magic 0x803) or labels (0x801).

  Returns:
    The uint8 array, [N, H, W] for images, [N] for labels.

  Raises:
    DataError: unreadable, truncated, or not an IDX file of that kind.

  Examples:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels")
    >>> header = np.array([0x801, 3], ">u4").tobytes()
    >>> with open(path, "wb") as f:
    ...   _ = f.write(header + bytes([4, 0, 9]))
    >>> read_idx(path, images=False)
    array([4, 0, 9], dtype=uint8)
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise unreadable(path, e, "re-download it") from None
  header = 16 if images else 8
  magic = _IDX_IMAGES_MAGIC if images else _IDX_LABELS_MAGIC
  if len(raw) < header:
    raise DataError(f"{path} is truncated ({len(raw)} bytes); re-download it")
  dims = np.frombuffer(raw[:header], dtype=">u4")
  if dims[0] != magic:
    raise DataError(f"{path} is not an IDX {'image' if images else 'label'} "
                    f"file (magic {int(dims[0]):#010x}, expected "
                    f"{magic:#010x}); re-download it")
  shape = tuple(int(d) for d in dims[1:])
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise DataError(f"{path} holds {len(raw) - header} bytes of data, its "
                    f"header promises {expected}; re-download it")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# ----------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python batches


def cifar_reader(folder_name: str, train_members: Sequence[str],
                 test_member: str, label_key: bytes
                 ) -> Callable[["DatasetSpec", str, int], Dataset]:
  """A reader of CIFAR's python batches, from the tarball or extracted.

  The tarball is ``spec.files[0]``; ``data_dir`` may hold it, its extracted
  folder, or be that folder itself (also one level down, in ``<name>/``).

  Args:
    folder_name: the folder the tarball extracts to.
    train_members: the training batches' file names in that folder.
    test_member: the test batch's file name.
    label_key: the key of the labels in each batch (``b"labels"`` for
      CIFAR-10, ``b"fine_labels"`` for CIFAR-100).

  Returns:
    ``reader(spec, data_dir, seed) -> Dataset`` (NHWC uint8 images).

  Examples:
    >>> read = cifar_reader("cifar-10-batches-py", ["data_batch_1"],
    ...                     "test_batch", b"labels")
  """
  def read(spec: "DatasetSpec", data_dir: str, seed: int = 0) -> Dataset:
    del seed
    name, tarball = spec.name, spec.files[0]
    reader = None
    for d in candidate_dirs(data_dir, name):
      if os.path.isfile(os.path.join(d, test_member)):
        reader = _folder_reader(d)
      elif os.path.isfile(os.path.join(d, folder_name, test_member)):
        reader = _folder_reader(os.path.join(d, folder_name))
      elif os.path.isfile(os.path.join(d, tarball)):
        reader = _tar_reader(os.path.join(d, tarball), folder_name)
      if reader is not None:
        break
    if reader is None:
      raise DataError(
          f"{name}: found neither {tarball} nor {folder_name}/ in {data_dir}; "
          f"download {spec.url}, or use --data_source=tfds")
    batches = [_read_cifar_batch(reader, m, label_key)
               for m in tuple(train_members) + (test_member,)]
    train_x = np.concatenate([b[0] for b in batches[:-1]])
    train_y = np.concatenate([b[1] for b in batches[:-1]])
    return make_dataset(name, train_x, train_y, *batches[-1],
                        spec.num_classes, data_dir)
  return read


def _folder_reader(folder: str) -> Callable[[str], tuple[bytes, str]]:
  def read(member: str) -> tuple[bytes, str]:
    path = os.path.join(folder, member)
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing; re-extract the CIFAR tarball")
    try:
      with open(path, "rb") as f:
        return f.read(), path
    except OSError as e:
      raise unreadable(path, e, "re-extract the CIFAR tarball") from None
  return read


def _tar_reader(tarball: str,
                folder_name: str) -> Callable[[str], tuple[bytes, str]]:
  def read(member: str) -> tuple[bytes, str]:
    where = f"{tarball}:{folder_name}/{member}"
    try:
      with tarfile.open(tarball, "r:*") as tar:
        f = tar.extractfile(f"{folder_name}/{member}")
        if f is None:
          raise KeyError(member)
        return f.read(), where
    except KeyError:
      raise DataError(f"{where} is missing; re-download {tarball}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
      raise unreadable(tarball, e, "re-download it") from None
  return read


def _read_cifar_batch(reader: Callable[[str], tuple[bytes, str]], member: str,
                      label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one pickled batch into NHWC uint8 images and labels."""
  raw, where = reader(member)
  try:
    # The batches are the dataset's own python pickles; there is no other
    # format to read them from.
    batch = pickle.loads(raw, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int32)
  except Exception:  # pylint: disable=broad-except
    raise DataError(f"{where} is not a CIFAR python batch with b'data' and "
                    f"{label_key!r}; re-download it") from None
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
    raise DataError(f"{where}: expected data [N, 3072] and N labels, got "
                    f"{data.shape} and {labels.shape}; re-download it")
  # Rows are channel-major (all R, then G, then B) 32x32 planes.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


# ----------------------------------------------------------------------------
# Shared checks


def candidate_dirs(data_dir: str, *subdirs: str) -> list[str]:
  """``data_dir`` itself, then each of its named sub-folders.

  Args:
    data_dir: the folder the user gave.
    *subdirs: sub-folder names the files may sit in.

  Returns:
    The folders to look in, in that order.

  Examples:
    >>> candidate_dirs("/data", "mnist")
    ['/data', '/data/mnist']
  """
  return [data_dir] + [os.path.join(data_dir, s) for s in subdirs]


def check_data_dir(name: str, data_dir: str, url: str) -> None:
  """Says a --data_dir that is missing, a file or unreadable as such.

  Args:
    name: the dataset, for the message.
    data_dir: the folder to check.
    url: where the dataset's files come from, for the message.

  Raises:
    DataError: the folder cannot hold the files.

  Examples:
    >>> check_data_dir("mnist", "/nope",  # doctest: +ELLIPSIS
    ...                "http://example.org")
    Traceback (most recent call last):
    ...
    sparcl_jax.errors.DataError: mnist: --data_dir=/nope does not exist; ...
  """
  if not os.path.exists(data_dir):
    raise DataError(f"{name}: --data_dir={data_dir} does not exist; pass the "
                    f"directory holding the dataset files (from {url})")
  if not os.path.isdir(data_dir):
    raise DataError(f"{name}: --data_dir={data_dir} is a file, not a "
                    "directory; pass the directory that holds the dataset "
                    f"files (perhaps --data_dir="
                    f"{os.path.dirname(data_dir) or '.'})")
  if not os.access(data_dir, os.R_OK | os.X_OK):
    raise DataError(f"{name}: --data_dir={data_dir} cannot be read (permission "
                    "denied); check its permissions")


def unreadable(path: str, err: BaseException, fix: str) -> DataError:
  """The error of a file that failed to read: permissions, or its content.

  Args:
    path: the file.
    err: what reading it raised.
    fix: what to do when the content is broken, e.g. ``"re-download it"``.

  Returns:
    The :class:`DataError` to raise.

  Examples:
    >>> str(unreadable("/d/f", EOFError("cut short"), "re-download it"))
    'cannot read /d/f: cut short; re-download it'
  """
  if isinstance(err, PermissionError):
    return DataError(f"cannot read {path}: permission denied; check its "
                     "permissions (it must be readable by this user)")
  return DataError(f"cannot read {path}: {err}; {fix}")


def stack(images: Sequence[np.ndarray], where: str) -> np.ndarray:
  """Stacks images of one shape into [N, H, W, C] (C = 1 for 2-D images).

  Args:
    images: the images, [H, W] or [H, W, C] each.
    where: where they come from, for the message.

  Returns:
    The stacked array.

  Raises:
    DataError: the images differ in shape.

  Examples:
    >>> stack([np.zeros((2, 3), np.uint8)] * 4, "here").shape
    (4, 2, 3, 1)
  """
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DataError(f"images in {where} have different shapes "
                    f"{sorted(shapes)[:3]}; resize them to one shape first")
  stacked = np.stack(images)
  return stacked[..., None] if stacked.ndim == 3 else stacked


def make_dataset(name: str, train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 where: str) -> Dataset:
  """Checks label ranges, counts and shapes, then builds the Dataset.

  Args:
    name: the dataset's name.
    train_x, train_y, test_x, test_y: images [N, H, W, C] and labels [N].
    num_classes: labels must lie in ``[0, num_classes)``.
    where: where they were read, for the message.

  Returns:
    The :class:`Dataset` (contiguous uint8 images, int32 labels).

  Raises:
    DataError: a count, a label or a shape does not fit.

  Examples:
    >>> x = np.zeros((2, 4, 4, 1), np.uint8)
    >>> make_dataset("toy", x, [0, 1], x, [1, 0], 2, "memory").num_classes
    2
  """
  train_y = np.asarray(train_y).astype(np.int32)
  test_y = np.asarray(test_y).astype(np.int32)
  for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
    if len(x) != len(y):
      raise DataError(f"{name} in {where}: {split} has {len(x)} images but "
                      f"{len(y)} labels; re-download it")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise DataError(f"{name} in {where}: {split} labels outside "
                      f"[0, {num_classes}); re-download it")
  if train_x.shape[1:] != test_x.shape[1:]:
    raise DataError(f"{name} in {where}: train images {train_x.shape[1:]} and "
                    f"test images {test_x.shape[1:]} differ in shape")
  return Dataset(name, np.ascontiguousarray(train_x, dtype=np.uint8), train_y,
                 np.ascontiguousarray(test_x, dtype=np.uint8), test_y,
                 int(num_classes))
