"""Continual-learning scenarios: split (class-incremental) and permuted tasks.

A scenario is one image pool plus a sequence of tasks that index into it (see
:mod:`sparcl_jax.data.types`). Everything random here is seeded with numpy and
derived from the one ``seed`` argument, so a scenario is a pure function of
its inputs: the same seed always gives bit-identical tasks.

Label contract of split scenarios: labels are remapped so that task ``t`` owns
a contiguous block of global ids (task 0 gets ``0..k-1``, task 1 gets
``k..2k-1``, ...). The global id of a class is its position in the (seeded,
optionally shuffled) class order.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np

from sparcl_jax.data import datasets
from sparcl_jax.data.types import Dataset, Scenario, Task
from sparcl_jax.errors import ConfigError, DataError

# The scenario presets the registered datasets declare: name: (kind,
# dataset, number of classes, default number of tasks). The first entry of a
# (kind, dataset) pair gives the default task count of ``train.py``'s
# --scenario/--dataset.
_PRESETS = datasets.presets()
SCENARIOS = tuple(_PRESETS)
# The usual number of tasks per (kind, dataset): the first preset's.
DEFAULT_NUM_TASKS: dict[tuple[str, str], int] = {}
for _kind, _dataset, _, _tasks in _PRESETS.values():
  DEFAULT_NUM_TASKS.setdefault((_kind, _dataset), _tasks)


def default_num_tasks(kind: str, dataset: str) -> int:
  """The usual number of tasks of a scenario kind on a dataset.

  Args:
    kind: ``'split'``, ``'permuted'`` or ``'cifar10_100'``.
    dataset: a dataset name (``'mnist'``, ``'cifar100'``...).

  Returns:
    The first matching preset's task count; 5 for pairs without a preset.

  Examples:
    >>> default_num_tasks("split", "cifar100"), default_num_tasks("permuted",
    ...                                                           "mnist")
    (10, 10)
  """
  return DEFAULT_NUM_TASKS.get((kind, dataset), 5)


def build_scenario(kind: str, dataset: Dataset, num_tasks: int,
                   seed: int = 0, val_fraction: float = 0.0,
                   shuffle_classes: bool = False,
                   cifar100: Optional[Dataset] = None,
                   name: Optional[str] = None) -> Scenario:
  """Cuts a loaded dataset into the tasks of a scenario kind.

  Args:
    kind: ``'split'`` (disjoint classes per task), ``'permuted'`` (pixel
      permutations) or ``'cifar10_100'`` (``dataset`` is CIFAR-10).
    dataset: the dataset.
    num_tasks: number of tasks; for ``'split'`` it must divide the classes.
    seed: seed of permutations, class shuffling and validation split.
    val_fraction: share of each task's training examples held out.
    shuffle_classes: shuffle the class order before splitting.
    cifar100: CIFAR-100, for ``'cifar10_100'``.
    name: the scenario's name (default: the builder's).

  Returns:
    The scenario.

  Raises:
    ConfigError: ``num_tasks`` is impossible for the kind and dataset.

  Examples:
    >>> from sparcl_jax.data import sources
    >>> digits = sources.load_dataset("digits", "digits", None)
    >>> build_scenario("split", digits, 5).num_tasks
    5
  """
  names = {} if name is None else {"name": name}
  _check_num_tasks(kind, num_tasks, dataset.num_classes, dataset.name)
  if kind == "split":
    return split_scenario(dataset, dataset.num_classes // num_tasks, seed,
                          shuffle_classes=shuffle_classes,
                          val_fraction=val_fraction, **names)
  if kind == "permuted":
    return permuted_scenario(dataset, num_tasks, seed,
                             val_fraction=val_fraction, **names)
  if kind == "cifar10_100":
    if cifar100 is None:
      raise ConfigError("the cifar10_100 scenario needs CIFAR-100 too")
    return cifar10_100_scenario(dataset, cifar100, val_fraction, seed,
                                num_tasks - 1, **names)
  raise ConfigError(f"unknown scenario kind {kind!r}; use split, permuted "
                    "or cifar10_100.")


# Distinct stream ids so that class order, validation split and permutations
# never share random numbers, whatever the seed.
_CLASS_ORDER_STREAM, _VAL_STREAM, _PERMUTATION_STREAM = 1, 2, 3

ClassesPerTask = Union[int, Sequence[int]]


def input_defaults(
    dataset_name: str) -> tuple[bool, tuple[float, ...], tuple[float, ...]]:
  """Returns the default (augment, mean, std) of a dataset's inputs.

  What the dataset's registered entry declares (CIFAR-10, CIFAR-100 and
  Tiny-ImageNet: crop+flip augmentation and their usual per-channel
  statistics; MNIST and digits: [0, 1] without augmentation); datasets not
  registered (other tfds names) are left in [0, 1] without augmentation.

  Args:
    dataset_name: canonical dataset name, e.g. ``"cifar10"``.

  Returns:
    ``(augment, mean, std)``.

  Examples:
    >>> input_defaults("mnist")
    (False, (0.0,), (1.0,))
  """
  spec = datasets.find(dataset_name)
  if spec is None:
    return False, (0.0,), (1.0,)
  return spec.augment, spec.mean, spec.std


def split_scenario(dataset: Dataset,
                   classes_per_task: ClassesPerTask,
                   seed: int = 0,
                   shuffle_classes: bool = False,
                   val_fraction: float = 0.0,
                   *,
                   name: Optional[str] = None,
                   augment: Optional[bool] = None,
                   mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> Scenario:
  """Splits a dataset into tasks of disjoint classes (class-incremental).

  Labels are remapped so task ``t`` owns contiguous global ids (see the module
  docstring). ``num_outputs`` is the number of classes used by all tasks;
  examples of classes beyond the tasks stay in the pool but in no task.

  Args:
    dataset: the dataset to split.
    classes_per_task: one int (every task; must divide the class count) or a
      list of per-task class counts whose sum is at most the class count.
    seed: seed of the class shuffle and of the validation split.
    shuffle_classes: shuffle the class order (seeded) before splitting;
      otherwise class ``c`` keeps id ``c``.
    val_fraction: share of each task's training examples held out as
      ``Task.val_indices``, in [0, 1).
    name: scenario name; defaults to ``"split_" + dataset.name``.
    augment, mean, std: input settings; None takes :func:`input_defaults`.

  Returns:
    The :class:`Scenario`.

  Raises:
    ConfigError: impossible ``classes_per_task``, ``val_fraction`` or seed.

  Examples:
    >>> from sparcl_jax.data.datasets.digits import load_digits
    >>> s = split_scenario(load_digits(0), 2)
    >>> [t.classes.tolist() for t in s.tasks][:2]
    [[0, 1], [2, 3]]
  """
  _check_common(seed, val_fraction)
  sizes = _task_sizes(classes_per_task, dataset.num_classes)
  if shuffle_classes:
    order = np.random.default_rng((seed, _CLASS_ORDER_STREAM)).permutation(
        dataset.num_classes)
  else:
    order = np.arange(dataset.num_classes)
  new_id = np.empty(dataset.num_classes, dtype=np.int32)
  new_id[order] = np.arange(dataset.num_classes, dtype=np.int32)
  train_labels = new_id[dataset.train_labels]
  test_labels = new_id[dataset.test_labels]
  tasks = _class_block_tasks(train_labels, test_labels, sizes, seed,
                             val_fraction)
  return _scenario(name or f"split_{dataset.name}", dataset.name,
                   dataset.train_images, train_labels, dataset.test_images,
                   test_labels, tasks, sum(sizes), augment, mean, std)


def permuted_scenario(dataset: Dataset,
                      num_tasks: int,
                      seed: int = 0,
                      disjoint_labels: bool = True,
                      val_fraction: float = 0.0,
                      first_task_identity: bool = False,
                      *,
                      name: Optional[str] = None,
                      augment: bool = False,
                      mean: Sequence[float] = (0.0,),
                      std: Sequence[float] = (1.0,)) -> Scenario:
  """Makes tasks that each see the whole dataset under a fixed pixel shuffle.

  Task ``t``'s permutation is drawn from ``(seed, t)`` over the flattened
  H*W*C values: input value ``j`` of a permuted image is value ``perm[j]`` of
  the original. All tasks share one validation split (the same examples are
  held out in every task), since they share the images.

  Args:
    dataset: the dataset to permute.
    num_tasks: number of tasks, >= 1.
    seed: seed of the permutations and of the validation split.
    disjoint_labels: task ``t`` gets ids ``t*C .. t*C+C-1`` (``label_offset``
      ``t*C``, ``num_outputs`` ``T*C``); otherwise all tasks share ``0..C-1``.
    val_fraction: share of the training examples held out, in [0, 1).
    first_task_identity: task 0 sees unpermuted images (permutation None).
    name: scenario name; defaults to ``"permuted_" + dataset.name``.
    augment, mean, std: input settings. Crops, flips and per-channel
      statistics lose their meaning once pixels are shuffled, hence the
      defaults.

  Returns:
    The :class:`Scenario`.

  Raises:
    ConfigError: ``num_tasks`` < 1, or bad ``val_fraction`` or seed.

  Examples:
    >>> from sparcl_jax.data.datasets.digits import load_digits
    >>> s = permuted_scenario(load_digits(0), 3)
    >>> s.num_outputs, s.tasks[2].label_offset
    (30, 20)
  """
  _check_common(seed, val_fraction)
  if num_tasks < 1:
    raise ConfigError(f"num_tasks must be >= 1, got {num_tasks}")
  c = dataset.num_classes
  size = int(np.prod(dataset.image_shape))
  train_idx, val_idx = _split_val(
      np.arange(len(dataset.train_labels), dtype=np.int32), val_fraction,
      np.random.default_rng((seed, _VAL_STREAM)))
  test_idx = np.arange(len(dataset.test_labels), dtype=np.int32)
  tasks = []
  for t in range(num_tasks):
    perm = None
    if not (first_task_identity and t == 0):
      perm = np.random.default_rng((seed, _PERMUTATION_STREAM, t)).permutation(
          size).astype(np.int32)
    offset = t * c if disjoint_labels else 0
    tasks.append(Task(classes=np.arange(offset, offset + c, dtype=np.int32),
                      train_indices=train_idx, val_indices=val_idx,
                      test_indices=test_idx, label_offset=offset,
                      permutation=perm))
  return Scenario(name or f"permuted_{dataset.name}", dataset.train_images,
                  dataset.train_labels, dataset.test_images,
                  dataset.test_labels, tuple(tasks),
                  c * num_tasks if disjoint_labels else c, bool(augment),
                  tuple(float(m) for m in mean), tuple(float(s) for s in std))


def cifar10_100_scenario(cifar10: Dataset,
                         cifar100: Dataset,
                         val_fraction: float = 0.0,
                         seed: int = 0,
                         num_cifar100_tasks: int = 5,
                         *,
                         name: str = "cifar10_100") -> Scenario:
  """Builds the Zenke et al. (2017) CIFAR-10 / CIFAR-100 task sequence.

  Task 0 is all of CIFAR-10 (ids 0..9); task ``i >= 1`` is CIFAR-100 classes
  ``10(i-1) .. 10i-1`` (ids ``10i .. 10i+9``). The pool holds CIFAR-10 and
  only the CIFAR-100 examples of the used classes. Inputs get crop+flip and
  CIFAR-10's statistics (the larger share of the pool).

  Args:
    cifar10: CIFAR-10 (10 classes, 32x32x3).
    cifar100: CIFAR-100 (100 classes, 32x32x3).
    val_fraction: share of each task's training examples held out.
    seed: seed of the validation split.
    num_cifar100_tasks: number of 10-class CIFAR-100 tasks, 1..10 (the
      protocol uses 5).
    name: scenario name.

  Returns:
    The :class:`Scenario` with ``1 + num_cifar100_tasks`` tasks.

  Raises:
    DataError: the datasets are not CIFAR-10/100 shaped.
    ConfigError: bad ``num_cifar100_tasks``, ``val_fraction`` or seed.

  Examples:
    >>> def fake(name, k):  # two blank 32x32x3 images per class
    ...   x, y = np.zeros((2 * k, 32, 32, 3), np.uint8), np.arange(2 * k) % k
    ...   return Dataset(name, x, y, x, y, k)
    >>> s = cifar10_100_scenario(fake("cifar10", 10), fake("cifar100", 100))
    >>> s.num_tasks, s.num_outputs, s.tasks[1].classes.tolist()[:3]
    (6, 60, [10, 11, 12])
  """
  _check_common(seed, val_fraction)
  if not 1 <= num_cifar100_tasks <= 10:
    raise ConfigError("cifar10_100 needs 1..10 CIFAR-100 tasks (2..11 tasks "
                      f"in all), got {num_cifar100_tasks}")
  for ds, classes in ((cifar10, 10), (cifar100, 100)):
    if ds.num_classes != classes or ds.image_shape != (32, 32, 3):
      raise DataError(f"cifar10_100 needs {classes}-class 32x32x3 images, got "
                      f"{ds.name!r} with {ds.num_classes} classes of shape "
                      f"{ds.image_shape}")
  used = 10 * num_cifar100_tasks
  keep_train = cifar100.train_labels < used
  keep_test = cifar100.test_labels < used
  train_images = np.concatenate(
      [cifar10.train_images, cifar100.train_images[keep_train]])
  test_images = np.concatenate(
      [cifar10.test_images, cifar100.test_images[keep_test]])
  train_labels = np.concatenate(
      [cifar10.train_labels, cifar100.train_labels[keep_train] + 10]).astype(
          np.int32)
  test_labels = np.concatenate(
      [cifar10.test_labels, cifar100.test_labels[keep_test] + 10]).astype(
          np.int32)
  sizes = [10] * (1 + num_cifar100_tasks)
  tasks = _class_block_tasks(train_labels, test_labels, sizes, seed,
                             val_fraction)
  return _scenario(name, "cifar10", train_images, train_labels, test_images,
                   test_labels, tasks, sum(sizes), None, None, None)


def _check_num_tasks(kind: str, num_tasks: int, num_classes: int,
                     what: str) -> None:
  if kind == "split" and (num_tasks < 1 or num_classes % num_tasks):
    raise ConfigError(f"{what}: num_tasks={num_tasks} must divide the "
                      f"{num_classes} classes; pick a divisor.")
  if kind == "permuted" and num_tasks < 1:
    raise ConfigError(f"{what}: num_tasks must be >= 1, got {num_tasks}")
  if kind == "cifar10_100" and not 2 <= num_tasks <= 11:
    raise ConfigError(f"{what}: num_tasks must be in 2..11, got {num_tasks}")


def _check_common(seed: int, val_fraction: float) -> None:
  if seed < 0:
    raise ConfigError(f"seed must be >= 0, got {seed}")
  if not 0.0 <= val_fraction < 1.0:
    raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _task_sizes(classes_per_task: ClassesPerTask,
                num_classes: int) -> list[int]:
  if isinstance(classes_per_task, (int, np.integer)):
    k = int(classes_per_task)
    if k < 1 or num_classes % k:
      raise ConfigError(f"classes_per_task={k} must divide the {num_classes} "
                        "classes")
    return [k] * (num_classes // k)
  sizes = [int(k) for k in classes_per_task]
  if not sizes or min(sizes) < 1 or sum(sizes) > num_classes:
    raise ConfigError(f"classes_per_task={sizes} must be positive counts "
                      f"summing to at most {num_classes} classes")
  return sizes


def _split_val(indices: np.ndarray, val_fraction: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Moves a seeded ``val_fraction`` of ``indices`` to a validation set."""
  num_val = int(round(val_fraction * len(indices)))
  held = np.zeros(len(indices), dtype=bool)
  held[rng.permutation(len(indices))[:num_val]] = True
  return (indices[~held].astype(np.int32), indices[held].astype(np.int32))


