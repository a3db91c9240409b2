"""Kuzushiji-MNIST (Clanuwat et al. 2018): 28x28 grey images of cursive
Japanese (Kuzushiji) hiragana, 10 classes, 60000 training and 10000 test
images, in MNIST's four IDX files.

Read like MNIST and, like it, kept in [0, 1] (no normalisation, no
augmentation). No checksums of the uncompressed files; the downloaded
``.gz`` files are checked against the md5s torchvision lists.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("kmnist").presets
  {'split_kmnist': ('split', 5), 'permuted_kmnist': ('permuted', 10)}
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import IDX_FILES, read_idx_dataset

BASE = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
# md5 of the gzipped files, as torchvision lists them.
GZ_MD5 = {
    "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134",
}

register(DatasetSpec(
    name="kmnist",
    reader=read_idx_dataset,
    num_classes=10,
    image_shape=(28, 28, 1),
    url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    files=IDX_FILES,
    downloads=tuple(RemoteFile(f"{f}.gz", f"{BASE}{f}.gz", GZ_MD5[f],
                               also=(f,)) for f in IDX_FILES),
    presets={"split_kmnist": ("split", 5),
             "permuted_kmnist": ("permuted", 10)},
    order=15,
))
