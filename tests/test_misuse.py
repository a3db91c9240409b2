"""Misuse of the masking transforms fails loudly, never as a silent no-op."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc
from sparcl_jax.errors import ConfigError


def _cnn_params():
  """A user's model whose layers the default filter does not know."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {'conv': {'kernel': normal(3, 3, 1, 4), 'bias': jnp.zeros((4,))},
          'fc': {'kernel': normal(16, 10), 'bias': jnp.zeros((10,))},
          'out': {'kernel': normal(10, 2), 'bias': jnp.zeros((2,))}}


def test_default_filter_selecting_nothing_raises_at_init():
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.8)  # building alone is fine
  with pytest.raises(ConfigError) as err:
    tx.init(_cnn_params())
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith('tdm: sparse_filter selects no parameter')
  for path in ('conv/kernel', 'fc/kernel', 'out/bias'):
    assert path in message
  assert 'sparse_filter=sc.filter_from_regex(' in message
  with pytest.raises(ConfigError, match='^dgm: sparse_filter selects no '
                     'parameter, so no gradient would be masked'):
    sc.dgm(0.5).init(_cnn_params())
  with pytest.raises(ConfigError, match='no parameter'):
    sc.tdm(optax.sgd(0.1), sparsity=0.8,
           sparse_filter=sc.filter_from_regex('nope')).init(_cnn_params())


def test_sparsities_without_a_sparse_leaf_raise():
  params = _cnn_params()
  none = jax.tree.map(lambda _: None, params)
  with pytest.raises(ConfigError, match='sparsities= marks no leaf sparse'):
    sc.tdm(optax.sgd(0.1), sparsities=none).init(params)


def test_nested_dgm_inherits_tdm_filter():
  params = _cnn_params()
  regex = sc.filter_from_regex(r'(conv|fc)/kernel$')
  # (Its counts after updates: test_tdm's update through all four wrappers.)
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.5, sparse_filter=regex,
              dgm=sc.DGMSpec(0.8))
  state = tx.init(params)
  # The regex makes the model sparse where the default filter raised.
  summary = sc.summarize_sparsity(sc.tdm_masks(state))
  assert summary['nnz'] == sc.keep_count(36, 0.5) + sc.keep_count(160, 0.5)
  assert sc.tdm_masks(state)['out']['kernel'] is None
  gmasks = sc.dgm_masks(state)
  assert (sc.summarize_sparsity(gmasks)['layers'].keys() ==
          summary['layers'].keys() == {'conv/kernel', 'fc/kernel'})
  # Given sparsities=, the nested dgm masks the leaves they make sparse.
  sp = jax.tree.map(lambda _: None, params)
  sp['fc']['kernel'] = 0.5
  tx = sc.tdm(optax.sgd(0.1), sparsities=sp, dgm=sc.DGMSpec(0.8))
  gmasks = sc.dgm_masks(tx.init(params))
  assert sc.summarize_sparsity(gmasks)['layers'].keys() == {'fc/kernel'}
  # A filter of its own wins.
  tx = sc.tdm(optax.sgd(0.1), sparsity=0.5, sparse_filter=regex,
              dgm=sc.DGMSpec(
                  0.8, sparse_filter=sc.filter_from_regex('fc/kernel$')))
  gmasks = sc.dgm_masks(tx.init(params))
  assert sc.summarize_sparsity(gmasks)['layers'].keys() == {'fc/kernel'}


def test_gradient_sparsity_that_cannot_act_raises():
  params = {'hidden_0': {'kernel': jnp.ones((10, 10))}}
  with pytest.raises(ConfigError) as err:
    sc.tdm(optax.sgd(0.1), sparsity=0.9,
           dgm=sc.DGMSpec(0.5)).init(params)
  assert str(err.value) == (
      'tdm: dgm=DGMSpec(0.5) cannot act: it keeps 0.5 of a '
      "layer's whole gradient, no fewer entries than the weight mask keeps "
      'in any layer it masks (at most 0.11 of a layer) and the gradient is '
      'zero outside that mask already; use a gradient_sparsity above 0.89 '
      'or leave dgm out.')
  # The boundary is exact: the mask keeps 11 of 100 weights at a task
  # start (s - extra_growth = 0.89), so dgm(0.89) keeps as many and cannot
  # act, dgm(0.9) keeps 10 and can.
  with pytest.raises(ConfigError, match='cannot act'):
    sc.tdm(optax.sgd(0.1), sparsity=0.9,
           dgm=sc.DGMSpec(0.89)).init(params)
  sc.tdm(optax.sgd(0.1), sparsity=0.9,
         dgm=sc.DGMSpec(0.9)).init(params)
  # A static mask keeps 10 throughout: dgm(0.9) then cannot act.
  static = sc.MaskSchedule(static=True)
  with pytest.raises(ConfigError, match='above 0.9 '):
    sc.tdm(optax.sgd(0.1), sparsity=0.9, schedule=static,
           dgm=sc.DGMSpec(0.9)).init(params)
  sc.tdm(optax.sgd(0.1), sparsity=0.9, schedule=static,
         dgm=sc.DGMSpec(0.91)).init(params)


def test_check_masking_enforces_the_chain_rule():
  params = {'hidden_0': {'kernel': jnp.asarray(
      np.random.default_rng(1).standard_normal((8, 8)), jnp.float32)}}
  # Weight decay after tdm changes what tdm returns: of the 64 weights the
  # task start's mask keeps keep_count(64, 0.49) = 33, and the other 31
  # come back nonzero.
  bad = optax.chain(sc.tdm(optax.sgd(0.1), sparsity=0.5),
                    optax.add_decayed_weights(1e-2))
  with pytest.raises(ConfigError, match=(
      r"^check_masking: after update 1, 31 weights outside tdm's masks are "
      r'nonzero \(hidden_0/kernel: 31\): a transform after tdm')):
    sc.check_masking(bad, params, steps=1)
  # The same decay inside tdm's inner optimizer, and a gradient transform
  # before tdm, keep masked weights at exactly zero (checked after the
  # steps at which tdm updates: MultiSteps' mini-steps apply nothing).
  good = optax.MultiSteps(optax.chain(
      optax.clip_by_global_norm(1.0),
      sc.tdm(optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1)),
             sparsity=0.5)), every_k_schedule=2)
  sc.check_masking(good, params, steps=4)
  with pytest.raises(ConfigError, match='tdm did not update in 1 steps'):
    sc.check_masking(good, params, steps=1)

