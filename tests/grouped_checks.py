"""Per-layer checks of one ``grouped_tdm`` update, shared by the grouped
MLP, ResNet-18 and Zenke CNN tests."""

import numpy as np

from sparcl_jax.sparse import grouped
from sparcl_jax.sparse.grouped_tdm import swap_counts


def check_rows_update(layer, rows, kept, kept_before, fan_in, k, *,
                      schedule, epoch, step):
  """Asserts what one ``grouped_tdm`` update did to a layer's kept rows.

  Every block keeps exactly ``k`` distinct rows, the membership matches the
  indices, and each block moved the schedule's number of rows (none off its
  updates).

  Args:
    layer: the layer's name, for the failure message.
    rows: the ``[blocks, k]`` row indices after the update.
    kept: the ``[blocks, fan_in]`` membership after it.
    kept_before: the membership before it.
    fan_in: the layer's rows (inputs, or input channels of a conv).
    k: rows each block keeps.
    schedule: the run's ``MaskSchedule``.
    epoch, step: where in the task the update ran.

  Returns:
    Whether the schedule swapped rows at this update.
  """
  rows, kept = np.asarray(rows), np.asarray(kept)
  assert all(len(set(block)) == k for block in rows.tolist())
  np.testing.assert_array_equal(kept, grouped.kept_membership(rows, fan_in))
  assert (kept.sum(-1) == k).all()
  moved = (np.asarray(kept_before) != kept).sum(-1) // 2  # left + grown
  at_start, at_swap = swap_counts(fan_in, k, schedule)
  if step != 0 or epoch == schedule.last_update_epoch:
    want = 0
  else:
    want = at_start if epoch == 0 else at_swap
  assert (moved == want).all(), (layer, epoch, step, moved, want)
  return want > 0


def check_conv_update(layer, fan_in, k, *, before, after, values, grads,
                      new_values, dense, masks, lr, schedule, epoch, step):
  """Asserts what one SGD step through ``grouped_tdm`` did to a 3x3 conv.

  The kept channels pass :func:`check_rows_update`; grown slots land on
  exactly 0.0 at every tap and unit while kept ones take the SGD step; the
  dense kernel the layer stands for is exactly zero off its ``9 k x block``
  kept weights.

  Args:
    layer: the layer's path, e.g. ``'layer1_0/conv1'``.
    fan_in: its input channels.
    k: input channels each block keeps.
    before, after: the flat ``'sparsity'`` collections around the update.
    values, grads, new_values: the flat parameters before the step, their
      gradients and the parameters after it.
    dense, masks: the flat ``dense_view`` of the new parameters.
    lr: the SGD learning rate.
    schedule: the run's ``MaskSchedule``.
    epoch, step: where in the task the update ran.

  Returns:
    Whether the schedule swapped channels at this update.
  """
  rows = np.asarray(after[layer + "/rows"])
  kept = np.asarray(after[layer + "/kept"])
  assert rows.shape == (new_values[layer + "/values"].shape[0], k)
  swapped = check_rows_update(layer, rows, kept, before[layer + "/kept"],
                              fan_in, k, schedule=schedule, epoch=epoch,
                              step=step)
  changed = rows != np.asarray(before[layer + "/rows"])
  w, g = values[layer + "/values"], grads[layer + "/values"]
  new_w = np.moveaxis(np.asarray(new_values[layer + "/values"]), -2, 1)
  step_w = np.moveaxis(np.asarray(w - lr * g), -2, 1)
  np.testing.assert_array_equal(new_w[changed], 0.0)
  np.testing.assert_allclose(new_w[~changed], step_w[~changed],
                             rtol=1e-5, atol=1e-7)
  kernel = np.asarray(dense[layer + "/kernel"])
  mask = np.asarray(masks[layer + "/kernel"])
  assert kernel.shape[:3] == (3, 3, fan_in)
  assert (kernel[~mask] == 0).all()
  assert mask.sum() == 9 * k * kernel.shape[-1]
  return swapped
