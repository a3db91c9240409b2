"""Tests for sparcl_jax.metrics against hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax import metrics

# R[i][j]: accuracy on task j after training task i. Task 0 peaks after task 1
# (85 > 80), so forgetting (uses the max) and BWT (uses the diagonal) differ.
R = np.array([[80., 10., 5.],
              [85., 90., 20.],
              [50., 70., 85.]])


def test_average_accuracy_is_mean_of_last_row():
  assert metrics.average_accuracy(R) == pytest.approx((50 + 70 + 85) / 3)


def test_average_forgetting_uses_best_earlier_accuracy():
  # task 0: max(80, 85) - 50 = 35; task 1: 90 - 70 = 20.
  assert metrics.average_forgetting(R) == pytest.approx(27.5)


def test_average_forgetting_ignores_final_row_in_max_and_can_be_negative():
  R2 = np.array([[60., 0.], [75., 90.]])
  assert metrics.average_forgetting(R2) == pytest.approx(60. - 75.)


def test_backward_transfer_uses_diagonal():
  # (50 - 80 + 70 - 90) / 2
  assert metrics.backward_transfer(R) == pytest.approx(-25.0)


def test_forward_transfer_against_baseline():
  # (R[0,1] - 12 + R[1,2] - 4) / 2 = (-2 + 16) / 2
  assert metrics.forward_transfer(R, [10., 12., 4.]) == pytest.approx(7.0)


def test_single_task_has_zero_transfer_and_forgetting():
  one = np.array([[77.]])
  assert metrics.average_accuracy(one) == 77.0
  assert metrics.average_forgetting(one) == 0.0
  assert metrics.backward_transfer(one) == 0.0
  assert metrics.forward_transfer(one, [10.]) == 0.0


def test_summarize_keys_and_values():
  R_task = np.array([[99., 50., 50.], [98., 97., 50.], [96., 95., 94.]])
  out = metrics.summarize(R, R_task)
  assert set(out) == {"class_il", "task_il", "forgetting_class_il",
                      "forgetting_task_il", "bwt_class_il", "bwt_task_il"}
  assert all(type(v) is float for v in out.values())
  assert out["class_il"] == pytest.approx(205 / 3)
  assert out["task_il"] == pytest.approx(95.0)
  assert out["forgetting_class_il"] == pytest.approx(27.5)
  assert out["forgetting_task_il"] == pytest.approx(((99 - 96) + (97 - 95)) / 2)
  assert out["bwt_class_il"] == pytest.approx(-25.0)
  assert out["bwt_task_il"] == pytest.approx(-2.5)


def test_non_square_matrix_is_rejected():
  with pytest.raises(ValueError, match="square"):
    metrics.average_accuracy(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="baseline"):
    metrics.forward_transfer(R, [1., 2.])


def test_class_and_task_il_correct():
  logits = jnp.array([[5., 1., 2., 0.],    # label 2: top-1 is class 0
                      [0., 3., 1., 4.],    # label 1: class 3 beats it
                      [1., 0., 0., 9.]])   # label 0: class 3 unseen
  y = jnp.array([2, 1, 0])
  seen = jnp.array([True, True, True, False])
  cil = jax.jit(metrics.class_il_correct)(logits, y, seen)
  np.testing.assert_array_equal(cil, [False, True, True])
  assert cil.dtype == jnp.bool_
  # Task 0 owns {0, 1}, task 1 owns {2, 3}; per-example masks [B, C].
  task_mask = jnp.array([[False, False, True, True],
                         [True, True, False, False],
                         [True, True, False, False]])
  til = jax.jit(metrics.task_il_correct)(logits, y, task_mask)
  np.testing.assert_array_equal(til, [True, True, True])
  # One mask for the whole batch.
  til_one = metrics.task_il_correct(logits, y, jnp.array([True, True, False,
                                                          False]))
  np.testing.assert_array_equal(til_one, [False, True, True])
