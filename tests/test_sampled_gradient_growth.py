"""Tests for the 'sampled_gradient' grow rule (GSE-style growth)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparcl_jax.sparse import rules
from sparcl_jax.sparse.drop_grow import drop_and_grow_by_scores
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.rules.sampled_gradient import sampled_gradient_growth
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import tdm, tdm_masks

# |g| is distinct at every zero position, so the ranking is known by hand.
GRADS = jnp.array([0.5, -3.0, 2.0, 0.25, -1.0, 8.0, 8.0, 8.0, 8.0, 8.0])
MASK = jnp.arange(10) >= 5


def _inputs(rng, grads=GRADS, mask=MASK):
  return rules.ScoreInputs(
      params={'w': jnp.zeros_like(grads)}, grads={'w': grads},
      last_grads=None, has_grads=jnp.bool_(False), masks={'w': mask},
      rng=rng)


def test_registered_by_name():
  assert 'sampled_gradient' in rules.grow_score_names()
  assert rules.grow_score('sampled_gradient') is sampled_gradient_growth


def test_full_and_empty_subsets_by_hand():
  inputs = _inputs(jax.random.key(0))
  np.testing.assert_array_equal(
      sampled_gradient_growth(inputs, subset_fraction=1.0)['w'],
      [0.5, 3.0, 2.0, 0.25, 1.0, 8.0, 8.0, 8.0, 8.0, 8.0])
  np.testing.assert_array_equal(
      sampled_gradient_growth(inputs, subset_fraction=0.0)['w'],
      np.full(10, -1.0))


def test_subset_is_a_bernoulli_sample_that_changes_with_the_key():
  grads = jnp.linspace(1.0, 2.0, 20000)
  mask = jnp.zeros(20000, bool)
  subsets = []
  for seed in (0, 1):
    scores = np.asarray(sampled_gradient_growth(
        _inputs(jax.random.key(seed), grads, mask), subset_fraction=0.3)['w'])
    sampled = scores >= 0
    # In the subset the score is |g| exactly, elsewhere -1.
    np.testing.assert_array_equal(scores[sampled], np.asarray(grads)[sampled])
    assert np.all(scores[~sampled] == -1.0)
    assert 0.28 < sampled.mean() < 0.32
    subsets.append(sampled)
  assert (subsets[0] != subsets[1]).any()


def test_grows_the_largest_gradients_inside_the_subset():
  # Keep the 5 active weights, grow 2 of the zero positions 0..4.
  for seed in range(6):
    scores = sampled_gradient_growth(_inputs(jax.random.key(seed)),
                                     subset_fraction=0.5)
    in_subset = [i for i in range(5) if scores['w'][i] >= 0]
    _, new = drop_and_grow_by_scores(
        jax.random.key(seed), {'w': MASK}, {'w': 5}, {'w': 7},
        drop_scores={'w': jnp.arange(10.)}, grow_scores=scores)
    grown = set(np.flatnonzero(np.asarray(new['w'])[:5]).tolist())
    # By hand, |g| at 0..4 ranks 1 (3.0), 2 (2.0), 4 (1.0), 0 (0.5), 3.
    by_gradient = [i for i in (1, 2, 4, 0, 3) if i in in_subset]
    assert set(by_gradient[:2]) <= grown and len(grown) == 2
    if len(by_gradient) < 2:
      # Too small a subset: the remaining slot is drawn outside it.
      assert len(grown - set(in_subset)) == 2 - len(by_gradient)


def _tdm_first_update(grow_score, seed=0):
  """Masks after TDM's task-start update on a 2x5 kernel."""
  params = {'hidden_0': {'kernel': jnp.arange(1., 11.).reshape(2, 5)}}
  grads = {'hidden_0': {'kernel': GRADS.reshape(2, 5)}}
  tx = tdm(optax.sgd(0.0), sparsity=0.5, grow_score=grow_score, seed=seed,
           schedule=MaskSchedule(update_interval=1, epochs_per_task=3,
                                 extra_growth=0.2))
  state = tx.init(params)
  _, state = tx.update(grads, state, params, epoch=0, step_in_epoch=0)
  return np.asarray(tdm_masks(state)['hidden_0']['kernel']).ravel()


def test_tdm_with_a_full_subset_grows_the_hand_picked_positions():
  # The initial mask keeps the 5 largest weights (positions 5..9); the task
  # start keeps them and grows 2 (sparsity 0.5 -> 0.3): the zero positions
  # with the largest |g|, 1 (3.0) and 2 (2.0).
  full = functools.partial(sampled_gradient_growth, subset_fraction=1.0)
  np.testing.assert_array_equal(_tdm_first_update(full),
                                [0, 1, 1, 0, 0, 1, 1, 1, 1, 1])


def test_tdm_with_an_empty_subset_is_random_growth():
  empty = functools.partial(sampled_gradient_growth, subset_fraction=0.0)
  for seed in range(3):
    np.testing.assert_array_equal(_tdm_first_update(empty, seed),
                                  _tdm_first_update('random', seed))


def test_tdm_uses_the_rule_by_name():
  default = functools.partial(sampled_gradient_growth, subset_fraction=0.5)
  differs_from_random = False
  for seed in range(3):
    by_name = _tdm_first_update('sampled_gradient', seed)
    np.testing.assert_array_equal(by_name, _tdm_first_update(default, seed))
    assert by_name.sum() == 7 and by_name[5:].all()
    differs_from_random |= bool(
        (by_name != _tdm_first_update('random', seed)).any())
  assert differs_from_random


def test_rejects_a_fraction_outside_the_unit_interval():
  with pytest.raises(ConfigError, match='subset_fraction'):
    sampled_gradient_growth(_inputs(jax.random.key(0)), subset_fraction=1.5)
