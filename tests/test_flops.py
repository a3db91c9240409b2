"""Tests for sparcl_jax.flops (per-layer MACs and training FLOPs)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc
from sparcl_jax import flops
from sparcl_jax import paths
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse import sparsity


class _Block(nn.Module):
  """Basic residual block named like the project's ResNet."""

  features: int
  stride: int

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), s, padding=k // 2,
                                         use_bias=False, name=name)
    bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)
    y = nn.relu(bn('bn1')(conv(self.features, 3, self.stride, 'conv1')(x)))
    y = bn('bn2')(conv(self.features, 3, 1, 'conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn('shortcut_bn')(conv(self.features, 1, self.stride,
                                 'shortcut_conv')(x))
    return nn.relu(x + y)


class _ResNet18(nn.Module):
  """Minimal mammoth-style ResNet-18 (3x3 stem, no max-pool)."""

  nf: int = 64
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.nf, (3, 3), padding=1, use_bias=False, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn1')(x))
    for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
      for b in range(2):
        x = _Block(self.nf * mult, stride if b == 0 else 1,
                   name=f'layer{stage + 1}_{b}')(x)
    return nn.Dense(self.num_classes, name='head')(x.mean(axis=(1, 2)))


def _resnet_shapes(nf=64, hw=32):
  model = _ResNet18(nf=nf)
  x = jax.ShapeDtypeStruct((1, hw, hw, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return model, variables, x


def _hand_resnet_macs(nf=64, hw=32):
  """MACs by hand: H_out * W_out * k * k * C_in * C_out per conv."""
  total = hw * hw * 9 * 3 * nf  # stem
  c_in, size = nf, hw
  for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
    c_out = nf * mult
    size //= stride
    total += size * size * 9 * c_in * c_out  # block 0 conv1
    total += 3 * size * size * 9 * c_out * c_out  # conv2, block 1 convs
    if stride != 1 or c_in != c_out:
      total += size * size * c_in * c_out  # 1x1 shortcut
    c_in = c_out
  return total + 8 * nf * 10  # head


def test_resnet18_forward_macs_match_hand_count():
  model, variables, x = _resnet_shapes()
  macs = flops.layer_macs(lambda v, x: model.apply(v, x), variables, x)
  assert flops.forward_macs(macs) == _hand_resnet_macs() == 555_422_720
  assert macs['params/conv1/kernel'] == 32 * 32 * 9 * 3 * 64
  assert macs['params/layer2_0/conv1/kernel'] == 16 * 16 * 9 * 64 * 128
  assert macs['params/layer2_0/shortcut_conv/kernel'] == 16 * 16 * 64 * 128
  assert macs['params/head/kernel'] == 512 * 10
  # 1 stem + 16 block convs + 3 shortcuts + head.
  assert len(macs) == 21


def test_resnet18_masked_layers_hold_984_permille_of_weights():
  _, variables, _ = _resnet_shapes()
  params = variables['params']
  sp = sparsity.uniform_sparsities(params, sparsity.default_sparse_filter,
                                    0.75)
  by_path = sparsity.sparsities_by_path(sp)
  assert len(by_path) == 16
  sizes = {p: int(np.prod(l.shape))
           for p, l in paths.flatten_with_paths(params)}
  kernels = sum(n for p, n in sizes.items() if p.endswith('kernel'))
  # The spec's 98.4% counts conv and linear weights (kernels) only.
  share = sum(sizes[p] for p in by_path) / kernels
  assert share == pytest.approx(0.984, abs=5e-4)
  assert 0.75 * share == pytest.approx(0.738, abs=5e-4)
  assert sum(sizes.values()) == 11_173_962


def test_batch_size_divides_and_plain_jax_model():
  params = {'w1': jnp.zeros((5, 7)), 'w2': jnp.zeros((7, 2))}
  fwd = lambda p, x: jax.nn.relu(x @ p['w1']) @ p['w2']
  macs = flops.layer_macs(fwd, params, jnp.zeros((4, 5)), batch_size=4)
  assert macs == {'w1': 35, 'w2': 14}
  # A kernel used inside a nested jit is still attributed.
  nested = lambda p, x: jax.jit(lambda a, b: a @ b)(x, p['w1'])
  assert flops.layer_macs(nested, params, jnp.zeros((1, 5))) == {'w1': 35}


def test_train_flops_formula_by_hand():
  macs = {'stem': 100, 'a': 1000, 'b': 2000}
  # a: 2 * 0.25 * 1000 + 0.2 * 1000 = 700; b: grad sparsity defaults to its
  # weight sparsity: 3 * 0.1 * 2000 = 600; stem dense: 300. 2 FLOPs per MAC.
  got = flops.train_flops(macs, {'a': 0.75, 'b': 0.9}, {'a': 0.8}, 10)
  assert got == pytest.approx(2 * (700 + 600 + 300) * 10)
  assert flops.dense_train_flops(macs, 10) == 2 * 3 * 3100 * 10


def test_paper_flops_ratio_check():
  # Spec's check: (0.25 + 0.25 + 0.20) / 3 x 0.775 = 0.181 of dense FLOPs
  # when every layer is masked at s=0.75 with DGM at 0.8.
  macs = {'conv': 1000}
  ratio = flops.train_flops(macs, {'conv': 0.75}, {'conv': 0.8},
                            0.775) / flops.dense_train_flops(macs, 1)
  assert ratio == pytest.approx(0.181, abs=5e-4)


def test_dense_train_flops_close_to_xla_cost_analysis():
  sizes, batch = [16, 128, 128, 10], 32
  keys = jax.random.split(jax.random.key(0), 3)
  names = ['hidden_0', 'hidden_1', 'head']
  params = {n: {'kernel': 0.1 * jax.random.normal(k, (a, b)),
                'bias': jnp.zeros((b,))}
            for n, k, a, b in zip(names, keys, sizes[:-1], sizes[1:])}

  def forward(p, x):
    for n in names[:-1]:
      x = jax.nn.relu(x @ p[n]['kernel'] + p[n]['bias'])
    return x @ p['head']['kernel'] + p['head']['bias']

  def step(p, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        forward(p, x), y).mean()
    return jax.tree.map(lambda w, g: w - 0.1 * g, p, jax.grad(loss)(p))

  x = jnp.ones((batch, 16))
  y = jnp.zeros((batch,), jnp.int32)
  xla = jax.jit(step).lower(params, x, y).compile().cost_analysis()['flops']
  macs = flops.layer_macs(forward, params, x[:1])
  ours = flops.dense_train_flops(macs, batch)
  # XLA skips the gradient w.r.t. the input (our model counts it, as the
  # paper does) and adds elementwise work (bias, ReLU, softmax, SGD update).
  matmul_only = ours - 2 * macs['hidden_0/kernel'] * batch
  assert xla >= matmul_only
  # Elementwise extras stay under 5% of the matmul FLOPs for these widths.
  assert xla - matmul_only < 0.05 * matmul_only
  assert abs(xla - ours) / ours < 0.05


class _UserMLP(nn.Module):
  """A user's own MLP, its layers named freely."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(40, name='fc')(x))
    return nn.Dense(10, name='out')(x)


def test_layer_macs_infers_the_batch_from_the_inputs():
  model = _UserMLP()
  x8 = jax.ShapeDtypeStruct((8, 64), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x8)['params']
  apply = lambda p, x: model.apply({'params': p}, x)
  per_example = {'fc/kernel': 64 * 40, 'out/kernel': 40 * 10}
  # Per example whatever the batch: 8, 1, or given explicitly.
  assert flops.layer_macs(apply, params, x8) == per_example
  assert flops.layer_macs(apply, params, jnp.zeros((1, 64))) == per_example
  assert flops.layer_macs(apply, params, x8, batch_size=8) == per_example
  # An explicit batch_size still rules: 1 gives the whole batch's MACs.
  assert flops.layer_macs(apply, params, x8, batch_size=1) == {
      'fc/kernel': 8 * 64 * 40, 'out/kernel': 8 * 40 * 10}
  # Two inputs sharing the batch axis; inputs without an axis: a batch of 1.
  two = lambda p, x, y: (x + y) @ p['w']
  w = {'w': jnp.zeros((3, 2))}
  assert flops.layer_macs(two, w, jnp.zeros((4, 3)), jnp.zeros((4, 3))) == {
      'w': 6}
  assert flops.layer_macs(lambda p, s: s * p['w'].sum(), w, 2.0) == {}
  with pytest.raises(ConfigError, match=r'first axes differ \(\[1, 4\]\).*'
                     'batch_size'):
    flops.layer_macs(two, w, jnp.zeros((4, 3)), jnp.zeros((1, 3)))
  with pytest.raises(ConfigError, match='batch_size must be >= 1'):
    flops.layer_macs(apply, params, x8, batch_size=0)


def test_train_flops_refuses_paths_that_are_no_layer():
  model = _UserMLP()
  x = jax.ShapeDtypeStruct((1, 64), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  # MACs of the whole variables dict: paths start with 'params/'; masks of
  # variables['params'] do not.
  macs = flops.layer_macs(lambda v, x: model.apply(v, x), variables, x)
  assert macs == {'params/fc/kernel': 64 * 40, 'params/out/kernel': 400}
  with pytest.raises(ConfigError, match=(
      r"weight_sparsity names 1 path\(s\) that are no layer of layer_macs "
      r"\(\['fc/kernel'\]\).*'fc/kernel' looks like layer "
      r"'params/fc/kernel'")):
    flops.train_flops(macs, {'fc/kernel': 0.75})
  with pytest.raises(ConfigError, match=r"grad_sparsity.*\['fc/bias'\].*"
                     r"the layers are \['params/fc/kernel'"):
    flops.train_flops(macs, None, {'fc/bias': 0.8})
  # Keyed by layer_macs' paths: fc at s_w = 0.75, s_g = 0.8; out dense.
  # (2 * 0.25 + 0.2) * 2560 + 3 * 400 = 1792 + 1200 MACs, 2 FLOPs each.
  assert flops.train_flops(macs, {'params/fc/kernel': 0.75},
                           {'params/fc/kernel': 0.8}) == pytest.approx(
                               2 * (1792 + 1200))


def test_keep_count_is_exported_flat():
  assert sc.keep_count is sparsity.keep_count
  # round((1 - s) * n), halves to even, as Python rounds.
  assert [sc.keep_count(1000, 0.75), sc.keep_count(10, 0.75),
          sc.keep_count(10, 0.25), sc.keep_count(7, 1.0)] == [250, 2, 8, 0]
