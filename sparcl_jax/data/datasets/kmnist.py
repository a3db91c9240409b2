"""Kuzushiji-MNIST (Clanuwat et al. 2018): 28x28 grey images of cursive
Japanese (Kuzushiji) hiragana, 10 classes, 60000 training and 10000 test
images, in MNIST's four IDX files.

Read like MNIST and, like it, kept in [0, 1] (no normalisation, no
augmentation). No checksums: the published sums are not known here for
certain, so none are declared.

Example:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("kmnist").presets
  {'split_kmnist': ('split', 5), 'permuted_kmnist': ('permuted', 10)}
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

register(DatasetSpec(
    name="kmnist",
    reader=read_idx_dataset,
    num_classes=10,
    image_shape=(28, 28, 1),
    url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    files=IDX_FILES,
    presets={"split_kmnist": ("split", 5),
             "permuted_kmnist": ("permuted", 10)},
    order=15,
))
