"""SparCL transforms in user code: a plain-JAX model and a Flax NNX model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparcl_jax.sparse import sparsity
from sparcl_jax.sparse.dgm import DGMSpec, dgm_masks
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import tdm, tdm_masks

SCHED = MaskSchedule(update_interval=2, epochs_per_task=6)
BATCH, STEPS_PER_EPOCH = 16, 4
SPARSITY = 0.5
# Mask size after each scheduled update for a 400-weight layer:
# task start grows to s - 0.01, later updates return to s.
TARGET_NNZ = {0: sparsity.keep_count(400, SPARSITY - 0.01),
              2: sparsity.keep_count(400, SPARSITY),
              4: sparsity.keep_count(400, SPARSITY)}


def _data():
  """Two well-separated Gaussian blobs in 8-D."""
  rng = np.random.default_rng(0)
  y = np.arange(BATCH * STEPS_PER_EPOCH) % 2
  centers = np.where(y[:, None] == 1, 1.5, -1.5) * np.ones((1, 8))
  x = centers + rng.normal(size=(len(y), 8))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def _make_tx():
  # Chain composition: global clipping, then TDM wrapping SGD with DGM
  # applied to the weight-masked gradient.
  return optax.chain(
      optax.clip_by_global_norm(5.0),
      tdm(optax.sgd(0.1), sparsity=SPARSITY, schedule=SCHED, seed=1,
          dgm=DGMSpec(0.7, refresh_interval=2)))


def _init_plain_params():
  k0, k1, k2 = jax.random.split(jax.random.key(0), 3)
  return {
      'hidden_0': {'kernel': 0.3 * jax.random.normal(k0, (8, 20)),
                   'bias': jnp.zeros((20,))},
      'hidden_1': {'kernel': 0.3 * jax.random.normal(k1, (20, 20)),
                   'bias': jnp.zeros((20,))},
      'head': {'kernel': 0.3 * jax.random.normal(k2, (20, 2)),
               'bias': jnp.zeros((2,))},
  }


def _plain_forward(params, x):
  for name in ('hidden_0', 'hidden_1'):
    x = jax.nn.relu(x @ params[name]['kernel'] + params[name]['bias'])
  return x @ params['head']['kernel'] + params['head']['bias']


def _loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _check_step(epoch, k, masks, weights, dgm_mask):
  """Masked weights are exactly zero; mask sizes hit the schedule."""
  for name, n in (('hidden_0', 160), ('hidden_1', 400)):
    m = np.asarray(masks[name]['kernel'])
    w = np.asarray(weights[name])
    assert np.all(w[~m] == 0.0), (epoch, k, name)
    assert m.sum() == sparsity.keep_count(n, SPARSITY) or (
        epoch < 2 and m.sum() == sparsity.keep_count(n, SPARSITY - 0.01))
  m = np.asarray(masks['hidden_1']['kernel'])
  if k == 0 and epoch in TARGET_NNZ:
    assert m.sum() == TARGET_NNZ[epoch], epoch
  # DGM keeps exactly 30% of the entries of each masked layer.
  assert np.asarray(dgm_mask['hidden_1']['kernel']).sum() == 120


def test_plain_jax_mlp_with_chain():
  x, y = _data()
  tx = _make_tx()
  params = _init_plain_params()
  state = tx.init(params)

  @jax.jit
  def train_step(params, state, xb, yb, epoch, k):
    loss, grads = jax.value_and_grad(
        lambda p: _loss(_plain_forward(p, xb), yb))(params)
    updates, state = tx.update(grads, state, params, epoch=epoch,
                               step_in_epoch=k)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for epoch in range(SCHED.epochs_per_task):
    for k in range(STEPS_PER_EPOCH):
      sl = slice(k * BATCH, (k + 1) * BATCH)
      params, state, loss = train_step(params, state, x[sl], y[sl], epoch, k)
      losses.append(float(loss))
      _check_step(epoch, k, tdm_masks(state),
                  {n: params[n]['kernel'] for n in ('hidden_0', 'hidden_1')},
                  dgm_masks(state))
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
  accuracy = float((_plain_forward(params, x).argmax(-1) == y).mean())
  assert accuracy >= 0.95


class _NnxMLP(nnx.Module):
  """A user's NNX model; layer names follow the default sparse filter."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden_0 = nnx.Linear(8, 20, rngs=rngs)
    self.hidden_1 = nnx.Linear(20, 20, rngs=rngs)
    self.head = nnx.Linear(20, 2, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.hidden_0(x))
    return self.head(nnx.relu(self.hidden_1(x)))


