"""Loading image-classification datasets into memory as uint8 arrays.

Three sources are supported:

* ``"files"``: the original distribution files read with plain numpy (IDX for
  MNIST / Fashion-MNIST, the pickled python batches for CIFAR-10/100, the
  ``tiny-imagenet-200`` folder of JPEGs). Works on air-gapped machines.
* ``"tfds"``: any prepared TensorFlow Datasets image-classification dataset.
* ``"embedded"`` (or ``"digits"``): scikit-learn's bundled 8x8 digits (no
  files needed).

Every failure a user can fix (missing folder, truncated file, unknown name)
raises :class:`~sparcl_jax.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import tarfile
from typing import Callable, Optional, Sequence

import numpy as np

from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import DataError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet",
            "digits")
# "digits" is a synonym of "embedded" (the only embedded dataset).
SOURCES = ("files", "tfds", "embedded", "digits")

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_URLS = {
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "tiny_imagenet": "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
}
_CIFAR = {
    # name: (tarball, folder, train members, test member, label key, classes)
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                b"labels", 10),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ("train",),
                 "test", b"fine_labels", 100),
}


def load_dataset(name: str, source: str, data_dir: Optional[str],
                 seed: int = 0) -> Dataset:
  """Loads a dataset by name from the given source.

  ``"digits"`` needs no files, so it is loaded from scikit-learn whatever the
  source. With ``source="tfds"`` any tfds image-classification name works, not
  only those in ``DATASETS``.

  Args:
    name: dataset name, one of ``DATASETS`` (or any tfds name for tfds).
    source: one of ``SOURCES``.
    data_dir: folder holding the files (``"files"``), or the tfds data
      directory (``"tfds"``, None means tfds' default). Ignored for digits.
    seed: seed of the train/test split of digits (the other datasets come with
      their own split).

  Returns:
    The loaded :class:`Dataset`.

  Raises:
    DataError: unknown name or source, or missing / malformed data.

  Example:
    >>> ds = load_dataset("digits", "embedded", None, seed=0)
    >>> ds.train_images.shape[1:]
    (8, 8, 1)
  """
  if source not in SOURCES:
    raise DataError(f"unknown data source {source!r}; valid sources: "
                    f"{', '.join(SOURCES)}")
  if name == "digits":
    return load_digits(seed)
  if source in ("embedded", "digits"):
    raise DataError(f"dataset {name!r} is not embedded; only 'digits' is "
                    "(use --data_source=files or --data_source=tfds)")
  if source == "tfds":
    return load_tfds(name, data_dir)
  return load_files(name, data_dir)


def load_files(name: str, data_dir: Optional[str]) -> Dataset:
  """Loads a dataset from its original distribution files.

  ``data_dir`` may hold the files directly or in a sub-folder named after the
  dataset (``data_dir/mnist/...``). Expected layouts:

  * mnist, fashion_mnist: the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
  * cifar10: ``cifar-10-python.tar.gz`` or its extracted
    ``cifar-10-batches-py/`` (``data_dir`` may also be that folder itself).
  * cifar100: ``cifar-100-python.tar.gz`` or ``cifar-100-python/``.
  * tiny_imagenet: the extracted ``tiny-imagenet-200/`` folder; the test set
    is its labelled ``val`` split; class ids follow the sorted wnids.

  Args:
    name: one of ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
      ``tiny_imagenet``.
    data_dir: the folder to look in.

  Returns:
    The loaded :class:`Dataset` (uint8 NHWC images, int32 labels).

  Raises:
    DataError: unknown name, no data_dir, or missing / malformed files.

  Example:
    >>> ds = load_files("mnist", "/data")  # doctest: +SKIP
    >>> ds.train_images.shape  # doctest: +SKIP
    (60000, 28, 28, 1)
  """
  readers: dict[str, Callable[[str, str], Dataset]] = {
      "mnist": _load_idx, "fashion_mnist": _load_idx,
      "cifar10": _load_cifar, "cifar100": _load_cifar,
      "tiny_imagenet": _load_tiny_imagenet,
  }
  if name not in readers:
    raise DataError(f"unknown dataset {name!r} for --data_source=files; "
                    f"valid names: {', '.join(readers)}, digits")
  if not data_dir:
    raise DataError(f"{name}: --data_dir is required with "
                    f"--data_source=files (get the files from {_URLS[name]} "
                    "or use --data_source=tfds)")
  data_dir = os.path.expanduser(data_dir)
  _check_data_dir(name, data_dir)
  return readers[name](name, data_dir)


def _check_data_dir(name: str, data_dir: str) -> None:
  """A --data_dir that is missing, a file or unreadable, said as such."""
  if not os.path.exists(data_dir):
    raise DataError(f"{name}: --data_dir={data_dir} does not exist; pass the "
                    f"directory holding the dataset files (from "
                    f"{_URLS[name]})")
  if not os.path.isdir(data_dir):
    raise DataError(f"{name}: --data_dir={data_dir} is a file, not a "
                    "directory; pass the directory that holds the dataset "
                    f"files (perhaps --data_dir="
                    f"{os.path.dirname(data_dir) or '.'})")
  if not os.access(data_dir, os.R_OK | os.X_OK):
    raise DataError(f"{name}: --data_dir={data_dir} cannot be read (permission "
                    "denied); check its permissions")


def _unreadable(path: str, err: BaseException, fix: str) -> DataError:
  """A file that failed to read: permissions, or broken content (``fix``)."""
  if isinstance(err, PermissionError):
    return DataError(f"cannot read {path}: permission denied; check its "
                     "permissions (it must be readable by this user)")
  return DataError(f"cannot read {path}: {err}; {fix}")


def load_tfds(name: str, data_dir: Optional[str]) -> Dataset:
  """Loads a prepared TensorFlow Datasets image-classification dataset.

  Reads through ``tfds.data_source`` (array_record, no TensorFlow needed);
  when that is impossible (e.g. the dataset was prepared as TFRecord) it falls
  back to ``tfds.load(batch_size=-1)``, which needs TensorFlow. Never
  downloads. The test split is ``"test"``, else ``"validation"``.

  Args:
    name: tfds dataset name, e.g. ``"mnist"``; ``tiny_imagenet`` is not in
      the tfds catalog.
    data_dir: tfds data directory, or None for tfds' default.

  Returns:
    The loaded :class:`Dataset`.

  Raises:
    DataError: unknown name, dataset not prepared, or images of varying shape.

  Example:
    >>> ds = load_tfds("mnist", "~/tensorflow_datasets")  # doctest: +SKIP
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = data_dir or "tfds' default data_dir"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"tfds has no dataset {name!r}; tfds names include "
                    "mnist, fashion_mnist, cifar10, cifar100") from None
  image_key, label_key, num_classes = _tfds_keys(builder)
  known = set(builder.info.splits.keys())
  test_split = "validation" if "test" not in known and (
      "validation" in known) else "test"
  splits = ["train", test_split]
  try:
    train, test = tfds.data_source(name, split=splits, data_dir=data_dir,
                                   download=False)
    arrays = [_read_data_source(s, image_key, label_key, name)
              for s in (train, test)]
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # tfds signals "not prepared / wrong format" with several exception types.
    if importlib.util.find_spec("tensorflow") is None:
      raise DataError(
          f"{name}: no prepared array_record copy in {where} "
          f"({type(e).__name__}); "
          f"prepare it with `tfds build {name} --file_format=array_record`, "
          "install tensorflow, or use --data_source=files") from None
    arrays = _load_with_tensorflow(tfds, name, splits, data_dir, where)
  (train_x, train_y), (test_x, test_y) = arrays
  return _make_dataset(name, train_x, train_y, test_x, test_y, num_classes,
                       where)


