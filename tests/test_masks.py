"""Tests for sparcl_jax.sparse.masks and the modules under it (sparsity,
selection, drop_grow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse import drop_grow, masks, selection, sparsity


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'hidden_0': {'kernel': jnp.asarray(rng.normal(size=(20, 50)),
                                         jnp.float32),
                   'bias': jnp.zeros((50,))},
      'hidden_1': {'kernel': jnp.asarray(rng.normal(size=(50, 8)),
                                         jnp.float32)},
      'head': {'kernel': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)},
  }


@pytest.mark.parametrize('path,shape,expected', [
    ('layer1_0/conv1/kernel', (3, 3, 4, 4), True),
    ('layer4_1/conv2/kernel', (3, 3, 4, 4), True),
    ('params/layer2_0/conv1/kernel', (3, 3, 4, 4), True),
    ('conv1/kernel', (3, 3, 3, 4), False),
    ('layer1_0/shortcut_conv/kernel', (1, 1, 4, 8), False),
    ('layer1_0/bn1/scale', (4,), False),
    ('bn1/scale', (4,), False),
    ('hidden_0/kernel', (4, 8), True),
    ('hidden_3/kernel', (4, 8), True),
    ('hidden_0/bias', (8,), False),
    ('head/kernel', (8, 2), False),
    ('head_0/kernel', (8, 2), False),
])
def test_default_sparse_filter(path, shape, expected):
  assert sparsity.default_sparse_filter(path, jnp.zeros(shape)) is expected


def test_filter_from_regex():
  f = sparsity.filter_from_regex(r'dense_\d+/kernel$')
  assert f('dense_12/kernel', jnp.zeros((2, 2)))
  assert not f('dense_12/bias', jnp.zeros((2, 2)))
  # 1-D leaves are never sparse by default even if the path matches.
  assert not sparsity.filter_from_regex('bias')('a/bias', jnp.zeros((3,)))
  with pytest.raises(ConfigError, match='regex'):
    sparsity.filter_from_regex('(')


def test_keep_count():
  assert sparsity.keep_count(1000, 0.75) == 250
  assert sparsity.keep_count(1000, 0.76) == 240
  assert sparsity.keep_count(1000, 0.74) == 260
  assert sparsity.keep_count(10, 0.0) == 10
  assert sparsity.keep_count(7, 1.0) == 0


def test_uniform_sparsities_structure_and_validation():
  sp = sparsity.uniform_sparsities(_params(), sparsity.default_sparse_filter, 0.9)
  assert sp == {'hidden_0': {'kernel': 0.9, 'bias': None},
                'hidden_1': {'kernel': 0.9}, 'head': {'kernel': None}}
  for bad in (1.0, -0.1):
    with pytest.raises(ConfigError, match=r'\[0, 1\)'):
      sparsity.uniform_sparsities(_params(), sparsity.default_sparse_filter, bad)


def test_erk_hand_computed_with_dense_clipping():
  p = {'hidden_0': {'kernel': jnp.zeros((64, 64))},
       'hidden_1': {'kernel': jnp.zeros((64, 4))}}
  # Raw densities 128/4096 and 68/256. At s=0.5 the scale would give the
  # small layer density 2.96 > 1, so it becomes dense and the big layer keeps
  # (2176 - 256) / 4096 = 0.46875.
  sp = sparsity.erk_sparsities(p, sparsity.default_sparse_filter, 0.5)
  assert sp['hidden_1']['kernel'] == 0.0
  assert sp['hidden_0']['kernel'] == pytest.approx(0.53125, abs=1e-12)
  # At s=0.9 no clipping: density ratio equals raw-density ratio.
  sp = sparsity.erk_sparsities(p, sparsity.default_sparse_filter, 0.9)
  d0, d1 = 1 - sp['hidden_0']['kernel'], 1 - sp['hidden_1']['kernel']
  assert d1 / d0 == pytest.approx((68 / 256) / (128 / 4096))
  assert (d0 * 4096 + d1 * 256) / 4352 == pytest.approx(0.1)


def test_magnitude_mask_exact_and_largest():
  p = _params()
  sp = sparsity.uniform_sparsities(p, sparsity.default_sparse_filter, 0.73)
  m = masks.magnitude_mask(p, sp)
  assert m['head']['kernel'] is None and m['hidden_0']['bias'] is None
  for name, n in (('hidden_0', 1000), ('hidden_1', 400)):
    mk = np.asarray(m[name]['kernel'])
    assert mk.dtype == bool and mk.sum() == sparsity.keep_count(n, 0.73)
    w = np.abs(np.asarray(p[name]['kernel']))
    assert w[mk].min() > w[~mk].max()


def test_magnitude_mask_on_frozendict():
  p = FrozenDict(_params())
  sp = sparsity.uniform_sparsities(p, sparsity.default_sparse_filter, 0.5)
  m = masks.magnitude_mask(p, sp)
  assert int(m['hidden_1']['kernel'].sum()) == 200
  out = masks.apply_mask(p, m)
  assert int((out['hidden_1']['kernel'] != 0).sum()) == 200
  assert np.array_equal(out['head']['kernel'], p['head']['kernel'])


def test_snip_mask_hand_example():
  p = {'hidden_0': {'kernel': jnp.array([[1., 2.], [3., 4.]])}}
  g = {'hidden_0': {'kernel': jnp.array([[5., 0.], [1., -1.]])}}
  # |w*g| = [[5, 0], [3, 4]] -> keep 5 and 4.
  m = masks.snip_mask(p, g, {'hidden_0': {'kernel': 0.5}})
  assert m['hidden_0']['kernel'].tolist() == [[True, False], [False, True]]


def test_apply_mask_exact_zeros():
  p = {'a': jnp.array([-1.5, 2.0, 3.0]), 'b': jnp.array([7.0])}
  out = masks.apply_mask(p, {'a': jnp.array([False, True, False]), 'b': None})
  assert out['a'].tolist() == [0.0, 2.0, 0.0]
  assert out['b'].tolist() == [7.0]


def test_apply_mask_across_kinds_of_params_and_masks():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  w = jnp.array([[1.5, -2.0], [3.0, 4.0]])
  b = jnp.array([5.0, 6.0])
  mask = jnp.array([[True, False], [False, True]])
  expected = [[1.5, 0.0], [0.0, 4.0]]
  nested = {'fc': {'kernel': w, 'bias': b}}
  mask_dict = {'fc': {'kernel': mask, 'bias': None}}
  # FrozenDict params, dict masks: a FrozenDict comes back.
  out = masks.apply_mask(FrozenDict(nested), mask_dict)
  assert isinstance(out, FrozenDict)
  assert out['fc']['kernel'].tolist() == expected
  # An nnx.State of Params with masks of the nnx.Optimizer's kind
  # (OptVariable-wrapped, None inside at dense leaves): Params come back.
  state = nnx.State({'fc': {'kernel': nnx.Param(w), 'bias': nnx.Param(b)}})
  opt_masks = nnx.State({'fc': {
      'kernel': nnx.training.optimizer.OptVariable(mask),
      'bias': nnx.training.optimizer.OptVariable(None)}})
  out = masks.apply_mask(state, opt_masks)
  assert isinstance(out, nnx.State)
  assert isinstance(out['fc']['kernel'], nnx.Param)
  assert out['fc']['kernel'][...].tolist() == expected
  assert out['fc']['bias'][...].tolist() == [5.0, 6.0]
  # The other way round: a plain dict of params, masks as an nnx.State.
  assert masks.apply_mask(nested, opt_masks)['fc']['kernel'].tolist() == (
      expected)
  assert masks.summarize_sparsity(opt_masks)['nnz'] == 2
  # Masks built from an nnx.State are an nnx.State too, and apply to it.
  sp = sparsity.uniform_sparsities(state, sparsity.filter_from_regex('kernel$'), 0.5)
  built = masks.magnitude_mask(state, sp)
  assert isinstance(built, nnx.State)
  out = masks.apply_mask(state, built)
  assert out['fc']['kernel'][...].tolist() == [[0.0, 0.0], [3.0, 4.0]]


def test_apply_mask_refuses_masks_naming_leaves_the_params_lack():
  params = {'params': {'hidden_0': {'kernel': jnp.ones((2, 2))}}}
  m = {'hidden_0': {'kernel': jnp.array([[True, False], [False, True]])}}
  with pytest.raises(ConfigError, match=r'the masks name 1 leaves the params '
                     r'do not have \(hidden_0/kernel\); the params have '
                     r'params/hidden_0/kernel'):
    masks.apply_mask(params, m)


def _drop_grow_case():
  rng = np.random.default_rng(3)
  w = rng.normal(size=(10, 20)).astype(np.float32)
  mask = np.zeros(200, bool)
  mask[rng.permutation(200)[:100]] = True
  mask = mask.reshape(10, 20)
  w = np.where(mask, w, 0.0).astype(np.float32)
  scores = np.abs(w) + 0.1 * rng.random((10, 20)).astype(np.float32)
  return {'w': jnp.asarray(w)}, {'w': jnp.asarray(scores)}, {
      'w': jnp.asarray(mask)}


def test_drop_and_grow_random_exact_counts_under_jit():
  p, sc, m = _drop_grow_case()
  fn = jax.jit(lambda rng, prune, grow: drop_grow.drop_and_grow(
      rng, p, sc, m, prune, grow))
  mask0 = np.asarray(m['w'])
  scores = np.asarray(sc['w'])
  # 100 active of 200: prune to 0.55 keeps 90, grow to 0.5 gives 100.
  new_p, new_m = fn(jax.random.key(1), jnp.float32(0.55), jnp.float32(0.5))
  nm = np.asarray(new_m['w'])
  assert nm.sum() == 100
  active_scores = np.where(mask0, scores, -np.inf).ravel()
  survivors = np.zeros(200, bool)
  survivors[np.argsort(-active_scores)[:90]] = True
  survivors = survivors.reshape(10, 20)
  assert np.all(nm[survivors])
  grown = nm & ~survivors
  assert grown.sum() == 10
  # Grown weights start from zero, dropped weights are zeroed, kept ones
  # keep their value.
  assert np.all(np.asarray(new_p['w'])[grown] == 0)
  assert np.all(np.asarray(new_p['w'])[~nm] == 0)
  assert np.array_equal(np.asarray(new_p['w'])[survivors],
                        np.asarray(p['w'])[survivors])
  # Same traced function, other sparsities: the task-start growth.
  _, m2 = fn(jax.random.key(1), jnp.float32(0.5), jnp.float32(0.45))
  assert int(m2['w'].sum()) == 110
  assert np.all(np.asarray(m2['w'])[mask0])


def test_drop_and_grow_random_growth_depends_on_rng():
  p, sc, m = _drop_grow_case()
  _, a = drop_grow.drop_and_grow(jax.random.key(0), p, sc, m, 0.5, 0.4)
  _, b = drop_grow.drop_and_grow(jax.random.key(5), p, sc, m, 0.5, 0.4)
  assert int(a['w'].sum()) == int(b['w'].sum()) == 120
  assert not np.array_equal(np.asarray(a['w']), np.asarray(b['w']))


def test_drop_and_grow_gradient_growth_picks_largest_gradients():
  p, sc, m = _drop_grow_case()
  g = np.random.default_rng(9).normal(size=(10, 20)).astype(np.float32)
  _, nm = drop_grow.drop_and_grow(jax.random.key(0), p, sc, m, 0.5, 0.45,
                              growth='gradient', grow_scores={'w': g})
  nm = np.asarray(nm['w'])
  mask0 = np.asarray(m['w'])
  assert nm.sum() == 110 and np.all(nm[mask0])
  zero_grads = np.where(mask0, -np.inf, np.abs(g)).ravel()
  expected = np.zeros(200, bool)
  expected[np.argsort(-zero_grads)[:10]] = True
  assert np.array_equal(nm & ~mask0, expected.reshape(10, 20))


def test_drop_and_grow_validation():
  p, sc, m = _drop_grow_case()
  with pytest.raises(ConfigError, match='grow_sparsity'):
    drop_grow.drop_and_grow(jax.random.key(0), p, sc, m, 0.5, 0.6)
  with pytest.raises(ConfigError, match='growth'):
    drop_grow.drop_and_grow(jax.random.key(0), p, sc, m, 0.5, 0.5, growth='x')
  with pytest.raises(ConfigError, match='grow_scores'):
    drop_grow.drop_and_grow(jax.random.key(0), p, sc, m, 0.5, 0.5,
                        growth='gradient')


def test_topk_mask_random_ties_exact():
  scores = jnp.ones((50,))
  a = selection.topk_mask(scores, 7, jax.random.key(0))
  b = selection.topk_mask(scores, 7, jax.random.key(1))
  assert int(a.sum()) == int(b.sum()) == 7
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  # Without a key, ties go to the lower index.
  assert np.flatnonzero(selection.topk_mask(scores, 3)).tolist() == [0, 1, 2]


def test_summarize_sparsity_params_and_masks():
  p = {'hidden_0': {'kernel': jnp.array([[0., 1.], [0., 0.]]),
                    'bias': jnp.array([1., 1.])}}
  s = masks.summarize_sparsity(p)
  assert s['size'] == 6 and s['nnz'] == 3 and s['sparsity'] == 0.5
  assert s['layers']['hidden_0/kernel'] == {'size': 4, 'nnz': 1,
                                            'sparsity': 0.75}
  s = masks.summarize_sparsity(p, sparsity.default_sparse_filter)
  assert list(s['layers']) == ['hidden_0/kernel'] and s['sparsity'] == 0.75
  m = {'hidden_0': {'kernel': jnp.array([True, False, False, False]),
                    'bias': None}}
  assert masks.summarize_sparsity(m)['sparsity'] == 0.75


def test_sparsities_by_path():
  sp = sparsity.uniform_sparsities(_params(), sparsity.default_sparse_filter, 0.5)
  assert sparsity.sparsities_by_path(sp) == {'hidden_0/kernel': 0.5,
                                          'hidden_1/kernel': 0.5}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16,
                                   jnp.int32])
def test_bit_select_gives_the_bits_of_where(dtype):
  rng = np.random.default_rng(3)
  a = rng.normal(size=(7, 9)).astype(np.float32)
  b = rng.normal(size=(7, 9)).astype(np.float32)
  a[0, :3] = [np.nan, -0.0, np.inf]
  b[1, :3] = [-np.inf, -0.0, np.nan]
  a, b = jnp.asarray(a * 100).astype(dtype), jnp.asarray(b * 100).astype(dtype)
  mask = jnp.asarray(rng.random((7, 9)) < 0.5)
  mask = mask.at[0, :3].set(True).at[1, :3].set(False)

  def bits(x):
    return np.asarray(x).view(np.uint8)

  got = masks.bit_select(mask, a, b)
  assert got.dtype == a.dtype
  np.testing.assert_array_equal(bits(got), bits(jnp.where(mask, a, b)))
  np.testing.assert_array_equal(
      bits(masks.bit_select(mask, a)),
      bits(jnp.where(mask, a, jnp.zeros_like(a))))
