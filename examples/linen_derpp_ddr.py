"""Recipe: DER++ with dynamic data removal in your own Linen model and jitted step.

Two class-incremental tasks of different sizes (classes 0-1, then 2-3: Gaussian
blobs written here), a Linen MLP whose layers have the user's own names, and
one jitted train step that does everything a DER++ step with DDR does:

- the stream loss on the valid part of a fixed-shape batch;
- DER++'s replay loss, ``sc.derpp_loss`` (logit matching and labels on two
  buffer draws), which adds nothing until the buffer holds a batch;
- ``sc.ddr_update`` (which examples were right before the update) and
  ``sc.reservoir_add`` (the stream batch with its logits).

DDR's state is built with ``capacity`` = the largest task's size, the batches
always have the same shape, and the task index is an argument: the step
compiles once for both tasks (asserted). The recipe also asserts that DDR
removed exactly the scheduled number of examples, and that after task 2 the
model still classifies task 1's classes (replay at work).

Run: ``python examples/linen_derpp_ddr.py``
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparcl_jax as sc

DIM, NUM_CLASSES, BATCH, REPLAY = 16, 4, 16, 16
TASK_SIZES = (96, 64)  # tasks of different sizes, one compiled step
EPOCHS = 6
ALPHA, BETA = 0.3, 0.5  # DER++'s logit and label replay weights
SCHEDULE = sc.DDRSchedule(removal_epochs=(2, 4), removal_fraction=0.1)


class UsersMLP(nn.Module):
  """A user's model: its layers are named as the user likes."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, name="encoder")(x))
    return nn.Dense(NUM_CLASSES, name="classifier")(x)


def blobs(task: int, n: int, seed: int):
  """n examples of the task's two classes, well separated blobs."""
  rng = np.random.default_rng(seed)
  labels = 2 * task + np.arange(n) % 2
  centres = np.eye(NUM_CLASSES, DIM)[labels] * 4.0
  inputs = centres + rng.normal(size=(n, DIM))
  return jnp.asarray(inputs, jnp.float32), jnp.asarray(labels, jnp.int32)


model = UsersMLP()
tx = optax.sgd(0.05)


def cross_entropy(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(weights * losses) / jnp.maximum(weights.sum(), 1.0)


def forward(params, batch_stats, x, rng, train):
  """The replay losses' view of the model (no batch norm, no dropout)."""
  del rng, train
  return model.apply({"params": params}, x), batch_stats


@jax.jit
def train_step(params, opt_state, buffer, ddr_state, inputs, labels,
               positions, valid, task, rng):
  k_replay, k_add = jax.random.split(rng)

  def loss_fn(params):
    logits = model.apply({"params": params}, inputs)
    loss = cross_entropy(logits, labels, valid.astype(jnp.float32))
    replay, _ = sc.derpp_loss(forward, params, {}, buffer, k_replay, REPLAY,
                              alpha=ALPHA, beta=BETA)
    return loss + replay, logits

  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  correct = logits.argmax(-1) == labels
  ddr_state = sc.ddr_update(ddr_state, positions, correct, valid)
  buffer = sc.reservoir_add(buffer, k_add, inputs, labels, logits, task,
                            valid=valid)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, buffer, ddr_state


def train_task(task, params, opt_state, buffer, rng):
  """One task: DDR removes data on its schedule; fixed-shape batches."""
  capacity = max(TASK_SIZES)
  n = TASK_SIZES[task]
  inputs, labels = blobs(task, n, seed=task)
  # The task's examples padded to the capacity: every batch gathers from
  # arrays of one shape, whatever the task.
  inputs = jnp.zeros((capacity, DIM)).at[:n].set(inputs)
  labels = jnp.zeros((capacity,), jnp.int32).at[:n].set(labels)
  ddr_state = sc.ddr_init(n, capacity=capacity)
  for epoch in range(EPOCHS):
    rng, k_remove, k_order = jax.random.split(rng, 3)
    removal = SCHEDULE.removal_count(epoch, n)
    if removal:
      before = int(ddr_state.kept.sum())
      ddr_state = sc.ddr_remove(ddr_state, k_remove, jnp.int32(removal))
      assert int(ddr_state.kept.sum()) == before - removal, (task, epoch)
    order, num_kept = sc.ddr_order(ddr_state, k_order)
    for start in range(0, int(num_kept), BATCH):
      positions = order[start:start + BATCH]
      positions = jnp.pad(positions, (0, BATCH - len(positions)))
      valid = jnp.arange(start, start + BATCH) < num_kept
      rng, k_step = jax.random.split(rng)
      params, opt_state, buffer, ddr_state = train_step(
          params, opt_state, buffer, ddr_state, inputs[positions],
          labels[positions], positions, valid, jnp.int32(task), k_step)
  return params, opt_state, buffer, ddr_state


def main():
  rng = jax.random.key(0)
  params = model.init(rng, jnp.zeros((1, DIM)))["params"]
  opt_state = tx.init(params)
  buffer = sc.buffer_init(32, (DIM,), NUM_CLASSES)
  for task in range(len(TASK_SIZES)):
    rng, k_task = jax.random.split(rng)
    params, opt_state, buffer, ddr_state = train_task(
        task, params, opt_state, buffer, k_task)
    n = TASK_SIZES[task]
    removed = sum(SCHEDULE.removal_count(e, n) for e in range(EPOCHS))
    assert int(ddr_state.kept.sum()) == n - removed, task

  assert train_step._cache_size() == 1, "the step recompiled across tasks"
  assert set(np.asarray(buffer.task_ids).tolist()) == {0, 1}
  for task in range(len(TASK_SIZES)):
    inputs, labels = blobs(task, 200, seed=100 + task)
    predictions = model.apply({"params": params}, inputs).argmax(-1)
    accuracy = float((predictions == labels).mean())
    print(f"task {task}: accuracy {accuracy:.3f} over all 4 classes")
    assert accuracy >= 0.9, (task, accuracy)
  print("one compilation for both tasks; DDR removed",
        [sum(SCHEDULE.removal_count(e, n) for e in range(EPOCHS))
         for n in TASK_SIZES], "examples")


if __name__ == "__main__":
  main()
