"""Probe for issue 13: can group-balanced sparsity make an MLP train step faster?

Times one SGD train step of the MLP 784-2000-2000-10 (cross-entropy, batch 32
and 256) on XLA's CPU, interleaved, in four forms of its two hidden layers:

* ``dense``: ``x @ W``, the dense DER++ baseline's layer;
* ``masked``: ``x @ (W * mask)``, how TDM runs today (unstructured masks);
* ``grouped_dense_storage``: each group of ``group`` output units keeps the
  same ``k`` input rows; the step gathers those rows of a dense ``W`` and
  multiplies them as one batched matmul, and the gradient is scattered back
  into the dense ``W`` (so the optimizer still sees the dense pytree);
* ``grouped_compact``: the same product with the kept weights stored compactly
  as ``[groups, k, group]`` (the optimizer sees that pytree instead), as
  ``sc.GroupedSparseDense`` stores them.

The grouped products are :func:`sparcl_jax.sparse.grouped.grouped_matmul`.

Usage: python experiments/grouped_sparsity_probe.py [--repeats 30]
Prints ms per step (median of interleaved samples) and the ratio to dense.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.sparse import grouped

WIDTHS = (784, 2000, 2000)


def _init(key):
  keys = jax.random.split(key, 3)
  dims = list(WIDTHS) + [10]
  return [{"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a),
           "bias": jnp.zeros(b)} for k, a, b in zip(keys, dims[:-1], dims[1:])]


def make_step(form, group, density, key):
  params = _init(key)
  structure = []
  for layer in params[:2]:
    fan_in, fan_out = layer["kernel"].shape
    k = max(1, round(density * fan_in))
    key, sub = jax.random.split(key)
    structure.append(grouped.random_rows(sub, fan_in, fan_out // group, k))
  masks = []
  for layer, rows in zip(params[:2], structure):
    fan_in, fan_out = layer["kernel"].shape
    m = np.zeros((fan_in, fan_out // group), bool)
    for g, r in enumerate(np.asarray(rows)):
      m[r, g] = True
    masks.append(jnp.asarray(np.repeat(m, group, axis=1)))
  if form == "grouped_compact":
    for layer, rows in zip(params[:2], structure):
      layer["kernel"] = grouped.from_dense(layer["kernel"], rows)
  tx = optax.sgd(0.01)

  def forward(p, x):
    h = x
    for i, layer in enumerate(p[:2]):
      w = layer["kernel"]
      if form == "dense":
        z = h @ w
      elif form == "masked":
        z = h @ (w * masks[i])
      elif form == "grouped_dense_storage":
        z = grouped.grouped_matmul(h, grouped.from_dense(w, structure[i]),
                                   structure[i])
      else:
        z = grouped.grouped_matmul(h, w, structure[i])
      h = jax.nn.relu(z + layer["bias"])
    return h @ p[2]["kernel"] + p[2]["bias"]

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, x),
                                                           y).mean()

  @jax.jit
  def step(p, opt, x, y):
    g = jax.grad(loss)(p, x, y)
    u, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, u), opt

  return step, params, tx.init(params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--group", type=int, default=100)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"group {args.group} output units")
  for batch in (32, 256):
    x = jax.random.normal(jax.random.key(1), (batch, 784))
    y = jnp.arange(batch) % 10
    for density in (0.25, 0.10, 0.05):
      forms = ["dense", "masked", "grouped_dense_storage", "grouped_compact"]
      steps = {f: make_step(f, args.group, density, jax.random.key(0))
               for f in forms}
      state = {f: (p, o) for f, (_, p, o) in steps.items()}
      for f in forms:  # compile
        state[f] = steps[f][0](*state[f], x, y)
        jax.block_until_ready(state[f])
      times = {f: [] for f in forms}
      for _ in range(args.repeats):
        for f in forms:
          t0 = time.perf_counter()
          state[f] = steps[f][0](*state[f], x, y)
          jax.block_until_ready(state[f])
          times[f].append(time.perf_counter() - t0)
      dense = np.median(times["dense"])
      print(f"batch {batch:3d} density {density:.2f}: " + ", ".join(
          f"{f} {1e3 * np.median(times[f]):.2f} ms ({dense / np.median(times[f]):.2f}x)"
          for f in forms))


if __name__ == "__main__":
  main()
