"""Tests for sparcl_jax.sparse.dgm (dynamic gradient masking)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse import sparsity
from sparcl_jax.sparse.dgm import DGMSpec, DGMState, dgm, dgm_masks


def _params():
  return {'hidden_0': {'kernel': jnp.zeros((10, 30)), 'bias': jnp.zeros((30,))},
          'head': {'kernel': jnp.zeros((30, 3))}}


def _grads(seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


@pytest.mark.parametrize('kwargs,match', [
    (dict(gradient_sparsity=1.0), 'gradient_sparsity'),
    (dict(gradient_sparsity=-0.5), 'gradient_sparsity'),
    (dict(refresh_interval=0), 'refresh_interval'),
])
def test_dgm_validation(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    dgm(**kwargs)
  with pytest.raises(ConfigError, match=match):
    DGMSpec(**kwargs)


def test_dgm_spec_stores_what_its_transform_uses():
  spec = DGMSpec(np.float32(0.75), refresh_interval=np.int64(4))
  assert (type(spec.gradient_sparsity), type(spec.refresh_interval)) == (
      float, int)
  # The spec's transform is dgm of the same arguments, step for step.
  params = _params()
  a, b = spec.transform(), dgm(0.75, refresh_interval=4)
  sa, sb = a.init(params), b.init(params)
  for k in range(5):
    ua, sa = a.update(_grads(k), sa, params)
    ub, sb = b.update(_grads(k), sb, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
      np.testing.assert_array_equal(x, y)


def test_dgm_refresh_exact_share_and_reuse():
  tx = dgm(0.8, refresh_interval=3)
  params = _params()
  state = tx.init(params)
  assert isinstance(state, DGMState) and state.count.dtype == jnp.int32
  step = jax.jit(lambda g, s, k, wm: tx.update(
      g, s, params, step_in_epoch=k, weight_mask=wm))
  weight_mask = {'hidden_0': {'kernel': jnp.asarray(
      np.random.default_rng(0).random((10, 30)) < 0.5), 'bias': None},
                 'head': {'kernel': None}}
  wm = np.asarray(weight_mask['hidden_0']['kernel'])
  stored = None
  for k in range(7):
    g = _grads(k)
    out, state = step(g, state, k, weight_mask)
    mask = np.asarray(dgm_masks(state)['hidden_0']['kernel'])
    gk = np.asarray(g['hidden_0']['kernel'])
    if k % 3 == 0:
      # Exactly round(0.2 * 300) = 60 entries kept: the largest |g * wm|.
      assert mask.sum() == sparsity.keep_count(300, 0.8) == 60
      assert np.all(mask <= wm)
      masked_abs = np.abs(np.where(wm, gk, 0))
      assert masked_abs[mask].min() >= masked_abs[~mask].max()
      stored = mask
    else:
      assert np.array_equal(mask, stored)
    np.testing.assert_array_equal(np.asarray(out['hidden_0']['kernel']),
                                  np.where(mask, gk, 0))
    # Unselected leaves pass through untouched.
    np.testing.assert_array_equal(np.asarray(out['head']['kernel']),
                                  np.asarray(g['head']['kernel']))
    np.testing.assert_array_equal(np.asarray(out['hidden_0']['bias']),
                                  np.asarray(g['hidden_0']['bias']))


def test_dgm_standalone_chain_internal_counter():
  tx = optax.chain(dgm(0.9, refresh_interval=2), optax.sgd(1.0))
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  masks_seen = []
  for k in range(3):
    g = _grads(10 + k)
    u, state = update(g, state, params)
    mask = np.asarray(dgm_masks(state)['hidden_0']['kernel'])
    masks_seen.append(mask)
    assert mask.sum() == 30
    assert np.count_nonzero(np.asarray(u['hidden_0']['kernel'])) == 30
  # Internal counter: refresh at steps 0 and 2, reuse at step 1.
  assert np.array_equal(masks_seen[0], masks_seen[1])
  assert not np.array_equal(masks_seen[1], masks_seen[2])
  g2 = np.abs(np.asarray(_grads(12)['hidden_0']['kernel']))
  assert g2[masks_seen[2]].min() >= g2[~masks_seen[2]].max()


def test_dgm_ties_prefer_weight_mask():
  params = {'hidden_0': {'kernel': jnp.zeros((1, 6))}}
  tx = dgm(0.5, refresh_interval=1)
  g = {'hidden_0': {'kernel': jnp.array([[0., 0., 0., 0., 5., 0.]])}}
  wm = {'hidden_0': {'kernel': jnp.array([[False, False, True, True, True,
                                           False]])}}
  _, state = tx.update(g, tx.init(params), params, weight_mask=wm)
  # Keep 3: the only nonzero gradient, then zero-gradient ties inside the
  # weight mask.
  assert state.masks['hidden_0']['kernel'].tolist() == [
      [False, False, True, True, True, False]]


def test_dgm_masks_accessor_errors():
  with pytest.raises(ValueError, match='found 2'):
    params = _params()
    dgm_masks((dgm().init(params), dgm().init(params)))


def test_dgm_as_one_group_of_multi_transform():
  params = _params()
  labels = {'hidden_0': {'kernel': 'dgm', 'bias': 'sgd'},
            'head': {'kernel': 'sgd'}}
  tx = optax.multi_transform(
      {'dgm': optax.chain(dgm(0.9), optax.sgd(1.0)), 'sgd': optax.sgd(1.0)},
      labels)
  state = tx.init(params)
  # The other group's leaves are dense here: None, not MaskedNode.
  assert dgm_masks(state)['head']['kernel'] is None
  grads = _grads(0)
  updates, state = tx.update(grads, state, params)
  kept = np.asarray(dgm_masks(state)['hidden_0']['kernel'])
  assert kept.sum() == sparsity.keep_count(300, 0.9) == 30
  g = np.abs(np.asarray(grads['hidden_0']['kernel']))
  assert g[kept].min() >= g[~kept].max()
  np.testing.assert_array_equal(
      np.asarray(updates['hidden_0']['kernel']),
      np.where(kept, -np.asarray(grads['hidden_0']['kernel']), 0.0))
  np.testing.assert_array_equal(np.asarray(updates['head']['kernel']),
                                -np.asarray(grads['head']['kernel']))


def test_fresh_dgm_masks_report_the_gradient_sparsity_it_keeps():
  # dgm_masks of a fresh state used to be all-True (the gradient counted
  # dense, so train_flops from it counted 2.6x); it keeps what a refresh
  # keeps, and the first update refreshes even off the refresh grid.
  params = _params()
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.5, dgm=DGMSpec(0.8))
  fresh = dgm_masks(tx.init(params))['hidden_0']['kernel']
  assert int(fresh.sum()) == sparsity.keep_count(300, 0.8) == 60
  macs = {'hidden_0/kernel': 300.0}
  s_g = 1.0 - float(fresh.mean())
  assert sc.train_flops(macs, {'hidden_0/kernel': 0.5},
                        {'hidden_0/kernel': s_g}) == pytest.approx(
                            2 * (2 * 0.5 + 0.2) * 300)
  solo = dgm(0.8, refresh_interval=30)
  state = solo.init(params)
  g = _grads(0)
  out, state = solo.update(g, state, params, step_in_epoch=7)
  mask = np.asarray(dgm_masks(state)['hidden_0']['kernel'])
  gk = np.abs(np.asarray(g['hidden_0']['kernel']))
  assert mask.sum() == 60 and gk[mask].min() >= gk[~mask].max()
  np.testing.assert_array_equal(np.asarray(out['hidden_0']['kernel']),
                                np.where(mask, g['hidden_0']['kernel'], 0))
