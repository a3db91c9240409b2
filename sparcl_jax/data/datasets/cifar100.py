"""CIFAR-100 (Krizhevsky 2009): 32x32 colour images, 100 fine classes, as
the pickled python batches of ``cifar-100-python.tar.gz``.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("cifar100").presets["split_cifar100_20"]
  ('split', 20)
"""

from sparcl_jax.data.datasets import DatasetSpec, register
from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.readers import cifar_reader

register(DatasetSpec(
    name="cifar100",
    reader=cifar_reader("cifar-100-python", ("train",), "test",
                        b"fine_labels"),
    num_classes=100,
    image_shape=(32, 32, 3),
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    files=("cifar-100-python.tar.gz",),
    downloads=(RemoteFile(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", also=("cifar-100-python",)),),
    # Per-channel statistics of the training images scaled to [0, 1].
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    augment=True,
    presets={"split_cifar100": ("split", 10),
             "split_cifar100_20": ("split", 20)},
    order=30,
))
