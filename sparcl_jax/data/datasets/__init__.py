"""Datasets, registered by name: one file per dataset declares everything.

Each module of this package registers one :class:`DatasetSpec`: its files
and where they come from, their checksums where known, the image shape and
class count, the input statistics runs normalise with, its scenario presets
(default task counts) and its reader. ``--dataset=NAME`` is looked up here;
the loading front door (:mod:`sparcl_jax.data.sources`), the scenario
presets and the command line's choices all read these entries.

Every module of this package is imported when the package is, so a new
dataset is one new file that calls :func:`register`.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> datasets.get("mnist").image_shape
  (28, 28, 1)
  >>> datasets.get("cifar10").presets["split_cifar10"]
  ('split', 5)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
from typing import Callable, Iterator, Mapping, Optional

from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the library knows about one dataset.

  Attributes:
    name: the ``--dataset`` name (also its tfds name, where tfds has it).
    reader: ``reader(spec, data_dir, seed) -> Dataset``; ``data_dir`` is the
      checked ``--data_dir`` (None for embedded datasets), ``seed`` seeds a
      split the files do not carry.
    num_classes: number of classes.
    image_shape: ``(H, W, C)`` of its images.
    url: where its files come from (named in error messages).
    files: the files the reader needs, as ``--data_dir`` holds them.
    checksums: ``{file: md5 of its uncompressed content}``, or None where
      no sum is known for certain. Uncompressed, so a re-gzipped copy of
      the same data still matches; the reader does not check them.
    downloads: the files :mod:`sparcl_jax.data.download` fetches when the
      data folder lacks them, each with its official URL and published md5
      (of the file as downloaded); empty when it cannot download them.
    mean, std: per-channel statistics runs normalise the [0, 1] inputs with;
      ``(0.0,), (1.0,)`` leaves them in [0, 1].
    augment: whether runs crop and flip its training images by default.
    presets: ``{scenario name: (kind, default number of tasks)}``; the first
      preset of a kind gives ``--num_tasks=0`` its value.
    embedded: needs no files (loaded whatever ``--data_source`` says).
    order: position in listings (then the name).

  Examples:
    >>> spec = DatasetSpec("toy", reader=lambda spec, d, seed: None,
    ...                    num_classes=2, image_shape=(4, 4, 1))
    >>> spec.mean, spec.std, spec.presets
    ((0.0,), (1.0,), {})
  """

  name: str
  reader: Callable[["DatasetSpec", Optional[str], int], Dataset]
  num_classes: int
  image_shape: tuple[int, int, int]
  url: str = ""
  files: tuple[str, ...] = ()
  checksums: Optional[Mapping[str, str]] = None
  downloads: tuple[RemoteFile, ...] = ()
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  augment: bool = False
  presets: Mapping[str, tuple[str, int]] = dataclasses.field(
      default_factory=dict)
  embedded: bool = False
  order: int = 100


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  """Registers a dataset under ``spec.name``.

  Args:
    spec: the entry; its name and its presets' names must be new.

  Returns:
    ``spec`` unchanged.

  Raises:
    ValueError: the name is empty or taken, or a preset name is taken.

  Examples:
    >>> toy = register(DatasetSpec("toy_example", lambda s, d, seed: None,
    ...                            2, (4, 4, 1)))
    >>> get("toy_example").num_classes
    2
    >>> _ = _REGISTRY.pop("toy_example")
  """
  if not spec.name or spec.name in _REGISTRY:
    raise ValueError(f"dataset name {spec.name!r} is empty or taken")
  taken = set(presets()) & set(spec.presets)
  if taken:
    raise ValueError(f"dataset {spec.name!r}: preset names {sorted(taken)} "
                     "are taken")
  _REGISTRY[spec.name] = spec
  return spec


@contextlib.contextmanager
def replaced(spec: DatasetSpec) -> Iterator[DatasetSpec]:
  """Stands ``spec`` in for the registered dataset of its name, for a while.

  For tests and experiments that need a registered dataset with other
  files, e.g. a local mirror's small files and their checksums
  (``dataclasses.replace(get("mnist"), downloads=...)``). The original
  entry is back when the ``with`` block ends, whatever happens in it.

  Args:
    spec: the stand-in; a dataset of its name must be registered.

  Yields:
    ``spec``.

  Raises:
    DataError: no dataset has that name.

  Examples:
    >>> small = dataclasses.replace(get("mnist"), num_classes=3)
    >>> with replaced(small):
    ...   get("mnist").num_classes
    3
    >>> get("mnist").num_classes
    10
  """
  original = get(spec.name)
  _REGISTRY[spec.name] = spec
  try:
    yield spec
  finally:
    _REGISTRY[spec.name] = original


def get(name: str) -> DatasetSpec:
  """Returns the registered dataset called ``name``.

  Args:
    name: a dataset name, as given to ``--dataset``.

  Returns:
    Its :class:`DatasetSpec`.

  Raises:
    DataError: no dataset has that name (the message lists them).

  Examples:
    >>> get("cifar100").num_classes
    100
  """
  if name not in _REGISTRY:
    raise DataError(f"unknown dataset {name!r}; valid names: "
                    f"{', '.join(names())}")
  return _REGISTRY[name]


def find(name: str) -> Optional[DatasetSpec]:
  """The registered dataset called ``name``, or None (e.g. a tfds name).

  Args:
    name: a dataset name.

  Returns:
    Its :class:`DatasetSpec`, or None.

  Examples:
    >>> find("svhn_cropped") is None
    True
  """
  return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
  """Names of the registered datasets, by ``order`` then name.

  Returns:
    The names.

  Examples:
    >>> names()[:2]
    ('mnist', 'fashion_mnist')
  """
  return tuple(s.name for s in sorted(_REGISTRY.values(),
                                      key=lambda s: (s.order, s.name)))


def presets() -> dict[str, tuple[str, str, int, int]]:
  """Every dataset's scenario presets, in dataset order.

  Returns:
    ``{scenario name: (kind, dataset, number of classes, default tasks)}``.

  Examples:
    >>> presets()["permuted_mnist"]
    ('permuted', 'mnist', 10, 10)
  """
  return {preset: (kind, spec.name, spec.num_classes, tasks)
          for spec in map(get, names())
          for preset, (kind, tasks) in spec.presets.items()}


for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