def load_digits(seed: int = 0) -> Dataset:
  """Loads scikit-learn's bundled 8x8 digits with a seeded 80/20 split.

  Pixel values 0..16 are scaled to uint8 0..255. The split is stratified:
  20% (rounded) of each class goes to the test set, chosen by ``seed``.

  Args:
    seed: seed of the split; the same seed always gives the same split.

  Returns:
    A :class:`Dataset` of 1797 images, [N, 8, 8, 1] uint8, 10 classes.

  Example:
    >>> ds = load_digits(0)
    >>> len(ds.train_labels) + len(ds.test_labels)
    1797
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  raw = datasets.load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = raw.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  test_mask = np.zeros(len(labels), dtype=bool)
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    test_mask[members[:int(round(0.2 * len(members)))]] = True
  return Dataset("digits", images[~test_mask], labels[~test_mask],
                 images[test_mask], labels[test_mask], 10)


# ----------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _candidate_dirs(data_dir: str, *subdirs: str) -> list[str]:
  return [data_dir] + [os.path.join(data_dir, s) for s in subdirs]


def _load_idx(name: str, data_dir: str) -> Dataset:
  dirs = _candidate_dirs(data_dir, name, name.replace("_", "-"))
  folder = next((d for d in dirs if _find_idx(d, _IDX_FILES[0])), None)
  if folder is None:
    raise DataError(
        f"{name}: no IDX files in {data_dir} (also tried its {name}/ "
        f"sub-folder); expected {', '.join(_IDX_FILES)} (optionally .gz) "
        f"from {_URLS[name]}, or use --data_source=tfds")
  parts = []
  for base in _IDX_FILES:
    path = _find_idx(folder, base)
    if path is None:
      raise DataError(f"{name}: {base}[.gz] is missing in {folder}; "
                      f"get it from {_URLS[name]}")
    parts.append(_read_idx(path, images=("images" in base)))
  train_x, train_y, test_x, test_y = parts
  return _make_dataset(name, train_x[..., None], train_y, test_x[..., None],
                       test_y, 10, folder)


def _find_idx(folder: str, base: str) -> Optional[str]:
  for path in (os.path.join(folder, base), os.path.join(folder, base + ".gz")):
    if os.path.isfile(path):
      return path
  return None


def _read_idx(path: str, images: bool) -> np.ndarray:
  """Reads one IDX file: big-endian header, then uint8 records."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise _unreadable(path, e, "re-download it") from None
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


