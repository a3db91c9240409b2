"""Recipe: CLNP in your own Flax NNX model and task loop.

Three tasks (each: is coordinate t of a 6-D Gaussian positive?), one hidden
layer shared by all tasks and one head per task. Each task trains only the
units earlier tasks left free (``sc.clnp_partition`` inside an
``nnx.Optimizer``), then ``sc.commit_task`` keeps the units the task needs and
zeroes the rest's outgoing weights. The recipe asserts CLNP's promise, that
every earlier task's logits stay bit-identical while later tasks train, and
that the jitted train step compiles once for all tasks (the task index is an
argument, the optimizer a new one per task).

Two rules this follows (docs/guides/clnp.md):
- sow each layer's activations under ``<layer>_act``; Flax reserves the
  layer's own name;
- take a task's reference logits after its ``commit_task``: the commit itself
  changes them (it zeroes the cut units' outgoing weights).

Run: ``python examples/nnx_clnp_task_loop.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparcl_jax as sc

NUM_TASKS, STEPS = 3, 50


class Net(nnx.Module):
  """A shared hidden layer and one two-way head per task."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden_0 = nnx.Linear(6, 16, rngs=rngs)
    for task in range(NUM_TASKS):  # 'head_<task>': mlp_layer_specs' names
      setattr(self, f"head_{task}", nnx.Linear(16, 2, rngs=rngs))

  def __call__(self, x):
    h = nnx.relu(self.hidden_0(x))
    self.sow(nnx.Intermediate, "hidden_0_act", h)  # '<layer>_act'
    return jnp.concatenate(
        [getattr(self, f"head_{task}")(h) for task in range(NUM_TASKS)],
        axis=-1)


# Called through nnx.capture, the sown activations are returned, not stored
# in the model (which would change its state and retrace the step).
forward = nnx.capture(lambda model, x: model(x), nnx.Intermediate)
traces = []


@nnx.jit
def train_step(model, optimizer, x, y, task):
  traces.append(task)  # runs once per trace, not once per call

  def loss_fn(model):
    logits = jax.lax.dynamic_slice_in_dim(forward(model, x)[0], 2 * task, 2,
                                          axis=1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss + 1e-3 * sc.l1_penalty(nnx.state(model, nnx.Param), None)

  optimizer.update(model, nnx.grad(loss_fn)(model))


def task_data(task: int, n: int, seed: int):
  x = jax.random.normal(jax.random.key(seed), (n, 6))
  return x, (x[:, task] > 0).astype(jnp.int32)


def main():
  model = Net(nnx.Rngs(0))
  specs = sc.mlp_layer_specs(nnx.state(model, nnx.Param))
  used = sc.init_used(nnx.state(model, nnx.Param), specs)
  tx = sc.clnp_partition(optax.adam(1e-2))
  x_probe = jax.random.normal(jax.random.key(99), (32, 6))
  references = []
  for task in range(NUM_TASKS):
    x, y = task_data(task, 64, seed=task)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    sc.set_partition(optimizer, sc.compute_partition(
        nnx.state(model, nnx.Param), specs, used, task=task))
    for _ in range(STEPS):
      train_step(model, optimizer, x, y, jnp.int32(task))

    activity = sc.unit_activity(model, x, ["hidden_0"])
    free = {name: ~u for name, u in used.items()}
    # Keep the free units more active than the median (the library's
    # graceful-forgetting search picks this threshold by validation loss).
    threshold = float(np.median(activity["hidden_0"][free["hidden_0"]]))
    kept = sc.prune_by_threshold(activity, free, threshold)
    params, used = sc.commit_task(
        nnx.state(model, nnx.Param), specs, used, kept,
        jax.random.key(10 + task),
        lambda k: nnx.state(Net(nnx.Rngs(k)), nnx.Param), task=task)
    nnx.update(model, params)

    logits = np.asarray(forward(model, x_probe)[0])
    for earlier, reference in enumerate(references):
      assert np.array_equal(logits[:, 2 * earlier:2 * earlier + 2],
                            reference), (task, earlier)
    references.append(logits[:, 2 * task:2 * task + 2])  # after the commit
    accuracy = float((logits_of(model, x, task).argmax(-1) == y).mean())
    print(f"task {task}: {int(used['hidden_0'].sum())} of 16 units used, "
          f"training accuracy {accuracy:.2f}")
    assert accuracy >= 0.9, (task, accuracy)

  assert len(traces) == 1, f"the step compiled {len(traces)} times"
  print("earlier tasks' logits bit-identical after every later task; "
        "one compilation")


def logits_of(model, x, task):
  return forward(model, x)[0][:, 2 * task:2 * task + 2]


if __name__ == "__main__":
  main()
