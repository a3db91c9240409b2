"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 28x28 grey images of
clothing, 10 classes, in MNIST's four IDX files.

No checksums of the uncompressed files (none known for certain); the
downloaded ``.gz`` files are checked against their published md5.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("fashion_mnist").files[0]
  'train-images-idx3-ubyte'
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the gzipped files, as torchvision lists them.
GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}

register(DatasetSpec(
    name="fashion_mnist",
    reader=read_idx_dataset,
    num_classes=10,
    image_shape=(28, 28, 1),
    url="https://github.com/zalandoresearch/fashion-mnist",
    files=IDX_FILES,
    downloads=tuple(RemoteFile(f"{f}.gz", f"{BASE}{f}.gz", GZ_MD5[f],
                               also=(f,)) for f in IDX_FILES),
    presets={"split_fashion_mnist": ("split", 5),
             "permuted_fashion_mnist": ("permuted", 10)},
    order=10,
))
