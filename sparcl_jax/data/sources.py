"""Loading image-classification datasets into memory as uint8 arrays.

Three sources are supported:

* ``"files"``: the original distribution files, read by the reader each
  registered dataset declares (:mod:`sparcl_jax.data.datasets`: IDX for
  MNIST-like sets, the pickled python batches for CIFAR-10/100, the
  ``tiny-imagenet-200`` folder of JPEGs). Files the data folder lacks are
  downloaded and checked first (:mod:`sparcl_jax.data.download`); with
  ``download=False`` it works on air-gapped machines.
* ``"tfds"``: any prepared TensorFlow Datasets image-classification dataset.
* ``"embedded"`` (or ``"digits"``): datasets that need no files
  (scikit-learn's bundled 8x8 digits).

Every failure a user can fix (missing folder, truncated file, unknown name)
raises :class:`~sparcl_jax.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import numpy as np

from sparcl_jax.data import datasets, download as download_lib
from sparcl_jax.data.readers import check_data_dir, make_dataset, stack
from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import DataError

# "digits" is a synonym of "embedded" (digits is the embedded dataset).
SOURCES = ("files", "tfds", "embedded", "digits")
EMBEDDED_SOURCES = ("embedded", "digits")


def load_dataset(name: str, source: str, data_dir: Optional[str],
                 seed: int = 0, download: bool = True) -> Dataset:
  """Loads a dataset by name from the given source.

  Embedded datasets (digits) need no files, so they load whatever the
  source. With ``source="tfds"`` any tfds image-classification name works,
  not only the registered ones.

  Args:
    name: a registered dataset name (:func:`datasets.names`), or any tfds
      name for tfds.
    source: one of ``SOURCES``.
    data_dir: folder holding the files (``"files"``, None means the default
      data folder, :func:`download.data_folder`), or the tfds data
      directory (``"tfds"``, None means tfds' default). Ignored for embedded
      datasets.
    seed: seed of the train/test split of digits (the other datasets come with
      their own split).
    download: with ``"files"``, download the files the folder lacks (False
      makes them an error). tfds never downloads.

  Returns:
    The loaded :class:`Dataset`.

  Raises:
    DataError: unknown name or source, or missing / malformed data.

  Examples:
    >>> ds = load_dataset("digits", "embedded", None, seed=0)
    >>> ds.train_images.shape[1:]
    (8, 8, 1)
  """
  if source not in SOURCES:
    raise DataError(f"unknown data source {source!r}; valid sources: "
                    f"{', '.join(SOURCES)}")
  spec = datasets.find(name)
  if spec is not None and spec.embedded:
    return spec.reader(spec, None, seed)
  if source in EMBEDDED_SOURCES:
    embedded = [n for n in datasets.names() if datasets.get(n).embedded]
    raise DataError(f"dataset {name!r} is not embedded; only "
                    f"{', '.join(map(repr, embedded))} is "
                    "(use --data_source=files or --data_source=tfds)")
  if source == "tfds":
    return load_tfds(name, data_dir)
  return load_files(name, data_dir, download)


def load_files(name: str, data_dir: Optional[str],
               download: bool = True) -> Dataset:
  """Loads a dataset from its original distribution files.

  The dataset's entry in :mod:`sparcl_jax.data.datasets` names its files
  and reads them. ``data_dir`` may hold the files directly or in a
  sub-folder named after the dataset (``data_dir/mnist/...``, where
  downloads go: files it lacks are first downloaded and checked by
  :func:`download.fetch`). Layouts:

  * mnist, fashion_mnist: the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).
  * cifar10: ``cifar-10-python.tar.gz`` or its extracted
    ``cifar-10-batches-py/`` (``data_dir`` may also be that folder itself).
  * cifar100: ``cifar-100-python.tar.gz`` or ``cifar-100-python/``.
  * tiny_imagenet: the extracted ``tiny-imagenet-200/`` folder; the test set
    is its labelled ``val`` split; class ids follow the sorted wnids.

  Args:
    name: a registered dataset name.
    data_dir: the folder to look in; None or "" for the default data folder
      (``$SPARCL_JAX_DATA_DIR``, else ``~/.cache/sparcl_jax``).
    download: download the files the folder lacks; False makes them an
      error (``--nodownload``).

  Returns:
    The loaded :class:`Dataset` (uint8 NHWC images, int32 labels).

  Raises:
    DataError: unknown name, missing files (with ``download=False``), a
      failed download, or malformed files.

  Examples:
    >>> ds = load_files("mnist", "/data")  # doctest: +SKIP
    >>> ds.train_images.shape  # doctest: +SKIP
    (60000, 28, 28, 1)
  """
  spec = datasets.find(name)
  if spec is None:
    raise DataError(f"unknown dataset {name!r} for --data_source=files; "
                    f"valid names: {', '.join(datasets.names())}")
  if spec.embedded:
    return spec.reader(spec, None, 0)
  root = download_lib.data_folder(data_dir)
  if data_dir and (os.path.exists(root) or not download):
    check_data_dir(name, root, spec.url)
  download_lib.fetch(spec, root, download=download)
  return spec.reader(spec, root, 0)


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

  Examples:
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
  return make_dataset(name, train_x, train_y, test_x, test_y, num_classes,
                       where)


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
  return stack(images, f"tfds:{name}"), np.asarray(labels)


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
