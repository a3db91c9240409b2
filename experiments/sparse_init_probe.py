"""How a sparse MLP's signal starts: cut from a dense init, or at the kept fan-in.

Builds the MLP 784-2000-2000-10 of the structured configs (grouped hidden
layers, blocks of 50 units) at sparsity 0.75, 0.90 and 0.95, with the kept
weights cut from a dense LeCun-normal kernel (``--sparse_init=dense``) and
drawn at the kept fan-in (``--sparse_init=kept_fan_in``), and prints the
standard deviation of each hidden layer's activations and of the logits on
1000 MNIST training images, beside the dense MLP's (seed 0, no training).

Usage:
  python experiments/sparse_init_probe.py --data_dir=PATH/TO/mnist
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from sparcl_jax.data import sources
from sparcl_jax.models.mlp import MLP

WIDTHS, GROUP, SPARSITIES = (2000, 2000), 50, (0.75, 0.90, 0.95)


def signal(model: MLP, images: jax.Array) -> tuple[list[float], float]:
  """Standard deviations of the hidden activations and of the logits."""
  variables = model.init(jax.random.key(0), images[:1])
  logits, state = model.apply(variables, images, mutable=["intermediates"])
  hidden = [float(np.std(acts[0]))
            for _, acts in sorted(state["intermediates"].items())]
  return hidden, float(np.std(logits))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True,
                      help="folder holding MNIST's IDX files")
  args = parser.parse_args()
  images = sources.load_files("mnist", args.data_dir).train_images[:1000]
  # Scaled to [0, 1] as the training pipeline scales them.
  images = jnp.asarray(images, jnp.float32) / 255.0
  hidden, logits = signal(MLP(WIDTHS, 10), images)
  print("model                        hidden std       logits std  "
        "logits var / dense")
  print(f"dense                        {hidden[0]:.4f} {hidden[1]:.4f}    "
        f"{logits:.4f}      1")
  for sparsity in SPARSITIES:
    for kept_fan_in in (False, True):
      model = MLP(WIDTHS, 10, group=GROUP, sparsity=sparsity,
                  kept_fan_in_init=kept_fan_in)
      h, l = signal(model, images)
      name = "kept_fan_in" if kept_fan_in else "dense"
      label = f"s = {sparsity:.2f}, {name}"
      print(f"{label:<29}{h[0]:.4f} {h[1]:.4f}    {l:.4f}      "
            f"{(l / logits) ** 2:.4f}")


if __name__ == "__main__":
  main()
