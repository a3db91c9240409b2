"""Tiny-ImageNet (Stanford CS231n): 64x64 colour images of 200 classes, as
the extracted ``tiny-imagenet-200/`` folder of JPEGs.

The test set is its labelled ``val`` split; class ids follow the sorted
wnids, and the class count is read from ``wnids.txt``.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("tiny_imagenet").presets
  {'split_tinyimagenet': ('split', 10)}
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import (candidate_dirs, make_dataset, stack,
                                     unreadable)
from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import DataError


def read_tiny_imagenet(spec: DatasetSpec, data_dir: str,
                       seed: int = 0) -> Dataset:
  """Reads ``tiny-imagenet-200/`` (in ``data_dir``, in its
  ``tiny_imagenet/`` sub-folder where downloads go, or ``data_dir`` itself).

  Args:
    spec: the dataset's entry.
    data_dir: the folder to look in.
    seed: unused (the folder carries its split).

  Returns:
    The :class:`Dataset`; grayscale JPEGs come back as three equal channels.

  Raises:
    DataError: a missing folder or file, or an unknown class.

  Examples:
    >>> read_tiny_imagenet(SPEC, "/data")  # doctest: +SKIP
  """
  del seed
  name = spec.name
  root = next((d for d in candidate_dirs(
      data_dir, "tiny-imagenet-200", os.path.join(name, "tiny-imagenet-200"))
               if os.path.isfile(os.path.join(d, "wnids.txt"))), None)
  if root is None:
    raise DataError(
        f"{name}: no tiny-imagenet-200/ (with wnids.txt, train/, val/) in "
        f"{data_dir}; download and unzip {spec.url}")
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
  test_files, test_y = _val_files(root, class_of)
  return make_dataset(name, _read_images(train_files), np.asarray(train_y),
                      _read_images(test_files), np.asarray(test_y),
                      len(wnids), root)


def _val_files(root: str,
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
      raise unreadable(path, e, "re-extract the dataset") from None
  if not images:
    raise DataError("no images found; re-extract the dataset")
  return stack(images, os.path.dirname(paths[0]))


SPEC = register(DatasetSpec(
    name="tiny_imagenet",
    reader=read_tiny_imagenet,
    num_classes=200,
    image_shape=(64, 64, 3),
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    files=("tiny-imagenet-200",),
    # Unzipped on download (the zip is then deleted): the reader needs the
    # folder.
    downloads=(RemoteFile(
        "tiny-imagenet-200.zip",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de", unpacks_to="tiny-imagenet-200"),),
    # Per-channel statistics of the training images scaled to [0, 1].
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2302, 0.2265, 0.2262),
    augment=True,
    presets={"split_tinyimagenet": ("split", 10)},
    order=40,
))