def _load_cifar(name: str, data_dir: str) -> Dataset:
  tarball, folder_name, train_members, test_member, label_key, classes = (
      _CIFAR[name])
  reader = None
  for d in _candidate_dirs(data_dir, name):
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
        f"download {_URLS[name]}, or use --data_source=tfds")
  batches = [_read_cifar_batch(reader, m, label_key)
             for m in train_members + (test_member,)]
  train_x = np.concatenate([b[0] for b in batches[:-1]])
  train_y = np.concatenate([b[1] for b in batches[:-1]])
  return _make_dataset(name, train_x, train_y, *batches[-1], classes,
                       data_dir)


def _folder_reader(folder: str) -> Callable[[str], tuple[bytes, str]]:
  def read(member: str) -> tuple[bytes, str]:
    path = os.path.join(folder, member)
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing; re-extract the CIFAR tarball")
    try:
      with open(path, "rb") as f:
        return f.read(), path
    except OSError as e:
      raise _unreadable(path, e, "re-extract the CIFAR tarball") from None
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
      raise _unreadable(tarball, e, "re-download it") from None
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
# Tiny-ImageNet


def _load_tiny_imagenet(name: str, data_dir: str) -> Dataset:
  root = next((d for d in _candidate_dirs(data_dir, "tiny-imagenet-200")
               if os.path.isfile(os.path.join(d, "wnids.txt"))), None)
  if root is None:
    raise DataError(
        f"{name}: no tiny-imagenet-200/ (with wnids.txt, train/, val/) in "
        f"{data_dir}; download and unzip {_URLS[name]}")
  with open(os.path.join(root, "wnids.txt")) as f:
    wnids = sorted(line.strip() for line in f if line.strip())
  class_of = {w: i for i, w in enumerate(wnids)}
  train_files, train_y = [], []
  for wnid in wnids:
    folder = os.path.join(root, "train", wnid, "images")
    if not os.path.isdir(folder):
      raise DataError(f"{folder} is missing; re-extract tiny-imagenet-200")
    files = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith((".jpeg", ".jpg", ".png")))
    train_files += [os.path.join(folder, f) for f in files]
    train_y += [class_of[wnid]] * len(files)
  test_files, test_y = _tiny_val_files(root, class_of)
  return _make_dataset(name, _read_images(train_files), np.asarray(train_y),
                       _read_images(test_files), np.asarray(test_y),
                       len(wnids), root)


