"""Tests for sparcl_jax.data.scenarios."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from sparcl_jax.data import datasets, scenarios
from sparcl_jax.data import sources
from sparcl_jax.data.types import Dataset
from sparcl_jax.errors import ConfigError, DataError


def _dataset(num_classes=6, per_class=4, test_per_class=2, shape=(2, 2, 1),
             name="toy"):
  """Labels cycle 0..C-1; pixel values encode the example index."""
  n, m = num_classes * per_class, num_classes * test_per_class
  size = int(np.prod(shape))
  train = (np.arange(n * size) % 251).astype(np.uint8).reshape(n, *shape)
  test = (np.arange(m * size) % 241).astype(np.uint8).reshape(m, *shape)
  return Dataset(name, train, np.arange(n, dtype=np.int32) % num_classes,
                 test, np.arange(m, dtype=np.int32) % num_classes, num_classes)


def _check_partition(scenario, dataset):
  """Tasks own disjoint classes, cover them, index exactly their examples."""
  seen = []
  for t in scenario.tasks:
    assert set(scenario.train_labels[t.train_indices]) == set(t.classes)
    assert set(scenario.test_labels[t.test_indices]) == set(t.classes)
    seen += list(t.classes)
  assert sorted(seen) == list(range(scenario.num_outputs))
  all_train = np.sort(np.concatenate([t.train_indices for t in scenario.tasks]))
  np.testing.assert_array_equal(all_train,
                                np.arange(len(dataset.train_labels)))


# ---------------------------------------------------------------------------
# split


def test_split_without_shuffle_keeps_class_ids():
  ds = _dataset()
  s = scenarios.split_scenario(ds, 2, seed=0)
  assert s.num_tasks == 3 and s.num_outputs == 6
  assert [t.classes.tolist() for t in s.tasks] == [[0, 1], [2, 3], [4, 5]]
  # Labels cycle 0..5, so class {2, 3} examples are i % 6 in {2, 3}.
  np.testing.assert_array_equal(s.tasks[1].train_indices,
                                [2, 3, 8, 9, 14, 15, 20, 21])
  np.testing.assert_array_equal(s.tasks[2].test_indices, [4, 5, 10, 11])
  np.testing.assert_array_equal(s.train_labels, ds.train_labels)
  assert s.tasks[0].val_indices.size == 0
  assert all(t.label_offset == 0 and t.permutation is None for t in s.tasks)
  assert s.train_images is ds.train_images
  assert s.tasks[0].train_indices.dtype == np.int32
  _check_partition(s, ds)


def test_split_shuffled_labels_remapped_contiguously_and_seeded():
  ds = _dataset()
  a = scenarios.split_scenario(ds, 2, seed=3, shuffle_classes=True)
  b = scenarios.split_scenario(ds, 2, seed=3, shuffle_classes=True)
  c = scenarios.split_scenario(ds, 2, seed=4, shuffle_classes=True)
  _check_partition(a, ds)
  # One original class maps to one new id: a bijection of 0..5.
  mapping = {}
  for orig, new in zip(ds.train_labels, a.train_labels):
    assert mapping.setdefault(int(orig), int(new)) == int(new)
  assert sorted(mapping.values()) == list(range(6))
  for orig, new in zip(ds.test_labels, a.test_labels):
    assert mapping[int(orig)] == int(new)
  assert mapping != {k: k for k in range(6)}
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  assert not np.array_equal(a.train_labels, c.train_labels)
  # Task 0 owns ids 0 and 1 whatever the shuffle.
  np.testing.assert_array_equal(a.tasks[0].classes, [0, 1])
  assert set(a.train_labels[a.tasks[0].train_indices]) == {0, 1}


def test_split_uneven_list_of_classes():
  ds = _dataset()
  s = scenarios.split_scenario(ds, [3, 2], seed=0)
  assert [t.classes.tolist() for t in s.tasks] == [[0, 1, 2], [3, 4]]
  assert s.num_outputs == 5
  assert len(s.tasks[0].train_indices) == 12
  # Class 5 is in no task.
  covered = np.concatenate([t.train_indices for t in s.tasks])
  assert not np.isin(np.flatnonzero(ds.train_labels == 5), covered).any()


def test_split_val_fraction_disjoint_and_seeded():
  ds = _dataset(per_class=10)
  a = scenarios.split_scenario(ds, 3, seed=0, val_fraction=0.25)
  b = scenarios.split_scenario(ds, 3, seed=0, val_fraction=0.25)
  c = scenarios.split_scenario(ds, 3, seed=1, val_fraction=0.25)
  for t_a, t_b in zip(a.tasks, b.tasks):
    assert len(t_a.val_indices) == 8  # round(0.25 * 30)
    assert len(t_a.train_indices) == 22
    assert not np.intersect1d(t_a.train_indices, t_a.val_indices).size
    union = np.sort(np.concatenate([t_a.train_indices, t_a.val_indices]))
    np.testing.assert_array_equal(
        union, np.flatnonzero(np.isin(a.train_labels, t_a.classes)))
    np.testing.assert_array_equal(t_a.val_indices, t_b.val_indices)
  assert not np.array_equal(a.tasks[0].val_indices, c.tasks[0].val_indices)
  # Each task draws its own held-out positions within its examples.
  positions = []
  for t in a.tasks:
    members = np.flatnonzero(np.isin(a.train_labels, t.classes))
    positions.append(np.searchsorted(members, t.val_indices))
  assert not np.array_equal(positions[0], positions[1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(classes_per_task=4), "must divide the 6 classes"),
    (dict(classes_per_task=[4, 3]), "summing to at most 6"),
    (dict(classes_per_task=2, val_fraction=1.0), r"val_fraction must be in"),
    (dict(classes_per_task=2, seed=-1), "seed must be >= 0"),
])
def test_split_config_errors(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    scenarios.split_scenario(_dataset(), **kwargs)


# ---------------------------------------------------------------------------
# permuted


def test_permuted_tasks_are_seeded_true_permutations():
  ds = _dataset(shape=(3, 3, 2))
  a = scenarios.permuted_scenario(ds, 4, seed=0)
  b = scenarios.permuted_scenario(ds, 4, seed=0)
  c = scenarios.permuted_scenario(ds, 4, seed=1)
  assert a.num_outputs == 24 and not a.augment
  perms = [t.permutation for t in a.tasks]
  for p in perms:
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(18))
  assert len({p.tobytes() for p in perms}) == 4
  for t_a, t_b, t_c in zip(a.tasks, b.tasks, c.tasks):
    np.testing.assert_array_equal(t_a.permutation, t_b.permutation)
    assert not np.array_equal(t_a.permutation, t_c.permutation)
  for t, task in enumerate(a.tasks):
    assert task.label_offset == 6 * t
    np.testing.assert_array_equal(task.classes, np.arange(6 * t, 6 * t + 6))
    np.testing.assert_array_equal(task.train_indices, np.arange(24))
    np.testing.assert_array_equal(task.test_indices, np.arange(12))
  np.testing.assert_array_equal(a.train_labels, ds.train_labels)


def test_permuted_shared_labels_identity_first_and_shared_val():
  ds = _dataset(per_class=5)
  s = scenarios.permuted_scenario(ds, 3, seed=2, disjoint_labels=False,
                                  val_fraction=0.2, first_task_identity=True)
  assert s.num_outputs == 6
  assert s.tasks[0].permutation is None
  assert s.tasks[1].permutation is not None
  for task in s.tasks:
    assert task.label_offset == 0
    np.testing.assert_array_equal(task.classes, np.arange(6))
    assert len(task.val_indices) == 6 and len(task.train_indices) == 24
    np.testing.assert_array_equal(task.val_indices, s.tasks[0].val_indices)
    assert not np.intersect1d(task.train_indices, task.val_indices).size
  # Identity for task 0 does not shift the other tasks' permutations.
  plain = scenarios.permuted_scenario(ds, 3, seed=2)
  np.testing.assert_array_equal(s.tasks[2].permutation,
                                plain.tasks[2].permutation)


def test_permuted_needs_a_task():
  with pytest.raises(ConfigError, match="num_tasks must be >= 1"):
    scenarios.permuted_scenario(_dataset(), 0)


# ---------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def _cifar_like(num_classes, per_class, name):
  return _dataset(num_classes, per_class, 1, (32, 32, 3), name)


def test_cifar10_100_sequence():
  c10 = _cifar_like(10, 2, "cifar10")
  c100 = _cifar_like(100, 1, "cifar100")
  s = scenarios.cifar10_100_scenario(c10, c100, val_fraction=0.0, seed=0)
  assert s.num_tasks == 6 and s.num_outputs == 60
  assert s.augment and s.mean == (0.4914, 0.4822, 0.4465)
  # 20 CIFAR-10 images, then the 50 CIFAR-100 images of classes 0..49.
  assert s.train_images.shape == (70, 32, 32, 3)
  np.testing.assert_array_equal(s.train_images[20:], c100.train_images[:50])
  np.testing.assert_array_equal(s.train_labels[20:], np.arange(10, 60))
  np.testing.assert_array_equal(s.tasks[0].classes, np.arange(10))
  np.testing.assert_array_equal(s.tasks[0].train_indices, np.arange(20))
  np.testing.assert_array_equal(s.tasks[3].classes, np.arange(30, 40))
  # CIFAR-100 classes 20..29 are pool rows 20 + 20..29.
  np.testing.assert_array_equal(s.tasks[3].train_indices, np.arange(40, 50))
  np.testing.assert_array_equal(s.tasks[5].test_indices, np.arange(50, 60))


def test_cifar10_100_rejects_other_data():
  c10 = _cifar_like(10, 1, "cifar10")
  with pytest.raises(DataError, match="100-class 32x32x3"):
    scenarios.cifar10_100_scenario(c10, _dataset(), 0.0, 0)
  with pytest.raises(ConfigError, match="1..10 CIFAR-100 tasks"):
    scenarios.cifar10_100_scenario(c10, _cifar_like(100, 1, "c"), 0.0, 0,
                                   num_cifar100_tasks=11)


# ---------------------------------------------------------------------------
# presets


def _build(kind, dataset, num_tasks=None, **kwargs):
  """A scenario as train.py builds one (``run_state.build_scenario``): the
  dataset cut with the preset task count of its kind unless given."""
  if num_tasks is None:
    num_tasks = scenarios.default_num_tasks(kind, dataset.name)
  return scenarios.build_scenario(kind, dataset, num_tasks, **kwargs)


def test_build_split_and_permuted_digits():
  digits = sources.load_dataset("digits", "digits", None, seed=0)
  s = _build("split", digits, seed=0)
  assert s.name == "split_digits" and s.num_tasks == 5
  assert s.num_outputs == 10 and not s.augment
  assert s.mean == (0.0,) and s.std == (1.0,)
  assert s.image_shape == (8, 8, 1)
  two = _build("split", digits, 2, seed=0)
  assert [len(t.classes) for t in two.tasks] == [5, 5]
  p = _build("permuted", digits, seed=0, val_fraction=0.1)
  assert p.num_tasks == 5 and p.num_outputs == 50
  assert len(p.tasks[0].val_indices) == round(0.1 * len(p.train_labels))


def test_build_split_mnist_from_idx_files(tmp_path):
  labels = np.arange(30, dtype=np.uint8) % 10
  images = np.zeros((30, 28, 28), np.uint8)
  for base, array in (("train-images-idx3-ubyte", images),
                      ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", images[:10]),
                      ("t10k-labels-idx1-ubyte", labels[:10])):
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(os.path.join(tmp_path, base + ".gz"), "wb") as f:
      f.write(header + array.tobytes())
  mnist = sources.load_dataset("mnist", "files", str(tmp_path), seed=0)
  s = _build("split", mnist, seed=0)
  assert s.num_tasks == 5 and s.num_outputs == 10
  np.testing.assert_array_equal(s.tasks[4].train_indices,
                                [8, 9, 18, 19, 28, 29])
  np.testing.assert_array_equal(s.tasks[4].test_indices, [8, 9])


def test_build_cifar_scenarios_through_tfds_mock(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    cifar10 = sources.load_dataset("cifar10", "tfds", str(tmp_path))
    cifar100 = sources.load_dataset("cifar100", "tfds", str(tmp_path))
  s = _build("split", cifar10)
  z = _build("cifar10_100", cifar10, cifar100=cifar100)
  assert s.augment and s.std == (0.2470, 0.2435, 0.2615)
  assert s.num_tasks == 5 and s.image_shape == (32, 32, 3)
  assert z.num_tasks == 6 and z.num_outputs == 60
  assert z.train_labels.max() < 60
  np.testing.assert_array_equal(z.tasks[0].train_indices, np.arange(4))


@pytest.mark.parametrize("kind,num_classes,num_tasks,match", [
    ("split", 10, 3, "must divide the 10 classes"),
    ("split", 100, 7, "must divide the 100 classes"),
    ("split", 200, 3, "must divide the 200 classes"),
    ("cifar10_100", 10, 12, "must be in 2..11"),
    ("permuted", 10, 0, "must be >= 1"),
])
def test_build_scenario_checks_num_tasks(kind, num_classes, num_tasks, match):
  dataset = _dataset(num_classes=num_classes, per_class=1, test_per_class=1)
  with pytest.raises(ConfigError, match=match):
    scenarios.build_scenario(kind, dataset, num_tasks,
                             cifar100=_cifar_like(100, 1, "cifar100"))


def test_build_scenario_unknown_kind_lists_valid_kinds():
  with pytest.raises(ConfigError, match="use split, permuted or cifar10_100"):
    scenarios.build_scenario("rotated", _dataset(), 2)


def test_default_num_tasks_come_from_the_preset_table():
  # The table is the registered datasets' presets: these eleven are built
  # in, and a dataset added as one file adds its own.
  assert scenarios.SCENARIOS == tuple(datasets.presets())
  assert {"split_mnist", "permuted_mnist", "split_fashion_mnist",
          "permuted_fashion_mnist", "split_cifar10", "cifar10_100",
          "split_cifar100", "split_cifar100_20", "split_tinyimagenet",
          "split_digits", "permuted_digits"} <= set(scenarios.SCENARIOS)
  # train.py's default task counts: the first preset of a (kind, dataset).
  assert scenarios.default_num_tasks("permuted", "fashion_mnist") == 10
  assert scenarios.default_num_tasks("split", "cifar100") == 10
  assert scenarios.default_num_tasks("cifar10_100", "cifar10") == 6
  # Pairs without a preset get 5.
  assert scenarios.default_num_tasks("split", "svhn_cropped") == 5


def test_missing_cifar100_files_are_a_data_error_naming_the_archive(tmp_path):
  with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
    sources.load_dataset("cifar100", "files", str(tmp_path))


def test_input_defaults():
  assert scenarios.input_defaults("tiny_imagenet") == (
      True, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
  assert scenarios.input_defaults("svhn_cropped") == (False, (0.0,), (1.0,))
