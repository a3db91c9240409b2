"""Tests for sparcl_jax.data.pipeline."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax.data import pipeline
from sparcl_jax.data.types import Scenario, Task


def _as_bytes(x):
  """Recovers the stored uint8 values from inputs scaled by 1/255."""
  return np.round(np.asarray(x) * 255.0).astype(np.int64)


def _scenario():
  """Two tasks over four 2x2x1 images; task 1 permutes and offsets by 5."""
  train = np.array([[10, 20, 30, 40], [1, 2, 3, 4], [50, 60, 70, 80],
                    [5, 6, 7, 8]], np.uint8).reshape(4, 2, 2, 1)
  test = np.array([[100, 110, 120, 130], [200, 210, 220, 230]],
                  np.uint8).reshape(2, 2, 2, 1)
  t0 = Task(classes=np.arange(5), train_indices=np.array([0, 1], np.int32),
            val_indices=np.array([2], np.int32),
            test_indices=np.array([0], np.int32))
  t1 = Task(classes=np.arange(5, 10), train_indices=np.arange(4),
            val_indices=np.zeros(0, np.int32), test_indices=np.arange(2),
            label_offset=5, permutation=np.array([3, 0, 2, 1], np.int32))
  return Scenario("toy", train, np.array([0, 1, 2, 3], np.int32), test,
                  np.array([4, 0], np.int32), (t0, t1), 10)


def test_to_device_layout():
  data = pipeline.to_device(_scenario(), jax.devices()[0])
  assert data.train_images.dtype == jnp.uint8
  assert data.train_images.shape == (4, 2, 2, 1)
  assert data.train_labels.dtype == jnp.int32
  assert data.permutations.dtype == jnp.int32
  np.testing.assert_array_equal(data.permutations, [[0, 1, 2, 3],
                                                    [3, 0, 2, 1]])
  np.testing.assert_array_equal(data.label_offsets, [0, 5])
  assert isinstance(data.train_images, jax.Array)
  assert pipeline.needs_permutation(_scenario())


def test_gather_without_and_with_permutation():
  data = pipeline.to_device(_scenario())
  x0, y0 = pipeline.gather_batch(data, jnp.array([2, 0]), 0, "train")
  assert x0.dtype == jnp.float32 and x0.shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(_as_bytes(x0).reshape(2, 4),
                                [[50, 60, 70, 80], [10, 20, 30, 40]])
  np.testing.assert_array_equal(y0, [2, 0])
  # Task 1: value j of the input is stored value perm[j] = [3, 0, 2, 1][j].
  x1, y1 = pipeline.gather_batch(data, jnp.array([0, 3]), 1, "train")
  np.testing.assert_array_equal(_as_bytes(x1).reshape(2, 4),
                                [[40, 10, 30, 20], [8, 5, 7, 6]])
  np.testing.assert_allclose(x1.reshape(2, 4)[0],
                             np.float32([40, 10, 30, 20]) / np.float32(255),
                             rtol=1e-7)
  np.testing.assert_array_equal(y1, [5, 8])
  xt, yt = pipeline.gather_batch(data, jnp.array([1]), 1, "test")
  np.testing.assert_array_equal(_as_bytes(xt).reshape(4),
                                [230, 200, 220, 210])
  np.testing.assert_array_equal(yt, [5])
  xv, _ = pipeline.gather_batch(data, jnp.array([2]), 0, "val",
                                permuted=False)
  np.testing.assert_array_equal(_as_bytes(xv).reshape(4), [50, 60, 70, 80])
  with pytest.raises(ValueError, match="split must be one of"):
    pipeline.gather_batch(data, jnp.array([0]), 0, "validation")


def test_gather_in_jit_with_traced_and_per_example_tasks():
  data = pipeline.to_device(_scenario())
  gather = jax.jit(pipeline.gather_batch, static_argnames=("split",
                                                           "permuted"))
  idx = jnp.array([0, 1, 3], jnp.int32)
  x, y = gather(data, idx, jnp.int32(1), "train")
  x_eager, y_eager = pipeline.gather_batch(data, idx, 1, "train")
  np.testing.assert_array_equal(x, x_eager)
  np.testing.assert_array_equal(y, y_eager)
  # Mixed batch: example 0 from task 0 (unpermuted), 1 and 2 from task 1.
  xm, ym = gather(data, idx, jnp.array([0, 1, 1], jnp.int32), "train")
  np.testing.assert_array_equal(_as_bytes(xm).reshape(3, 4),
                                [[10, 20, 30, 40], [4, 1, 3, 2],
                                 [8, 5, 7, 6]])
  np.testing.assert_array_equal(ym, [0, 6, 8])


def test_crop_and_flip_by_hand():
  x = jnp.arange(1, 10, dtype=jnp.float32).reshape(1, 3, 3, 1)
  same = pipeline.crop_and_flip(x, jnp.array([[1, 1]]), jnp.array([False]),
                                padding=1)
  np.testing.assert_array_equal(same, x)
  # Offset (0, 0) in the 1-padded image: shifted down and right by one.
  shifted = pipeline.crop_and_flip(x, jnp.array([[0, 0]]), jnp.array([False]),
                                   padding=1)
  np.testing.assert_array_equal(shifted[0, ..., 0],
                                [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
  # Offset (2, 1) then mirrored: rows 2..4 of the padded image, flipped.
  flipped = pipeline.crop_and_flip(x, jnp.array([[2, 1]]), jnp.array([True]),
                                   padding=1)
  np.testing.assert_array_equal(flipped[0, ..., 0],
                                [[6, 5, 4], [9, 8, 7], [0, 0, 0]])


def _find_crop(padded, out, size, max_offset):
  """All (dy, dx, flipped) whose crop of ``padded`` equals ``out``."""
  matches = []
  for dy in range(max_offset + 1):
    for dx in range(max_offset + 1):
      crop = padded[dy:dy + size, dx:dx + size]
      for flip in (False, True):
        if np.array_equal(crop[:, ::-1] if flip else crop, out):
          matches.append((dy, dx, flip))
  return matches


def test_augment_batch_is_per_example_shift_and_flip():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.1, 1.0, (16, 8, 8, 3)).astype(np.float32)
  out = np.asarray(pipeline.augment_batch(jax.random.key(0), jnp.asarray(x)))
  assert out.shape == x.shape and out.dtype == np.float32
  found = []
  for i in range(16):
    padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))
    matches = _find_crop(padded, out[i], 8, 8)
    assert len(matches) == 1, (i, matches)
    found.append(matches[0])
  assert len({(dy, dx) for dy, dx, _ in found}) > 1
  assert {flip for _, _, flip in found} == {False, True}
  again = pipeline.augment_batch(jax.random.key(0), jnp.asarray(x))
  np.testing.assert_array_equal(again, out)


def test_augment_batch_under_jit_keeps_uint8():
  x = jnp.ones((2, 4, 4, 1), jnp.uint8)
  aug = jax.jit(functools.partial(pipeline.augment_batch, padding=2))
  out = aug(jax.random.key(1), x)
  assert out.shape == (2, 4, 4, 1) and out.dtype == jnp.uint8
  # Zero padding means a crop keeps at most all 16 ones.
  assert int(out.sum()) <= 32


def test_normalize_by_hand():
  x = jnp.array([[[[0.5, 1.0, 0.0]]]])
  y = pipeline.normalize(x, (0.5, 0.5, 0.25), (0.25, 0.5, 0.5))
  np.testing.assert_allclose(y[0, 0, 0], [0.0, 1.0, -0.5])
  assert y.dtype == jnp.float32