def _class_block_tasks(train_labels: np.ndarray, test_labels: np.ndarray,
                       sizes: Sequence[int], seed: int,
                       val_fraction: float) -> tuple[Task, ...]:
  """Makes one task per contiguous block of (already remapped) label ids."""
  bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
  tasks = []
  for t, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
    in_train = np.flatnonzero((train_labels >= lo) & (train_labels < hi))
    train_idx, val_idx = _split_val(
        in_train, val_fraction, np.random.default_rng((seed, _VAL_STREAM, t)))
    test_idx = np.flatnonzero((test_labels >= lo) & (test_labels < hi))
    tasks.append(Task(classes=np.arange(lo, hi, dtype=np.int32),
                      train_indices=train_idx, val_indices=val_idx,
                      test_indices=test_idx.astype(np.int32)))
  return tuple(tasks)


def _scenario(name: str, dataset_name: str, train_images: np.ndarray,
              train_labels: np.ndarray, test_images: np.ndarray,
              test_labels: np.ndarray, tasks: Sequence[Task], num_outputs: int,
              augment: Optional[bool], mean: Optional[Sequence[float]],
              std: Optional[Sequence[float]]) -> Scenario:
  default_augment, default_mean, default_std = input_defaults(dataset_name)
  scenario = Scenario(name, train_images, train_labels.astype(np.int32),
                      test_images, test_labels.astype(np.int32), tuple(tasks),
                      int(num_outputs), default_augment, default_mean,
                      default_std)
  overrides = {}
  if augment is not None:
    overrides["augment"] = bool(augment)
  if mean is not None:
    overrides["mean"] = tuple(float(m) for m in mean)
  if std is not None:
    overrides["std"] = tuple(float(s) for s in std)
  return dataclasses.replace(scenario, **overrides)
