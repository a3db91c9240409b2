"""Containers for datasets and continual-learning scenarios.

Images are kept as uint8 NHWC host arrays until a run moves them to the device
once; every batch is then gathered by index inside jit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An image-classification dataset held in memory.

  Attributes:
    name: canonical dataset name, e.g. ``"mnist"``.
    train_images: uint8 array [N, H, W, C].
    train_labels: int32 array [N], values in [0, num_classes).
    test_images: uint8 array [M, H, W, C].
    test_labels: int32 array [M].
    num_classes: number of classes.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of a scenario: which examples, which classes, which permutation.

  Attributes:
    classes: global class ids (after ``label_offset``) that this task owns;
      Task-IL evaluation takes the argmax over these logits only.
    train_indices: int32 indices into ``Scenario.train_images`` used to train.
    val_indices: int32 indices into ``Scenario.train_images`` held out for
      validation (empty unless a validation split was requested).
    test_indices: int32 indices into ``Scenario.test_images``.
    label_offset: added to the stored label of every example of this task (a
      permuted scenario with a disjoint label space uses ``t * num_classes``).
    permutation: int32 array over the flattened H*W*C pixels applied to every
      input of this task, or None.
  """

  classes: np.ndarray
  train_indices: np.ndarray
  val_indices: np.ndarray
  test_indices: np.ndarray
  label_offset: int = 0
  permutation: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Scenario:
  """A sequence of tasks over one pool of images.

  Attributes:
    name: e.g. ``"split_mnist"``.
    train_images, train_labels, test_images, test_labels: the image pool
      (uint8 NHWC, int32 labels before any task's ``label_offset``).
    tasks: the tasks, in training order.
    num_outputs: width of the network's output layer (all classes of all
      tasks).
    augment: whether training inputs get random crop (pad 4) and flip.
    mean, std: per-channel normalisation applied after scaling to [0, 1].
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  tasks: Sequence[Task]
  num_outputs: int
  augment: bool = False
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])
