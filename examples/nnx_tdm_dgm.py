"""Recipe: SparCL's TDM and DGM in your own Flax NNX model and nnx.Optimizer.

A user's NNX CNN (layers named ``conv``, ``fc`` and ``out``) trained on two
tasks of small synthetic images with ``sc.tdm`` wrapping SGD and DGM run
inside it (``dgm=sc.DGMSpec(...)``), through an ``nnx.Optimizer``. The default sparse filter knows
only the library's own layer names (it would select nothing here, and
``tdm`` would say so); the recipe names its layers with
``sc.filter_from_regex``. It asserts, after every step:

- the kept counts of TDM's schedule, exactly (``sc.keep_count``): 1% of
  extra capacity at a task's start, back to the target at the next update;
- masked weights exactly zero, in the model itself;
- DGM's gradient mask keeps exactly ``keep_count(size, 0.9)`` entries;

and that the jitted step compiled once for both tasks (the epoch and the step
within it are traced arguments).

Run: ``python examples/nnx_tdm_dgm.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparcl_jax as sc

SPARSITY, EXTRA_GROWTH = 0.75, 0.01
EPOCHS, STEPS_PER_EPOCH, BATCH = 4, 3, 16
SCHEDULE = sc.MaskSchedule(update_interval=2, epochs_per_task=EPOCHS)


class UsersCNN(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(8 * 8 * 8, 32, rngs=rngs)
    self.out = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x)).reshape((x.shape[0], -1))
    return self.out(nnx.relu(self.fc(x)))


traces = []


@nnx.jit
def train_step(model, optimizer, x, y, epoch, step_in_epoch):
  traces.append(None)  # runs once per trace

  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads, epoch=epoch, step_in_epoch=step_in_epoch)
  return loss


def task_images(task: int, seed: int):
  """Classes 2t and 2t+1: a bright top or bottom half, with noise."""
  rng = np.random.default_rng(seed)
  labels = 2 * task + np.arange(BATCH * STEPS_PER_EPOCH) % 2
  images = rng.normal(scale=0.3, size=(len(labels), 8, 8, 1))
  rows = np.where(labels % 2 == 0, 0, 4)
  for i, row in enumerate(rows):
    images[i, row:row + 4, :, 0] += 1.0 + task
  return (jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32))


def main():
  model = UsersCNN(nnx.Rngs(0))
  tx = sc.tdm(optax.sgd(0.05), sparsity=SPARSITY, schedule=SCHEDULE,
              sparse_filter=sc.filter_from_regex(r"(conv|fc)/kernel$"),
              dgm=sc.DGMSpec(0.9, refresh_interval=2))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  # A sparse first forward pass: the initial masks applied to the model.
  nnx.update(model, sc.apply_mask(nnx.state(model, nnx.Param),
                                  sc.tdm_masks(optimizer.opt_state)))
  sizes = {"conv": 3 * 3 * 1 * 8, "fc": 8 * 8 * 8 * 32}

  for task in range(2):
    x, y = task_images(task, seed=task)
    losses = []
    for epoch in range(EPOCHS):
      for k in range(STEPS_PER_EPOCH):
        batch = slice(k * BATCH, (k + 1) * BATCH)
        losses.append(float(train_step(model, optimizer, x[batch], y[batch],
                                       jnp.int32(epoch), jnp.int32(k))))
        masks = sc.tdm_masks(optimizer.opt_state)
        gradient_masks = sc.dgm_masks(optimizer.opt_state)
        # Epochs 0-1: the task start's 1% extra capacity; from epoch 2 on
        # the scheduled update has brought the layer back to the target.
        target = SPARSITY - (EXTRA_GROWTH if epoch < 2 else 0.0)
        for name, size in sizes.items():
          mask = np.asarray(masks[name]["kernel"][...])
          kernel = np.asarray(getattr(model, name).kernel[...])
          assert mask.sum() == sc.keep_count(size, target), (task, epoch, name)
          assert (kernel[~mask] == 0).all(), (task, epoch, name)
          kept_gradient = np.asarray(gradient_masks[name]["kernel"][...]).sum()
          assert kept_gradient == sc.keep_count(size, 0.9), (task, epoch, name)
    print(f"task {task}: loss {np.mean(losses[:3]):.3f} -> "
          f"{np.mean(losses[-3:]):.3f}, fc keeps "
          f"{int(np.asarray(masks['fc']['kernel'][...]).sum())} of "
          f"{sizes['fc']} weights")
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), task

  assert len(traces) == 1, f"the step compiled {len(traces)} times"
  report = sc.summarize_sparsity(sc.tdm_masks(optimizer.opt_state))
  print(f"sparsity of the masked layers: {report['sparsity']:.3f}; "
        "one compilation for both tasks")


if __name__ == "__main__":
  main()
