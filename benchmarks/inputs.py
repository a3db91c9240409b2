"""The benchmark's data and configurations.

Step times depend on the shapes of the data, not on its values, so most
sections run on random uint8 images of a real dataset's shape; whole runs
that must learn use scikit-learn's digits (or MNIST files when given).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sparcl_jax import methods
from sparcl_jax.data import scenarios
from sparcl_jax.data.types import Dataset, Scenario
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig


def random_scenario(image_shape: Sequence[int], train_per_task: int,
                    test_per_task: int = 64, num_tasks: int = 5,
                    augment: bool = False, seed: int = 0) -> Scenario:
  """A split scenario over random uint8 images of a real shape.

  Args:
    image_shape: (H, W, C).
    train_per_task: training examples per task (two classes per task).
    test_per_task: test examples per task.
    num_tasks: tasks; 10 classes are split evenly (must divide 10).
    augment: random crop and flip of training inputs.
    seed: numpy seed of the pixels.

  Returns:
    The scenario.

  Example:
    >>> random_scenario((8, 8, 1), 40).num_tasks
    5
  """
  rng = np.random.default_rng(seed)
  classes = 10
  per_class_train = -(-train_per_task * num_tasks // classes)
  per_class_test = -(-test_per_task * num_tasks // classes)
  shape = tuple(image_shape)
  train_y = np.repeat(np.arange(classes), per_class_train).astype(np.int32)
  test_y = np.repeat(np.arange(classes), per_class_test).astype(np.int32)
  dataset = Dataset(
      "random", rng.integers(0, 256, (len(train_y),) + shape, np.uint8),
      train_y, rng.integers(0, 256, (len(test_y),) + shape, np.uint8),
      test_y, classes)
  return scenarios.split_scenario(dataset, classes // num_tasks,
                                  augment=augment)


def digits_scenario(num_tasks: int) -> Scenario:
  """Split digits (scikit-learn's 8x8 digits) cut into ``num_tasks`` tasks.

  Args:
    num_tasks: 2 or 5 (must divide 10).

  Returns:
    The scenario.

  Example:
    >>> digits_scenario(2).num_tasks
    2
  """
  from sparcl_jax.data import sources  # pylint: disable=import-outside-toplevel
  digits = sources.load_dataset("digits", "embedded", None)
  return scenarios.split_scenario(digits, 10 // num_tasks)


def make_config(method: str, model: str = "mlp", **changes) -> RunConfig:
  """A validated config with the benchmark's defaults.

  SparCL settings follow ``split_mnist_sparcl_derpp.cfg`` (sparsity 0.75,
  masks updated every epoch, DGM at 0.8 refreshed every 30 steps, DDR on).

  Args:
    method: ``RunConfig.method``.
    model: ``RunConfig.model``.
    **changes: other fields.

  Returns:
    The config.

  Example:
    >>> make_config('derpp').batch_size
    32
  """
  base = dict(workdir="/tmp/sparcl_benchmark", dataset="mnist",
              data_source="files", data_dir="/unused",
              method=method, model=model, hidden_sizes="2000,2000", nf=20,
              batch_size=32, minibatch_size=32, buffer_size=200, epochs=5,
              lr=0.03, alpha=0.2, beta=1.0, sparsity=0.75,
              mask_update_interval=1, gradient_sparsity=0.8, dgm_refresh=30,
              ddr_epochs="1,2,3,4", ddr_fraction=0.075, progress=False)
  base.update(changes)
  if methods.get(method).family == methods.TASK_LEVEL:
    base.setdefault("optimizer", "adam")
  return config_lib.validate(RunConfig(**base))