def test_nnx_model_through_nnx_optimizer():
  x, y = _data()
  model = _NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _make_tx(), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, xb, yb, epoch, k):
    loss, grads = nnx.value_and_grad(lambda m: _loss(m(xb), yb))(model)
    # nnx.Optimizer.update forwards keyword args to tx.update.
    optimizer.update(model, grads, epoch=epoch, step_in_epoch=k)
    return loss

  losses = []
  for epoch in range(SCHED.epochs_per_task):
    for k in range(STEPS_PER_EPOCH):
      sl = slice(k * BATCH, (k + 1) * BATCH)
      losses.append(float(train_step(model, optimizer, x[sl], y[sl],
                                     jnp.int32(epoch), jnp.int32(k))))
      opt_state = nnx.as_pure(optimizer.opt_state)
      _check_step(epoch, k, tdm_masks(opt_state),
                  {'hidden_0': model.hidden_0.kernel[...],
                   'hidden_1': model.hidden_1.kernel[...]},
                  dgm_masks(opt_state))
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
  accuracy = float((model(x).argmax(-1) == y).mean())
  assert accuracy >= 0.95


class _UserCNN(nnx.Module):
  """A user's NNX CNN with its own layer names (not the default filter's)."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(64, 8, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x)).reshape((x.shape[0], -1))
    return self.out(nnx.relu(self.fc(x)))


def test_readme_masking_pattern_under_nnx_optimizer():
  import sparcl_jax as sc  # pylint: disable=import-outside-toplevel
  model = _UserCNN(nnx.Rngs(0))
  # The default filter knows none of conv/fc/out: loud, at construction.
  with pytest.raises(sc.ConfigError, match='selects no parameter.*conv/'):
    nnx.Optimizer(model, sc.tdm(optax.sgd(0.1), sparsity=0.75),
                  wrt=nnx.Param)
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.75, steps_per_epoch=1,
              sparse_filter=sc.filter_from_regex(r'(conv|fc)/kernel$'),
              dgm=sc.DGMSpec(0.9))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  out_kernel = np.asarray(model.out.kernel[...])
  # The README's pattern, as it comes: an nnx.State of nnx.Param masked by
  # OptVariable-wrapped masks gives an nnx.State of nnx.Param.
  masked = sc.apply_mask(nnx.state(model, nnx.Param),
                         sc.tdm_masks(optimizer.opt_state))
  assert isinstance(masked, nnx.State)
  assert isinstance(masked['conv']['kernel'], nnx.Param)
  nnx.update(model, masked)
  sizes = {'conv/kernel': 36, 'fc/kernel': 512}
  for name, n in sizes.items():
    layer = getattr(model, name.split('/')[0])
    assert np.count_nonzero(np.asarray(layer.kernel[...])) == sc.keep_count(
        n, 0.75)
  np.testing.assert_array_equal(np.asarray(model.out.kernel[...]),
                                out_kernel)
  # summarize_sparsity takes both kinds as they come.
  summary = sc.summarize_sparsity(nnx.state(model, nnx.Param),
                                  sc.filter_from_regex('kernel$'))
  assert summary['nnz'] == 9 + 128 + 16
  masks_summary = sc.summarize_sparsity(sc.tdm_masks(optimizer.opt_state))
  assert masks_summary['layers'].keys() == sizes.keys()
  assert masks_summary['nnz'] == 9 + 128
  # One step in the user's own jitted loop: masking holds, DGM (nested,
  # taking tdm's filter) keeps exact counts.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 4, 1)),
                  jnp.float32)
  y = jnp.array([0, 1, 0, 1])

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(lambda m: _loss(m(x), y))(model)
    optimizer.update(model, grads)

  train_step(model, optimizer)
  masks = sc.tdm_masks(optimizer)  # the Optimizer itself works too
  gmasks = sc.dgm_masks(optimizer.opt_state)
  state = nnx.state(model, nnx.Param)
  for name, n in sizes.items():
    layer = name.split('/')[0]
    m = np.asarray(masks[layer]['kernel'][...])
    assert m.sum() == sc.keep_count(n, 0.74)  # the task start's growth
    w = np.asarray(state[layer]['kernel'][...])
    assert np.all(w[~m] == 0.0)
    assert np.asarray(gmasks[layer]['kernel'][...]).sum() == sc.keep_count(
        n, 0.9)
  assert masks['out']['kernel'].get_value() is None
  again = sc.apply_mask(state, sc.tdm_masks(optimizer.opt_state))
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
