"""How far a first SGD step moves ResNet-18's block convs, dense and grouped.

Every 3x3 conv inside a residual block is followed by batch norm, so its
output does not change when its kernel is scaled: what a step of SGD does to
it is its relative size ``lr * ||g|| / ||w||``. This builds ResNet-18 nf 20
on 28x28x1 inputs dense and with grouped block convs (blocks of 20 output
channels) at sparsity 0.75, 0.90 and 0.95, and prints ``||g|| / ||w||`` of
the block convs (mean over the 16 convs and over init seeds 0-2) for one
batch of 32 MNIST training images, the kept kernel:

- ``kept_fan_in``: drawn at the kept fan-in (``--sparse_init=kept_fan_in``);
- ``dense``: cut from a dense kernel (``--sparse_init=dense``);
- ``geometric``: ``kept_fan_in`` times ``(k / C_in) ** 0.25``, i.e. drawn at
  the fan-in ``sqrt(k * C_in)`` (not a flag: the rescaling is done here).

Usage:
  python experiments/resnet_step_probe.py --data_dir=PATH/TO/mnist
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparcl_jax.data import sources
from sparcl_jax.models import registry
from sparcl_jax.paths import flatten_to_dict, map_with_paths

NF, GROUP, SPARSITIES, SEEDS, BATCH = 20, 20, (0.75, 0.90, 0.95), 3, 32


def _is_block_conv(path: str) -> bool:
  return (path.startswith("layer") and ("/conv1/" in path or "/conv2/" in path)
          and path.endswith(("kernel", "values")))


def relative_gradient(images, labels, geometric=False, **model_args) -> float:
  """Mean ``||g|| / ||w||`` of the block convs at init, over the seeds."""
  model = registry.make_model("resnet18", 10, nf=NF, **model_args)
  ratios = []
  for seed in range(SEEDS):
    variables = registry.init_model(model, jax.random.key(seed),
                                    (1,) + images.shape[1:])
    params = variables.pop("params")
    if geometric:
      kept_rows = flatten_to_dict(variables["sparsity"])
      params = map_with_paths(
          lambda path, w: w * _geometric_scale(kept_rows, path), params)

    def loss(p, variables=variables):
      logits, _ = model.apply({"params": p, **variables}, images, train=True,
                              mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()

    grads = flatten_to_dict(jax.grad(loss)(params))
    weights = flatten_to_dict(params)
    ratios += [float(jnp.linalg.norm(grads[p]) / jnp.linalg.norm(w))
               for p, w in weights.items() if _is_block_conv(p)]
  return float(np.mean(ratios))


def _geometric_scale(kept_rows: dict, path: str) -> float:
  """``(k / C_in) ** 0.25`` for a grouped conv's kept kernel, else 1."""
  if not path.endswith("/values"):
    return 1.0
  layer = path[:-len("values")]
  k = kept_rows[layer + "rows"].shape[-1]
  fan_in = kept_rows[layer + "kept"].shape[-1]
  return (k / fan_in) ** 0.25


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True,
                      help="folder holding MNIST's IDX files")
  args = parser.parse_args()
  data = sources.load_files("mnist", args.data_dir)
  # Scaled to [0, 1] as the training pipeline scales them.
  images = jnp.asarray(data.train_images[:BATCH], jnp.float32).reshape(
      BATCH, 28, 28, 1) / 255.0
  labels = jnp.asarray(data.train_labels[:BATCH]).reshape(BATCH)
  dense = relative_gradient(images, labels)
  print("block convs                  ||g||/||w||   / dense   sqrt(k/C_in)")
  print(f"dense                        {dense:.4f}        1")
  for sparsity in SPARSITIES:
    for name, kept_fan_in, geometric in (("kept_fan_in", True, False),
                                         ("dense", False, False),
                                         ("geometric", True, True)):
      ratio = relative_gradient(images, labels, geometric, group=GROUP,
                                sparsity=sparsity,
                                kept_fan_in_init=kept_fan_in)
      label = f"s = {sparsity:.2f}, {name}"
      print(f"{label:<29}{ratio:.4f}        {ratio / dense:.3f}     "
            f"{np.sqrt(1 - sparsity):.3f}")


if __name__ == "__main__":
  main()
