"""Reference conv nets in plain JAX, written apart from the library's models.

The benchmark measures the library's train steps against a bare jitted step
of the same architecture: these functions are that step's model, written
from the architecture's description (no Flax, no library code), so a
slowdown that the library's models or loops add cannot hide in both.

* ``resnet18``: mammoth's ResNet-18 (3x3 stride-1 stem, no max-pool, stages
  of ``nf, 2nf, 4nf, 8nf`` channels with strides 1, 2, 2, 2, two basic
  blocks each, a 1x1 conv + batch norm shortcut where the shape changes,
  global average pooling, a dense head), batch norm in training mode.
* ``zenke_cnn``: conv32 (SAME) - conv32 (VALID) - max-pool - dropout 0.25 -
  conv64 (SAME) - conv64 (VALID) - max-pool - dropout 0.25 - dense 512 -
  dropout 0.5 - dense head.

Each ``init_*`` returns ``(params, state)``; each ``apply_*`` maps
``(params, state, x, rng)`` to ``(logits, new_state)`` in training mode.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any
_DIMS = ("NHWC", "HWIO", "NHWC")


def _he(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  fan_in = math.prod(shape[:-1])
  return jax.random.normal(key, shape) * math.sqrt(2.0 / fan_in)


def _conv(x: jax.Array, w: jax.Array, stride: int, padding) -> jax.Array:
  return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                  dimension_numbers=_DIMS)


def _bn_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
              running: tuple[jax.Array, jax.Array]):
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  y = (x - mean) * lax.rsqrt(var + 1e-5) * scale + bias
  new = (0.9 * running[0] + 0.1 * mean, 0.9 * running[1] + 0.1 * var)
  return y, new


# Jitted: one compilation instead of one per parameter shape (seconds).
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init_resnet18(key: jax.Array, nf: int, num_classes: int,
                  in_channels: int) -> tuple[PyTree, PyTree]:
  """ResNet-18 parameters and batch-norm running statistics.

  Args:
    key: PRNG key.
    nf: width of the first stage.
    num_classes: logits.
    in_channels: input channels.

  Returns:
    ``(params, state)``.

  Example:
    >>> params, state = init_resnet18(jax.random.key(0), 4, 10, 3)
    >>> len(params["blocks"])
    8
  """
  keys = iter(jax.random.split(key, 64))

  def bn(c):
    return {"scale": jnp.ones(c), "bias": jnp.zeros(c)}, (jnp.zeros(c),
                                                           jnp.ones(c))

  params = {"stem": _he(next(keys), (3, 3, in_channels, nf))}
  params["stem_bn"], stem_state = bn(nf)
  state = {"stem_bn": stem_state, "blocks": []}
  params["blocks"] = []
  c_in = nf
  for stage in range(4):
    c_out = nf * 2**stage
    for b in range(2):
      stride = (1, 2, 2, 2)[stage] if b == 0 else 1
      block = {"conv1": _he(next(keys), (3, 3, c_in, c_out)),
               "conv2": _he(next(keys), (3, 3, c_out, c_out))}
      block_state = {}
      block["bn1"], block_state["bn1"] = bn(c_out)
      block["bn2"], block_state["bn2"] = bn(c_out)
      # Only the stride-2 blocks change the shape, so a block has a
      # shortcut conv exactly when it strides (apply_resnet18 relies on it).
      if stride != 1 or c_in != c_out:
        block["short"] = _he(next(keys), (1, 1, c_in, c_out))
        block["short_bn"], block_state["short_bn"] = bn(c_out)
      params["blocks"].append(block)
      state["blocks"].append(block_state)
      c_in = c_out
  params["head"] = {"w": jax.random.normal(next(keys), (c_in, num_classes))
                         / math.sqrt(c_in),
                    "b": jnp.zeros(num_classes)}
  return params, state


def apply_resnet18(params: PyTree, state: PyTree, x: jax.Array,
                   rng: jax.Array = None) -> tuple[jax.Array, PyTree]:
  """Training-mode forward pass of :func:`init_resnet18`'s network.

  Args:
    params: parameters.
    state: batch-norm running statistics.
    x: ``[B, H, W, C]`` normalised images.
    rng: unused (no dropout).

  Returns:
    ``(logits, new_state)``.

  Example:
    >>> p, s = init_resnet18(jax.random.key(0), 4, 10, 3)
    >>> jax.jit(apply_resnet18)(p, s, jnp.zeros((2, 16, 16, 3)))[0].shape
    (2, 10)
  """
  del rng
  pad1 = ((1, 1), (1, 1))
  bn_state = state
  h, stem = _bn_train(_conv(x, params["stem"], 1, pad1),
                      params["stem_bn"]["scale"], params["stem_bn"]["bias"],
                      bn_state["stem_bn"])
  h = jax.nn.relu(h)
  new_blocks = []
  for block, block_state in zip(params["blocks"], bn_state["blocks"]):
    stride = 2 if "short" in block else 1
    new = {}
    out, new["bn1"] = _bn_train(_conv(h, block["conv1"], stride, pad1),
                                **block["bn1"], running=block_state["bn1"])
    out = jax.nn.relu(out)
    out, new["bn2"] = _bn_train(_conv(out, block["conv2"], 1, pad1),
                                **block["bn2"], running=block_state["bn2"])
    shortcut = h
    if "short" in block:
      shortcut, new["short_bn"] = _bn_train(
          _conv(h, block["short"], stride, "VALID"), **block["short_bn"],
          running=block_state["short_bn"])
    h = jax.nn.relu(out + shortcut)
    new_blocks.append(new)
  logits = h.mean(axis=(1, 2)) @ params["head"]["w"] + params["head"]["b"]
  return logits, {"stem_bn": stem, "blocks": new_blocks}


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_zenke_cnn(key: jax.Array, num_classes: int,
                   image_shape: tuple[int, int, int]) -> tuple[PyTree, PyTree]:
  """Zenke et al.'s CNN parameters (no running state).

  Args:
    key: PRNG key.
    num_classes: logits.
    image_shape: ``(H, W, C)``.

  Returns:
    ``(params, {})``.

  Example:
    >>> p, _ = init_zenke_cnn(jax.random.key(0), 10, (32, 32, 3))
    >>> p["dense"]["w"].shape
    (2304, 512)
  """
  keys = jax.random.split(key, 6)
  h, w, c = image_shape
  convs, c_in = [], c
  for i, width in enumerate((32, 32, 64, 64)):
    convs.append({"w": _he(keys[i], (3, 3, c_in, width)),
                  "b": jnp.zeros(width)})
    c_in = width
  # SAME keeps the size, VALID takes 2, pooling halves: twice.
  side_h = ((h - 2) // 2 - 2) // 2
  side_w = ((w - 2) // 2 - 2) // 2
  flat = side_h * side_w * 64
  params = {"convs": convs,
            "dense": {"w": _he(keys[4], (flat, 512)), "b": jnp.zeros(512)},
            "head": {"w": jax.random.normal(keys[5], (512, num_classes))
                          / math.sqrt(512), "b": jnp.zeros(num_classes)}}
  return params, {}


def apply_zenke_cnn(params: PyTree, state: PyTree, x: jax.Array,
                    rng: jax.Array) -> tuple[jax.Array, PyTree]:
  """Training-mode forward pass (dropout on) of :func:`init_zenke_cnn`'s net.

  Args:
    params: parameters.
    state: ``{}``.
    x: ``[B, H, W, C]`` normalised images.
    rng: PRNG key for dropout.

  Returns:
    ``(logits, state)``.

  Example:
    >>> p, s = init_zenke_cnn(jax.random.key(0), 10, (32, 32, 3))
    >>> jax.jit(apply_zenke_cnn)(p, s, jnp.zeros((2, 32, 32, 3)),
    ...                          jax.random.key(1))[0].shape
    (2, 10)
  """
  keys = jax.random.split(rng, 3)

  def dropout(key, h, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, h.shape)
    return jnp.where(keep, h / (1.0 - rate), 0.0)

  def pool(h):
    return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1),
                             (1, 2, 2, 1), "VALID")

  h = x
  for i, (conv, padding) in enumerate(zip(params["convs"],
                                          ("SAME", "VALID") * 2)):
    h = jax.nn.relu(_conv(h, conv["w"], 1, padding) + conv["b"])
    if i % 2 == 1:
      h = dropout(keys[i // 2], pool(h), 0.25)
  h = h.reshape(h.shape[0], -1)
  h = jax.nn.relu(h @ params["dense"]["w"] + params["dense"]["b"])
  h = dropout(keys[2], h, 0.5)
  return h @ params["head"]["w"] + params["head"]["b"], state
