"""Recipe: SparCL's training FLOPs of your own model.

A user's Linen CNN (layers named ``conv``, ``fc`` and ``out``) made sparse by
``sc.tdm`` with a filter that names its layers. ``sc.layer_macs`` reads each
kernel's forward MACs from the traced model (per example, whatever the
batch); ``sc.train_flops`` charges them as the paper does: a masked layer
``(1 - s_w) F`` forward, ``(1 - s_w) F`` backward to the activations and
``(1 - s_g) F`` backward to the weights, a dense layer ``3 F``.

The recipe asserts the MACs against a hand count, the dense count against
XLA's own cost analysis of the compiled train step, and the sparse count
against the formula with the exact kept counts of TDM's masks.

Run: ``python examples/flops_of_your_model.py``
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import sparcl_jax as sc

BATCH = 16


class UsersCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    # VALID padding: 10x10x8 outputs. (With SAME padding the count charges
    # the taps on the zero border too, as the paper's does; XLA does not.)
    x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="conv")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32, name="fc")(x))  # 5*5*8 = 200 inputs
    return nn.Dense(10, name="out")(x)


def main():
  model = UsersCNN()
  x = jnp.zeros((BATCH, 12, 12, 1))
  y = jnp.zeros((BATCH,), jnp.int32)
  params = model.init(jax.random.key(0), x)["params"]

  def forward(params, x):
    return model.apply({"params": params}, x)

  macs = sc.layer_macs(forward, params, x)  # per example: batch read from x
  hand = {"conv/kernel": 10 * 10 * 8 * (3 * 3 * 1),
          "fc/kernel": 200 * 32,
          "out/kernel": 32 * 10}
  assert macs == hand, macs
  print("forward MACs per example:", macs)

  # Dense: 3 F per example, one MAC = 2 FLOPs. XLA's own count of the
  # compiled step (products and elementwise work, as it compiled them) agrees
  # within 5%.
  def train_step(params, x, y):
    def loss(params):
      logits = forward(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.tree.map(lambda w, g: w - 0.1 * g, params,
                        jax.grad(loss)(params))

  dense = sc.dense_train_flops(macs, BATCH)
  xla = jax.jit(train_step).lower(params, x, y).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  print(f"dense step: {dense:.0f} FLOPs counted, XLA {xla['flops']:.0f}")
  assert abs(xla["flops"] - dense) < 0.05 * dense

  # Sparse: TDM with the user's layer names; the sparsities the count uses
  # are the masks' exact kept shares.
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.75,
              sparse_filter=sc.filter_from_regex(r"(conv|fc)/kernel"),
              dgm=sc.DGMSpec(0.8))
  state = tx.init(params)
  masks = sc.tdm_masks(state)
  weight_sparsity = {path: 1.0 - float(mask.mean())
                     for path, mask in (("conv/kernel", masks["conv"]["kernel"]),
                                        ("fc/kernel", masks["fc"]["kernel"]))}
  assert int(masks["fc"]["kernel"].sum()) == sc.keep_count(200 * 32, 0.75)
  sparse = sc.train_flops(macs, weight_sparsity,
                          {"conv/kernel": 0.8, "fc/kernel": 0.8}, BATCH)
  by_hand = 2 * BATCH * sum(
      (2 * (1 - weight_sparsity[path]) + 0.2) * macs[path]
      for path in ("conv/kernel", "fc/kernel")) + 2 * BATCH * 3 * macs[
          "out/kernel"]
  assert abs(sparse - by_hand) <= 1e-6 * by_hand
  print(f"sparse step: {sparse:.0f} FLOPs, {dense / sparse:.2f}x fewer")


if __name__ == "__main__":
  main()
