"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images, 10 classes, as the
pickled python batches of ``cifar-10-python.tar.gz``.

Also the first task of Zenke et al.'s CIFAR-10/100 scenario
(``cifar10_100``, which adds CIFAR-100 tasks).

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("cifar10").augment
  True
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import cifar_reader

register(DatasetSpec(
    name="cifar10",
    reader=cifar_reader("cifar-10-batches-py",
                        tuple(f"data_batch_{i}" for i in range(1, 6)),
                        "test_batch", b"labels"),
    num_classes=10,
    image_shape=(32, 32, 3),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    files=("cifar-10-python.tar.gz",),
    # The reader takes the tarball itself (or its extracted folder).
    downloads=(RemoteFile(
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", also=("cifar-10-batches-py",)),),
    # Per-channel statistics of the training images scaled to [0, 1].
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2615),
    augment=True,
    presets={"split_cifar10": ("split", 5),
             "cifar10_100": ("cifar10_100", 6)},
    order=20,
))
