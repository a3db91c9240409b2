"""MNIST (LeCun, Cortes and Burges): 28x28 grey handwritten digits, 10
classes, 60000 training and 10000 test images, as four IDX files.

Runs keep its inputs in [0, 1] (no normalisation, no augmentation), as the
Split/Permuted MNIST results of the README were obtained.

Example:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("mnist").presets
  {'split_mnist': ('split', 5), 'permuted_mnist': ('permuted', 10)}
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

register(DatasetSpec(
    name="mnist",
    reader=read_idx_dataset,
    num_classes=10,
    image_shape=(28, 28, 1),
    url="http://yann.lecun.com/exdb/mnist/",
    files=IDX_FILES,
    # md5 of each file's uncompressed content (the .gz copies in circulation
    # are not all compressed alike); checked against a copy of the original
    # distribution.
    checksums={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    presets={"split_mnist": ("split", 5), "permuted_mnist": ("permuted", 10)},
    order=0,
))
