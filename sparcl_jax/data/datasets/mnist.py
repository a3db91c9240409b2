"""MNIST (LeCun, Cortes and Burges): 28x28 grey handwritten digits, 10
classes, 60000 training and 10000 test images, as four IDX files.

Runs keep its inputs in [0, 1] (no normalisation, no augmentation), as the
Split/Permuted MNIST results of the docs (docs/results/) were obtained.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("mnist").presets
  {'split_mnist': ('split', 5), 'permuted_mnist': ('permuted', 10)}
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

# yann.lecun.com, the original home, often refuses downloads; PyTorch's copy
# holds the same files (the md5s published with torchvision).
BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

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
    downloads=tuple(RemoteFile(f"{f}.gz", f"{BASE}{f}.gz", GZ_MD5[f],
                               also=(f,)) for f in IDX_FILES),
    presets={"split_mnist": ("split", 5), "permuted_mnist": ("permuted", 10)},
    order=0,
))
