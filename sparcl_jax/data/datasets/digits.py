"""scikit-learn's bundled 8x8 digits: 1797 images of 10 classes, no files
needed (the ``embedded`` source), split 80/20 by a seed.

Small enough for tests and quick looks: its presets are five-task scenarios.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("digits").embedded
  True
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.types import Dataset


def load_digits(seed: int = 0) -> Dataset:
  """Loads scikit-learn's bundled 8x8 digits with a seeded 80/20 split.

  Pixel values 0..16 are scaled to uint8 0..255. The split is stratified:
  20% (rounded) of each class goes to the test set, chosen by ``seed``.

  Args:
    seed: seed of the split; the same seed always gives the same split.

  Returns:
    A :class:`Dataset` of 1797 images, [N, 8, 8, 1] uint8, 10 classes.

  Examples:
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


def _read(spec: DatasetSpec, data_dir: Optional[str], seed: int) -> Dataset:
  del spec, data_dir  # embedded: no files
  return load_digits(seed)


register(DatasetSpec(
    name="digits",
    reader=_read,
    num_classes=10,
    image_shape=(8, 8, 1),
    url="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    presets={"split_digits": ("split", 5), "permuted_digits": ("permuted", 5)},
    embedded=True,
    order=50,
))
