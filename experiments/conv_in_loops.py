"""Why conv models were slow in the library's loops on a CPU, in one run.

Times one SGD step of ResNet-18 nf 20 and of the Zenke CNN (batch 32,
32x32x3) jitted alone, inside a one-trip ``lax.while_loop`` (the library's
``run_if``) and inside a ``lax.cond`` (DER++'s replay), with JAX's own
convolution gradients and with ``sc.conv_with_canonical_gradients``; and
counts the convolutions XLA's CPU compiler left in a non-canonical layout
(``dim_labels`` other than ``b01f_01io->b01f``), which it runs as naive loop
nests instead of Eigen's kernel.

Usage:
  python experiments/conv_in_loops.py     # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import sparcl_jax as sc
from sparcl_jax.models.cnn import ZenkeCNN
from sparcl_jax.models.resnet import ResNet18

CONVS = {"jax": lax.conv_general_dilated,
         "canonical": sc.conv_with_canonical_gradients}


def make_step(model, batch: int = 32):
  """``(step, carry)``: one SGD step of ``model`` on a fixed random batch."""
  key = jax.random.key(0)
  variables = model.init(key, jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  x = jax.random.normal(key, (batch, 32, 32, 3))
  y = jnp.arange(batch) % 10
  tx = optax.sgd(0.03)

  def step(carry):
    params, stats, opt = carry

    def loss(p):
      v = {"params": p, **({"batch_stats": stats} if stats else {})}
      logits, updates = model.apply(v, x, train=True,
                                    mutable=["batch_stats"] if stats else [],
                                    rngs={"dropout": key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return loss.mean(), updates.get("batch_stats", stats)

    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt

  return step, (params, stats, tx.init(params))


def wrappings(step):
  """The step alone, in a one-trip while loop, and in a taken cond."""
  return {
      "alone": jax.jit(step),
      "while_loop": jax.jit(lambda c: lax.while_loop(
          lambda s: s[0], lambda s: (jnp.bool_(False), step(s[1])),
          (jnp.bool_(True), c))[1]),
      "cond": jax.jit(lambda c: lax.cond(
          jnp.isfinite(c[0]["head"]["bias"][0]), step, lambda c: c, c)),
  }


def non_canonical(fn, carry) -> int:
  hlo = fn.lower(carry).compile().as_text()
  return sum(1 for line in hlo.splitlines()
             if " convolution(" in line and "b01f_01io->b01f" not in line)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"{'model':<16}{'gradients':<11}{'wrapped':<12}{'ms/step':>9}"
        f"{'non-canonical convs':>21}")
  for name, build in (("resnet18_nf20", lambda c: ResNet18(
      nf=20, num_outputs=10, conv_general_dilated=c)),
                      ("zenke_cnn", lambda c: ZenkeCNN(
                          num_outputs=10, conv_general_dilated=c))):
    for grads, conv in CONVS.items():
      step, carry = make_step(build(conv))
      for where, fn in wrappings(step).items():
        jax.block_until_ready(fn(carry))
        times = []
        for _ in range(args.repeats):
          start = time.perf_counter()
          jax.block_until_ready(fn(carry))
          times.append(time.perf_counter() - start)
        print(f"{name:<16}{grads:<11}{where:<12}"
              f"{1e3 * float(np.median(times)):>9.1f}"
              f"{non_canonical(fn, carry):>21}", flush=True)


if __name__ == "__main__":
  main()
