"""Which Zenke CNN layers should ``--mask_structure=grouped`` structure?

Times one SGD train step of the Zenke CNN (forward with dropout, backward,
the update; one ``jax.jit``, ``block_until_ready``; batch 32 of 32x32x3 by
default) dense and with candidate layer sets grouped sparse, interleaved
(round-robin, the order rotated by one form every round) so that a busy
machine slows every form alike. The kept channels (the ``'sparsity'``
collection) are a jit argument, as in training. Compilation is excluded
(one warm-up call per form).

conv_0 is not a candidate: it reads 3 channels, so a block keeps
``round(0.25 * 3) = 1`` channel at sparsity 0.75 and 0 at 0.9.

Usage:
  python experiments/grouped_zenke_steps.py [--repeats 9] [--batch 32]
      [--sparsities 0.75,0.9] [--sets conv_1+conv_2+conv_3:16,...]
Prints the dense ms per step and every form's speed-up ``dense_ms /
form_ms`` (medians of interleaved samples).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.models.cnn import ZenkeCNN

DEFAULT_SETS = ("conv_1+conv_2+conv_3:16,conv_1+conv_2+conv_3:32,"
                "conv_1+conv_2+conv_3+dense_0:16,dense_0:16")


def make_step(model, lr=0.01):
  """A jitted SGD step of ``model`` taking the ``'sparsity'`` collection
  as an argument."""

  @jax.jit
  def step(params, sparsity, x, y, key):
    def loss(p):
      variables = {"params": p, **sparsity}
      logits = model.apply(variables, x, train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             y).mean()

    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda w, g: w - lr * g, params, grads)

  return step


def form(layers: str, group: int, sparsity: float, shape):
  """``(step, params, sparsity collection)`` of one form."""
  structured = tuple(layers.split("+")) if layers else ()
  model = ZenkeCNN(10, group=group if structured else 0, sparsity=sparsity,
                   structured=structured)
  v = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  extra = {"sparsity": v["sparsity"]} if "sparsity" in v else {}
  return make_step(model), v["params"], extra


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--side", type=int, default=32)
  parser.add_argument("--sparsities", default="0.75,0.9")
  parser.add_argument("--sets", default=DEFAULT_SETS,
                      help="comma-separated LAYER+LAYER:GROUP")
  args = parser.parse_args()
  shape = (args.side, args.side, 3)
  x = jax.random.normal(jax.random.key(1), (args.batch,) + shape)
  y = jnp.arange(args.batch) % 10
  key = jax.random.key(2)
  print(f"backend {jax.default_backend()}, batch {args.batch}, "
        f"{shape}, {args.repeats} interleaved repeats")
  for sparsity in (float(s) for s in args.sparsities.split(",")):
    names = ["dense"]
    forms = [form("", 0, sparsity, shape)]
    for spec in args.sets.split(","):
      layers, group = spec.split(":")
      names.append(f"{layers} g{group}")
      forms.append(form(layers, int(group), sparsity, shape))
    for step, params, extra in forms:  # compile, warm up
      jax.block_until_ready(step(params, extra, x, y, key))
    samples = [[] for _ in forms]
    for r in range(args.repeats):
      order = list(range(len(forms)))
      order = order[r % len(order):] + order[:r % len(order)]
      for i in order:
        step, params, extra = forms[i]
        start = time.perf_counter()
        jax.block_until_ready(step(params, extra, x, y, key))
        samples[i].append(time.perf_counter() - start)
    dense_ms = 1e3 * np.median(samples[0])
    print(f"sparsity {sparsity}: dense {dense_ms:.1f} ms/step")
    for name, times in zip(names[1:], samples[1:]):
      print(f"  {name:<36} {dense_ms / (1e3 * np.median(times)):5.2f}x "
            f"({1e3 * np.median(times):.1f} ms)")


if __name__ == "__main__":
  main()
