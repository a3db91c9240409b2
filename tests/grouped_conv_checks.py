"""The per-layer checks of one ``grouped_tdm`` update of a grouped conv,
shared by the ResNet-18 and Zenke CNN tests."""

import numpy as np

from sparcl_jax.sparse import grouped
from sparcl_jax.sparse.grouped_tdm import swap_counts


def check_conv_update(layer, fan_in, k, *, before, after, values, grads,
                      new_values, dense, masks, lr, schedule, epoch, step):
  """Asserts what one SGD step through ``grouped_tdm`` did to a 3x3 conv.

  Every block keeps exactly ``k`` distinct input channels, the membership
  matches the indices, the number of channels moved is the schedule's
  (nothing off its updates), grown slots land on exactly 0.0 at every tap
  and unit while kept ones take the SGD step, and the dense kernel the
  layer stands for is exactly zero off its ``9 k x block`` kept weights.

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
  assert all(len(set(block)) == k for block in rows.tolist())
  np.testing.assert_array_equal(kept, grouped.kept_membership(rows, fan_in))
  assert (kept.sum(-1) == k).all()
  moved = (np.asarray(before[layer + "/kept"]) != kept).sum(-1) // 2
  at_start, at_swap = swap_counts(fan_in, k, schedule)
  if step != 0 or epoch == schedule.last_update_epoch:
    want = 0
  else:
    want = at_start if epoch == 0 else at_swap
  assert (moved == want).all(), (layer, epoch, step, moved, want)
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
  return want > 0
