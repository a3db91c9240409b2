"""Probe: can group-balanced sparsity make a 3x3 convolution step faster on CPU?

Times one SGD step (forward, backward to the input and to the weights, the
weight update; one ``jax.jit``, ``block_until_ready``) of a 3x3 stride-1 SAME
convolution in NHWC, ``C`` input and ``C`` output channels, on XLA's CPU,
interleaved (round-robin, the order rotated by one form every round) so
that a busy machine slows every form alike. The loss is a mean squared error
against a fixed target, so the forward output is needed by the backward (a
linear loss would let XLA skip it). Forms:

* ``dense``: ``lax.conv_general_dilated`` with a ``[3, 3, C, C]`` kernel;
* ``masked``: the same with the kernel times a 0/1 mask (what unstructured
  masks cost: nothing saved, a multiply added);
* ``grouped_conv``: each block of ``group`` output channels keeps the same
  ``k = round(share * C)`` input channels (all 9 taps of them); the step
  gathers every block's kept channels (``jnp.take`` on the channel axis with
  ``rows`` ``[groups, k]``, giving ``[B, H, W, groups * k]``) and runs ONE
  grouped convolution (``feature_group_count=groups``) with the compact
  kernel ``[3, 3, k, C]``;
* ``loop_conv``: the same channel structure and gather, then one small
  dense convolution per block (``k`` in, ``group`` out channels, kernel
  ``[3, 3, k, group]``), unrolled in Python and concatenated;
* ``im2col_bmm``: the same channel structure; the 3x3 window is built by
  hand (the gathered channels, padded, sliced at the 9 shifts and stacked),
  laid out block-major ``[groups, B*H*W, 9 k]`` and multiplied by the compact
  values ``[groups, 9 k, group]`` in one batched matmul;
* ``im2col_grouped``: finer structure, rows over the ``9 * C`` (tap, channel)
  features: the 9 shifted copies of the input are concatenated into patches
  ``[B, H, W, 9 * C]`` and multiplied by
  :func:`sparcl_jax.sparse.grouped.grouped_matmul` with
  ``k = round(share * 9 C)`` kept features per block, values
  ``[groups, k, group]``.

The kept structure (``rows``) is passed as a jit argument, as in training,
where drop-and-grow changes it between steps. Before timing, each form's
forward output is checked against the dense convolution of the dense kernel
times that form's mask (``np.testing.assert_allclose``).

Usage:
  python experiments/grouped_conv_probe.py [--repeats 7] [--groups 10,20]
  python experiments/grouped_conv_probe.py --quick   # one shape, 5 repeats
Prints, per (shape, kept share, group), the dense ms per step and every
form's speed-up, ``dense_ms / form_ms`` (medians of interleaved samples).
A form whose first timed sample is over ``--skip_slower`` times the dense
one is left out of the remaining repeats, to keep the run short; its
speed-up is that one interleaved sample, marked ``*``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparcl_jax.sparse import grouped

SHAPES = ((32, 16, 16, 80), (32, 8, 8, 160), (32, 32, 32, 20))  # B, H, W, C
SHARES = (0.25, 0.10, 0.05)
FORMS = ("dense", "masked", "grouped_conv", "loop_conv", "im2col_bmm",
         "im2col_grouped")
LR = 0.01
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, groups=1):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                  feature_group_count=groups)


def shifts(x):
  """The 9 shifted copies of ``x`` [B, H, W, ...] a 3x3 SAME window reads,
  stacked on axis 3 in (kh, kw) order: [B, H, W, 9, ...]."""
  h, w = x.shape[1:3]
  pad = [(0, 0), (1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 3)
  xp = jnp.pad(x, pad)
  return jnp.stack([xp[:, i:i + h, j:j + w] for i in range(3)
                    for j in range(3)], axis=3)


# ------------------------------------------------------------- forward passes
def fwd_dense(w, x, aux):
  return conv(x, w)


def fwd_masked(w, x, aux):
  return conv(x, w * aux)


def fwd_grouped_conv(w, x, aux):  # w [3, 3, k, C], aux rows [G, k]
  xg = jnp.take(x, aux.reshape(-1), axis=-1)  # [B, H, W, G * k]
  return conv(xg, w, groups=aux.shape[0])


def fwd_loop_conv(w, x, aux):  # w [G, 3, 3, k, group], aux rows [G, k]
  xg = jnp.take(x, aux, axis=-1)  # [B, H, W, G, k]
  return jnp.concatenate([conv(xg[..., g, :], w[g])
                          for g in range(aux.shape[0])], axis=-1)


def fwd_im2col_bmm(w, x, aux):  # w [G, 9 k, group], aux rows [G, k]
  groups, k = aux.shape
  xg = jnp.take(x, aux, axis=-1)  # [B, H, W, G, k]
  patches = shifts(xg)  # [B, H, W, 9, G, k]
  patches = patches.transpose(4, 0, 1, 2, 3, 5).reshape(groups, -1, 9 * k)
  out = jnp.einsum("gmk,gkn->gmn", patches, w)  # [G, B*H*W, group]
  return out.transpose(1, 0, 2).reshape(*x.shape[:3], -1)


def fwd_im2col_grouped(w, x, aux):  # w [G, k9, group], aux rows [G, k9]
  patches = shifts(x).reshape(*x.shape[:3], -1)  # [B, H, W, 9 C], (t, c)
  return grouped.grouped_matmul(patches, w, aux)


FORWARD = {"dense": fwd_dense, "masked": fwd_masked,
           "grouped_conv": fwd_grouped_conv,
           "loop_conv": fwd_loop_conv, "im2col_bmm": fwd_im2col_bmm,
           "im2col_grouped": fwd_im2col_grouped}


def make_step(forward):
  def loss(w, x, aux, target):
    return 0.5 * jnp.mean((forward(w, x, aux) - target) ** 2)

  @jax.jit
  def step(w, x, aux, target):
    gw, gx = jax.grad(loss, argnums=(0, 1))(w, x, aux, target)
    return w - LR * gw, gx

  return step


STEPS = {f: make_step(FORWARD[f]) for f in FORMS}
FORWARD_JIT = {f: jax.jit(FORWARD[f]) for f in FORMS}


# ------------------------------------------------- parameters of every form
def build(kernel, c, share, group, key):
  """{form: (weights, aux, dense-equivalent mask [3, 3, C, C])}."""
  groups = grouped.check_group(c, group)
  ones = jnp.ones((3, 3, c, c), kernel.dtype)
  out = {"dense": (kernel, jnp.zeros(()), ones)}
  # Channel structure: k input channels per block, all 9 taps.
  k = max(1, round(share * c))
  k1, k2, k3 = jax.random.split(key, 3)
  rows = grouped.random_rows(k1, c, groups, k)
  cmask = grouped.row_mask(rows, c, group).astype(kernel.dtype)  # [C, C]
  cmask = jnp.broadcast_to(cmask, (3, 3, c, c))
  out["masked"] = (kernel, cmask, cmask)
  taps = kernel.reshape(9, c, c)
  vals = jnp.stack([grouped.from_dense(t, rows) for t in taps])  # [9,G,k,g]
  blocks = vals.transpose(1, 0, 2, 3)  # [G, 9, k, g]
  out["loop_conv"] = (blocks.reshape(groups, 3, 3, k, group), rows, cmask)
  out["im2col_bmm"] = (blocks.reshape(groups, 9 * k, group), rows, cmask)
  compact = vals.transpose(0, 2, 1, 3).reshape(3, 3, k, c)  # [3,3,k,G*g]
  out["grouped_conv"] = (compact, rows, cmask)
  # (tap, channel) structure: k9 of the 9 C patch features per block.
  k9 = max(1, round(share * 9 * c))
  rows9 = grouped.random_rows(k2, 9 * c, groups, k9)
  mask9 = grouped.row_mask(rows9, 9 * c, group).astype(kernel.dtype)
  out["im2col_grouped"] = (grouped.from_dense(kernel.reshape(9 * c, c), rows9),
                           rows9, mask9.reshape(3, 3, c, c))
  return out


def check(params, kernel, x):
  for form, (w, aux, mask) in params.items():
    want = conv(x, kernel * mask)
    got = FORWARD_JIT[form](w, x, aux)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                               rtol=1e-4, atol=1e-4, err_msg=form)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--groups", default="10,20",
                      help="output channels per block, comma-separated")
  parser.add_argument("--quick", action="store_true",
                      help="first shape only, 5 repeats")
  parser.add_argument("--skip_slower", type=float, default=5.0,
                      help="drop a form from the repeats after its first "
                      "sample when it is this many times slower than dense")
  args = parser.parse_args()
  group_sizes = [int(g) for g in args.groups.split(",")]
  shapes = SHAPES[:1] if args.quick else SHAPES
  repeats = 5 if args.quick else args.repeats
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}; 3x3 SAME conv "
        f"NHWC, one SGD step; medians of {repeats} interleaved repeats; "
        "speed-up = dense ms / form ms")
  head = (f"{'B,H,W,C':>14} {'kept':>5} {'group':>5} {'dense ms':>9} "
          + " ".join(f"{f:>14}" for f in FORMS[1:]))
  print(head)
  t_start = time.perf_counter()
  for b, h, w_, c in shapes:
    key = jax.random.key(c)
    kx, kk, kt, ks = jax.random.split(key, 4)
    x = jax.random.normal(kx, (b, h, w_, c))
    target = jax.random.normal(kt, (b, h, w_, c))
    kernel = jax.random.normal(kk, (3, 3, c, c)) / np.sqrt(9 * c)
    for share in SHARES:
      for group in group_sizes:
        if c % group:
          continue
        params = build(kernel, c, share, group, ks)
        check(params, kernel, x)
        state = {f: params[f][0] for f in FORMS}
        for f in FORMS:  # compile (the first timed sample is the second call)
          state[f], gx = STEPS[f](state[f], x, params[f][1], target)
          jax.block_until_ready((state[f], gx))
        times = {f: [] for f in FORMS}
        active = list(FORMS)
        for r in range(repeats):
          for f in active[r % len(active):] + active[:r % len(active)]:
            t0 = time.perf_counter()
            state[f], gx = STEPS[f](state[f], x, params[f][1], target)
            jax.block_until_ready((state[f], gx))
            times[f].append(time.perf_counter() - t0)
          if r == 0:
            active = [f for f in FORMS if
                      times[f][0] <= args.skip_slower * times["dense"][0]]
        med = {f: float(np.median(times[f])) for f in FORMS}
        print(f"{f'{b},{h},{w_},{c}':>14} {share:5.2f} {group:5d} "
              f"{1e3 * med['dense']:9.2f} " + " ".join(
                  f"{med['dense'] / med[f]:13.2f}"
                  + ("x" if f in active else "*") for f in FORMS[1:]),
              flush=True)
  print(f"* one sample only (over {args.skip_slower:g}x slower than dense in "
        f"the first round, left out of the rest); total "
        f"{time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
  main()
