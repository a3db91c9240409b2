"""Times SGD steps of GroupedSparseConv against a dense nn.Conv, in a scan.

The layer-level follow-up of ``experiments/grouped_conv_probe.py``: the
library's :class:`~sparcl_jax.GroupedSparseConv` (per-block convolutions on
CPU, through ``lax.platform_dependent``) against ``nn.Conv`` with
:func:`~sparcl_jax.conv_with_canonical_gradients` (the library's dense conv),
both 3x3 stride-1 SAME, ``C`` in and ``C`` out channels, no bias, NHWC.
Each timed call runs ``--steps`` SGD steps inside one ``lax.scan``, as the
library's train chunks run them (where XLA's CPU leaves non-canonical
convolutions as naive loops): the forward pass, a mean squared error against
a fixed target, the gradient to the weights (applied) and to the input
(accumulated into the carry, as a lower layer would consume it). The kept
channels (``rows``) are a jit argument, as in training, where drop-and-grow
changes them between steps.

Every (shape, kept share) runs the dense step and one grouped step per
block size interleaved (round-robin, the order rotated every round), so a
busy machine slows every form alike; the table gives the dense ms per step
and ``dense ms / grouped ms`` per block size (medians of the samples).
Before timing, each grouped layer's output is checked against the dense
convolution of its masked dense kernel.

Usage:
  python experiments/grouped_conv_steps.py [--repeats 7] [--steps 4]
      [--groups 8,10,16,20,40] [--shares 0.25,0.1]
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import sparcl_jax as sc
from sparcl_jax.sparse import grouped_conv

SHAPES = ((32, 16, 16, 80), (32, 8, 8, 80), (32, 16, 16, 160),
          (32, 8, 8, 160))  # B, H, W, C: ResNet-18 nf 20's widths
LR = 0.01


def make_chunk(model, steps):
  """A jitted ``steps``-step SGD scan of ``model`` on a fixed batch."""

  def loss(params, x, other, target):
    y = model.apply({"params": params, **other}, x)
    return 0.5 * jnp.mean((y - target) ** 2)

  @jax.jit
  def chunk(params, other, x, target):
    def step(carry, _):
      params, acc = carry
      gp, gx = jax.grad(loss, argnums=(0, 1))(params, x, other, target)
      params = jax.tree.map(lambda p, g: p - LR * g, params, gp)
      return (params, acc + gx), None

    (params, acc), _ = lax.scan(step, (params, jnp.zeros_like(x)), None,
                                length=steps)
    return params, acc

  return chunk


def build(c, share, group, x):
  """``(model, params, other variables)`` of one form: group 0 is dense."""
  if group == 0:
    model = nn.Conv(c, (3, 3), use_bias=False,
                    conv_general_dilated=sc.conv_with_canonical_gradients)
  else:
    model = sc.GroupedSparseConv(c, (3, 3), group=group,
                                 sparsity=1.0 - share, use_bias=False)
  variables = model.init(jax.random.key(group), x[:1])
  params = variables.pop("params")
  return model, params, variables


def check(model, params, other, x):
  """The grouped layer's output equals the masked dense convolution."""
  rows = other["sparsity"]["rows"]
  kernel = grouped_conv.to_dense(params["values"], rows, x.shape[-1])
  want = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = model.apply({"params": params, **other}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                             atol=1e-4)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--steps", type=int, default=4,
                      help="SGD steps per scan (per timed call)")
  parser.add_argument("--groups", default="8,10,16,20,40",
                      help="output channels per block, comma-separated")
  parser.add_argument("--shares", default="0.25,0.1",
                      help="kept shares of the kernel, comma-separated")
  parser.add_argument("--shapes", default="",
                      help="B,H,W,C shapes separated by ';' (default: "
                      "C = 80 and 160 at 16x16 and 8x8, batch 32)")
  args = parser.parse_args()
  group_sizes = [int(g) for g in args.groups.split(",")]
  shares = [float(s) for s in args.shares.split(",")]
  shapes = ([tuple(int(v) for v in s.split(",")) for s in
             args.shapes.split(";")] if args.shapes else SHAPES)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}; 3x3 SAME conv "
        f"NHWC, {args.steps} SGD steps per lax.scan; medians of "
        f"{args.repeats} interleaved samples; ratio = dense ms / grouped ms")
  print(f"{'B,H,W,C':>14} {'kept':>5} {'dense ms':>9} "
        + " ".join(f"{f'g={g}':>7}" for g in group_sizes))
  t_start = time.perf_counter()
  for b, h, w, c in shapes:
    kx, kt = jax.random.split(jax.random.key(c))
    x = jax.random.normal(kx, (b, h, w, c))
    target = jax.random.normal(kt, (b, h, w, c))
    for share in shares:
      forms = [0] + [g for g in group_sizes if c % g == 0]
      state, chunks, others = {}, {}, {}
      for g in forms:
        model, params, other = build(c, share, g, x)
        if g:
          check(model, params, other, x)
        chunks[g] = make_chunk(model, args.steps)
        state[g], others[g] = params, other
        state[g], acc = chunks[g](state[g], other, x, target)  # compile
        jax.block_until_ready((state[g], acc))
      times = {g: [] for g in forms}
      for r in range(args.repeats):
        for g in forms[r % len(forms):] + forms[:r % len(forms)]:
          t0 = time.perf_counter()
          state[g], acc = chunks[g](state[g], others[g], x, target)
          jax.block_until_ready((state[g], acc))
          times[g].append((time.perf_counter() - t0) / args.steps)
      med = {g: float(np.median(times[g])) for g in forms}
      cells = [f"{med[0] / med[g]:6.2f}x" if g in med else f"{'-':>7}"
               for g in group_sizes]
      print(f"{f'{b},{h},{w},{c}':>14} {share:5.2f} {1e3 * med[0]:9.2f} "
            + " ".join(cells), flush=True)
  print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
  main()
