"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 28x28 grey images of
clothing, 10 classes, in MNIST's four IDX files.

No checksums: none known for certain for the uncompressed files.

Example:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("fashion_mnist").files[0]
  'train-images-idx3-ubyte'
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

register(DatasetSpec(
    name="fashion_mnist",
    reader=read_idx_dataset,
    num_classes=10,
    image_shape=(28, 28, 1),
    url="https://github.com/zalandoresearch/fashion-mnist",
    files=IDX_FILES,
    presets={"split_fashion_mnist": ("split", 5),
             "permuted_fashion_mnist": ("permuted", 10)},
    order=10,
))