def _tiny_val_files(root: str,
                    class_of: dict[str, int]) -> tuple[list[str], list[int]]:
  annotations = os.path.join(root, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    raise DataError(f"{annotations} is missing; re-extract tiny-imagenet-200")
  files, labels = [], []
  with open(annotations) as f:
    for line in f:
      fields = line.split("\t")
      if len(fields) < 2:
        continue
      if fields[1] not in class_of:
        raise DataError(f"{annotations} names class {fields[1]!r} that is not "
                        "in wnids.txt; re-extract tiny-imagenet-200")
      files.append(os.path.join(root, "val", "images", fields[0]))
      labels.append(class_of[fields[1]])
  return files, labels


def _read_images(paths: Sequence[str]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = []
  for path in paths:
    try:
      with Image.open(path) as im:
        # Some Tiny-ImageNet JPEGs are grayscale.
        images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except OSError as e:
      raise _unreadable(path, e, "re-extract the dataset") from None
  if not images:
    raise DataError("no images found; re-extract the dataset")
  return _stack(images, os.path.dirname(paths[0]))


# ----------------------------------------------------------------------------
# tfds helpers


def _tfds_keys(builder) -> tuple[str, str, int]:
  """Finds the image key, label key and class count of a tfds builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = builder.info.features
  supervised = builder.info.supervised_keys
  if supervised and len(supervised) == 2 and all(
      isinstance(k, str) for k in supervised):
    image_key, label_key = supervised
  else:
    image_key = next((k for k, v in features.items()
                      if isinstance(v, tfds.features.Image)), None)
    label_key = next((k for k, v in features.items()
                      if isinstance(v, tfds.features.ClassLabel)), None)
  label = features[label_key] if label_key in features else None
  if (image_key not in features or
      not isinstance(label, tfds.features.ClassLabel)):
    raise DataError(f"tfds dataset {builder.name!r} is not an image "
                    "classification dataset (needs an Image and a ClassLabel "
                    "feature)")
  return image_key, label_key, int(label.num_classes)


def _read_data_source(source, image_key: str, label_key: str,
                      name: str) -> tuple[np.ndarray, np.ndarray]:
  # One record at a time: `__getitems__` is not available under
  # tfds.testing.mock_data, and decoding dominates the cost anyway.
  images, labels = [], []
  for i in range(len(source)):
    example = source[i]
    images.append(np.asarray(example[image_key], dtype=np.uint8))
    labels.append(int(example[label_key]))
  if not images:
    raise DataError(f"tfds dataset {name!r} has an empty split")
  return _stack(images, f"tfds:{name}"), np.asarray(labels)


def _load_with_tensorflow(tfds, name: str, splits: list[str],
                          data_dir: Optional[str], where: str):
  try:
    loaded = tfds.as_numpy(tfds.load(name, split=splits, data_dir=data_dir,
                                     batch_size=-1, as_supervised=True,
                                     download=False))
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"{name}: not prepared in {where} ({reason}); run "
                    f"`tfds build {name}` where there is internet, or use "
                    "--data_source=files") from None
  return [(np.asarray(x, dtype=np.uint8), np.asarray(y)) for x, y in loaded]


# ----------------------------------------------------------------------------
# Shared checks


def _stack(images: Sequence[np.ndarray], where: str) -> np.ndarray:
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DataError(f"images in {where} have different shapes "
                    f"{sorted(shapes)[:3]}; resize them to one shape first")
  stacked = np.stack(images)
  return stacked[..., None] if stacked.ndim == 3 else stacked


def _make_dataset(name: str, train_x: np.ndarray, train_y: np.ndarray,
                  test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                  where: str) -> Dataset:
  """Validates label ranges and counts, then builds the Dataset."""
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
