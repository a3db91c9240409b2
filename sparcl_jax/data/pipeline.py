"""On-device input pipeline: gather, permute, augment and normalise in jit.

The whole image pool of a scenario is moved to the device once as uint8
(:func:`to_device`); a training step then receives only an int32 index array
and builds its batch with :func:`gather_batch`, :func:`augment_batch` and
:func:`normalize`, all jittable. Removing data (SparCL's DDR) or sampling a
rehearsal buffer is then just a different index array.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.data.types import Scenario

_SPLITS = ("train", "val", "test")


class DeviceData(NamedTuple):
  """A scenario's image pool and per-task input facts as device arrays.

  Attributes:
    train_images: uint8 [N, H, W, C] (validation examples live here too).
    train_labels: int32 [N], before any task's label offset.
    test_images: uint8 [M, H, W, C].
    test_labels: int32 [M].
    permutations: int32 [T, H*W*C]; row ``t`` is task ``t``'s pixel
      permutation, the identity for tasks without one.
    label_offsets: int32 [T], each task's ``label_offset``.
  """

  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  permutations: jax.Array
  label_offsets: jax.Array


def to_device(
    scenario: Scenario,
    device: Optional[Union[jax.Device, jax.sharding.Sharding]] = None
) -> DeviceData:
  """Moves a scenario's arrays to the device in one transfer.

  Args:
    scenario: the scenario.
    device: a ``jax.Device`` or ``jax.sharding.Sharding`` (e.g. replicated
      over a mesh) for every array; None means the default device.

  Returns:
    The :class:`DeviceData`.

  Examples:
    >>> from sparcl_jax.data import scenarios
    >>> from sparcl_jax.data.datasets.digits import load_digits
    >>> scenario = scenarios.split_scenario(load_digits(0), 2)
    >>> data = to_device(scenario)
    >>> data.train_images.dtype, data.permutations.shape
    (dtype('uint8'), (5, 64))
  """
  size = int(np.prod(scenario.image_shape))
  identity = np.arange(size, dtype=np.int32)
  permutations = np.stack([
      identity if t.permutation is None else np.asarray(t.permutation,
                                                        np.int32)
      for t in scenario.tasks
  ])
  host = DeviceData(
      train_images=np.asarray(scenario.train_images, np.uint8),
      train_labels=np.asarray(scenario.train_labels, np.int32),
      test_images=np.asarray(scenario.test_images, np.uint8),
      test_labels=np.asarray(scenario.test_labels, np.int32),
      permutations=permutations,
      label_offsets=np.asarray([t.label_offset for t in scenario.tasks],
                               np.int32))
  return jax.device_put(host, device)


def needs_permutation(scenario: Scenario) -> bool:
  """Says whether any task of the scenario permutes its inputs.

  Pass the result as ``gather_batch(..., permuted=...)`` so that scenarios
  without permutations skip the pixel gather entirely.

  Args:
    scenario: the scenario.

  Returns:
    True when at least one task has a permutation.

  Examples:
    >>> needs_permutation(split_scenario(load_digits(0), 2))  # doctest: +SKIP
    False
  """
  return any(t.permutation is not None for t in scenario.tasks)


def gather_batch(data: DeviceData,
                 indices: jax.Array,
                 task_id: Union[int, jax.Array],
                 split: str = "train",
                 permuted: bool = True) -> tuple[jax.Array, jax.Array]:
  """Gathers a batch of one task: scaled, permuted inputs and global labels.

  Args:
    data: the pool from :func:`to_device`.
    indices: int32 [B] indices into the split's images (a task's
      ``train_indices``, ``val_indices`` or ``test_indices``).
    task_id: the task (a Python int or a traced int32 scalar), or int32 [B]
      the task of each example (mixed batches, e.g. replay); selects the
      permutation and the label offset.
    split: ``"train"``, ``"val"`` (both read the train pool) or ``"test"``;
      static.
    permuted: static; False skips the permutation gather, which is only
      correct when no task is permuted (see :func:`needs_permutation`).

  Returns:
    ``(x, y)``: x float32 [B, H, W, C] in [0, 1], value ``j`` of each
    flattened image being value ``perm[j]`` of the stored one; y int32 [B]
    stored labels plus the task's label offset.

  Examples:
    >>> x, y = gather_batch(data, jnp.arange(32), 0, "train")  # doctest: +SKIP
  """
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
  if split == "test":
    images, labels = data.test_images, data.test_labels
  else:
    images, labels = data.train_images, data.train_labels
  task_id = jnp.asarray(task_id, dtype=jnp.int32)
  x = jnp.take(images, indices, axis=0)
  if permuted:
    flat = x.reshape(x.shape[0], -1)
    if task_id.ndim == 0:
      flat = jnp.take(flat, data.permutations[task_id], axis=1)
    else:
      # Mixed-task batches (replay, joint training): one row per example.
      flat = jnp.take_along_axis(flat, data.permutations[task_id], axis=1)
    x = flat.reshape(x.shape)
  y = jnp.take(labels, indices, axis=0) + data.label_offsets[task_id]
  return x.astype(jnp.float32) / 255.0, y.astype(jnp.int32)


def crop_and_flip(x: jax.Array, offsets: jax.Array, flips: jax.Array,
                  padding: int = 4) -> jax.Array:
  """Crops each zero-padded image at a given offset and mirrors it if asked.

  Args:
    x: [B, H, W, C] images.
    offsets: int32 [B, 2], (row, column) of each crop's top-left corner in the
      padded image, each in ``[0, 2 * padding]``.
    flips: bool [B]; True mirrors that image left to right (after the crop).
    padding: zeros added on each side of height and width.

  Returns:
    [B, H, W, C] images, same dtype as ``x``.

  Examples:
    >>> x = jnp.arange(32.).reshape(2, 4, 4, 1)
    >>> # Offsets (padding, padding) without flips return x unchanged.
    >>> y = crop_and_flip(x, jnp.full((2, 2), 4), jnp.zeros(2, bool))
    >>> bool((y == x).all())
    True
    >>> y = crop_and_flip(x, jnp.full((2, 2), 4), jnp.ones(2, bool))
    >>> bool((y == x[:, :, ::-1]).all())
    True
  """
  _, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  cropped = jax.vmap(crop_one)(padded, offsets)
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1, :],
                   cropped)


def augment_batch(rng: jax.Array, x: jax.Array, padding: int = 4) -> jax.Array:
  """Random crop (zero padding) and random horizontal flip, per example.

  Every image gets its own uniform crop offset in ``[0, 2 * padding]`` per
  axis and a fair coin for the flip, as torchvision's
  ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``.

  Args:
    rng: a PRNG key.
    x: [B, H, W, C] images (float or integer).
    padding: zeros added on each side before cropping.

  Returns:
    Augmented images of the same shape and dtype.

  Examples:
    >>> x_aug = augment_batch(jax.random.key(0), x)  # doctest: +SKIP
  """
  offset_key, flip_key = jax.random.split(rng)
  batch = x.shape[0]
  offsets = jax.random.randint(offset_key, (batch, 2), 0, 2 * padding + 1,
                               dtype=jnp.int32)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
  return crop_and_flip(x, offsets, flips, padding)


def normalize(x: jax.Array, mean: Sequence[float],
              std: Sequence[float]) -> jax.Array:
  """Standardises each channel: ``(x - mean) / std``.

  Args:
    x: [..., C] float inputs.
    mean: per-channel means (length C, or 1 to share).
    std: per-channel standard deviations (same length as ``mean``).

  Returns:
    The normalised inputs, float32.

  Examples:
    >>> normalize(jnp.ones((1, 2, 2, 1)), (0.5,), (0.25,))[0, 0, 0, 0]
    Array(2., dtype=float32)
  """
  mean = jnp.asarray(mean, dtype=jnp.float32)
  std = jnp.asarray(std, dtype=jnp.float32)
  return (x.astype(jnp.float32) - mean) / std


def epoch_order(rng: jax.Array, usable: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """A random epoch order over example slots, usable slots first.

  The one epoch order of the library: the training loops (through
  ``steps.make_epoch_order``) and DDR's ``ddr_order`` draw theirs here. The shape never depends on how many slots are
  usable, so one compilation serves every epoch.

  Args:
    rng: a PRNG key.
    usable: [L] bool over a task's example slots (False for padding and
      removed examples).

  Returns:
    ``(positions, count)``: int32 [L] with the usable slots first, in random
    order, then the others in slot order; and the int32 number of usable
    slots.

  Examples:
    >>> positions, count = epoch_order(jax.random.key(0),
    ...                                jnp.array([True, False, True]))
    >>> sorted(positions[:int(count)].tolist()), int(positions[-1])
    ([0, 2], 1)
  """
  keys = jax.random.uniform(rng, usable.shape)
  # Unusable slots sort after every usable one (uniform keys are < 1).
  keys = jnp.where(usable, keys, 2.0)
  return jnp.argsort(keys).astype(jnp.int32), usable.sum().astype(jnp.int32)
