"""Tests for sparcl_jax.sparse.rules and tdm's drop_score/grow_score."""

from __future__ import annotations

import functools
import pkgutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparcl_jax.sparse import rules
from sparcl_jax.sparse.drop_grow import drop_and_grow_by_scores
from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse.rules.gradient_growth import gradient_growth
from sparcl_jax.sparse.rules.importance import importance_drop
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import tdm, tdm_masks

SCHED = MaskSchedule(update_interval=2, epochs_per_task=6)


def test_every_module_of_the_package_is_imported_with_it():
  for module in pkgutil.iter_modules(rules.__path__):
    assert f'sparcl_jax.sparse.rules.{module.name}' in sys.modules


def test_shipped_rules_are_registered_by_name():
  assert {'importance', 'magnitude'} <= set(rules.drop_score_names())
  assert {'random', 'gradient'} <= set(rules.grow_score_names())
  assert rules.drop_score('importance') is importance_drop
  assert rules.grow_score('gradient') is gradient_growth
  assert list(rules.grow_score_names()) == sorted(
      rules.grow_score_names())


def test_unknown_names_raise_a_one_line_config_error_listing_known_ones():
  with pytest.raises(ConfigError) as info:
    rules.grow_score('magic')
  message = str(info.value)
  assert '\n' not in message and "'magic'" in message
  assert all(name in message for name in rules.grow_score_names())
  with pytest.raises(ConfigError, match='importance'):
    rules.drop_score('magic')


def test_registering_a_taken_name_fails_and_a_new_one_is_found():
  with pytest.raises(ValueError, match='already registered'):
    rules.register_grow_score('gradient')(lambda inputs: None)

  @rules.register_drop_score('test_only_random_drop')
  def random_drop(inputs):
    del inputs
    return None

  try:
    assert rules.drop_score('test_only_random_drop') is random_drop
    assert 'test_only_random_drop' in rules.drop_score_names()
  finally:
    del rules._RULES['drop']['test_only_random_drop']  # pylint: disable=protected-access


def _inputs(**changes):
  w = jnp.array([0.5, -4.0, 1.0, 0.0, 0.0, 0.0])
  fields = dict(params={'w': w, 'b': jnp.ones(2)},
                grads={'w': jnp.array([9., 9., 9., 0.5, -7., 2.]),
                       'b': jnp.ones(2)},
                last_grads={'w': jnp.array([2., 0., -1., 0., 0., 0.]),
                            'b': None},
                has_grads=jnp.bool_(True),
                masks={'w': w != 0, 'b': None}, rng=jax.random.key(0))
  fields.update(changes)
  return rules.ScoreInputs(**fields)


def test_shipped_score_functions_by_hand():
  inputs = _inputs()
  np.testing.assert_array_equal(
      importance_drop(inputs, importance_lambda=0.5)['w'],
      [1.5, 4.0, 1.5, 0.0, 0.0, 0.0])
  no_grads = importance_drop(_inputs(has_grads=jnp.bool_(False)))
  np.testing.assert_array_equal(no_grads['w'], [0.5, 4., 1., 0., 0., 0.])
  assert importance_drop(inputs)['b'] is None
  np.testing.assert_array_equal(
      rules.drop_score('magnitude')(inputs)['w'],
      [0.5, 4., 1., 0., 0., 0.])
  np.testing.assert_array_equal(gradient_growth(inputs)['w'],
                                [9., 9., 9., 0.5, 7., 2.])
  assert rules.grow_score('random')(inputs) is None


def test_engine_ranks_drop_and_grow_scores_highest_first():
  inputs = _inputs()
  # Keep 2 of the 3 active weights (0, 1, 2), then grow to 4: the drop
  # keeps the two highest scores (4.0 at 1, 1.5 at 0); growth takes the
  # largest |g| among the other positions.
  kept, new = drop_and_grow_by_scores(
      jax.random.key(3), inputs.masks, {'w': 2, 'b': None},
      {'w': 4, 'b': None},
      drop_scores={'w': jnp.array([1.5, 4., 1., 0., 0., 0.]), 'b': None},
      grow_scores=gradient_growth(inputs))
  np.testing.assert_array_equal(kept['w'], [1, 1, 0, 0, 0, 0])
  # Position 2 (just dropped, |g| = 9) and 4 (|g| = 7) grow.
  np.testing.assert_array_equal(new['w'], [1, 1, 1, 0, 1, 0])
  assert kept['b'] is None and new['b'] is None


def test_engine_without_scores_is_random_with_exact_counts():
  masks = {'w': jnp.arange(100) < 40}
  draws = set()
  for seed in range(4):
    kept, new = drop_and_grow_by_scores(jax.random.key(seed), masks,
                                        {'w': 30}, {'w': 45})
    kept, new = np.asarray(kept['w']), np.asarray(new['w'])
    assert kept.sum() == 30 and new.sum() == 45
    assert np.all(kept <= np.asarray(masks['w'])) and np.all(kept <= new)
    draws.add(new.tobytes())
  assert len(draws) == 4


def _params():
  rng = np.random.default_rng(0)
  return {'hidden_0': {'kernel': jnp.asarray(rng.normal(size=(20, 30)),
                                             jnp.float32),
                       'bias': jnp.zeros((30,), jnp.float32)},
          'head': {'kernel': jnp.asarray(rng.normal(size=(30, 4)),
                                         jnp.float32)}}


def _run(tx, steps=14):
  """Final params and masks of a short run with fixed fake gradients."""
  params = _params()
  state = tx.init(params)
  step = jax.jit(lambda g, s, p, e, k: tx.update(g, s, p, epoch=e,
                                                 step_in_epoch=k))
  for t in range(steps):
    rng = np.random.default_rng(100 + t)
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, state = step(grads, state, params, t // 2 % 6, t % 2)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, (params, tdm_masks(state)))


def _assert_same_run(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('growth', ['random', 'gradient'])
def test_tdm_growth_keyword_equals_grow_score_by_name_and_function(growth):
  base = functools.partial(tdm, optax.sgd(0.1), sparsity=0.6, schedule=SCHED,
                           seed=2)
  by_growth = _run(base(growth=growth, importance_lambda=0.3))
  by_name = _run(base(grow_score=growth, importance_lambda=0.3))
  by_fn = _run(base(
      grow_score=rules.grow_score(growth),
      drop_score=functools.partial(importance_drop, importance_lambda=0.3)))
  _assert_same_run(by_growth, by_name)
  _assert_same_run(by_growth, by_fn)


def test_tdm_defaults_are_importance_half_and_random_growth():
  base = functools.partial(tdm, optax.sgd(0.1), sparsity=0.6, schedule=SCHED)
  _assert_same_run(_run(base()),
                   _run(base(importance_lambda=0.5, growth='random')))
  _assert_same_run(_run(base()),
                   _run(base(drop_score='importance', grow_score='random')))


def test_tdm_magnitude_drop_equals_zero_lambda():
  base = functools.partial(tdm, optax.sgd(0.1), sparsity=0.6, schedule=SCHED,
                           growth='gradient')
  _assert_same_run(_run(base(importance_lambda=0.0)),
                   _run(base(drop_score='magnitude')))


def test_tdm_calls_a_custom_grow_rule_with_the_step_inputs():
  seen = []

  def last_positions_first(inputs):
    seen.append(inputs)
    return jax.tree.map(
        lambda m: None if m is None else jnp.arange(m.size, dtype=jnp.float32
                                                    ).reshape(m.shape),
        inputs.masks, is_leaf=lambda x: x is None)

  params = {'hidden_0': {'kernel': jnp.arange(1., 11.).reshape(2, 5)}}
  tx = tdm(optax.sgd(0.0), sparsity=0.5, grow_score=last_positions_first,
           drop_score='magnitude',
           schedule=MaskSchedule(update_interval=1, epochs_per_task=3,
                                 extra_growth=0.2))
  state = tx.init(params)
  grads = {'hidden_0': {'kernel': jnp.full((2, 5), 2.)}}
  _, state = tx.update(grads, state, params, epoch=0, step_in_epoch=0)
  # The init keeps the 5 largest weights (positions 5..9); the task start
  # keeps them and grows 2 more (sparsity 0.5 - 0.2), the highest-scored
  # zero positions: 4 and 3.
  np.testing.assert_array_equal(
      tdm_masks(state)['hidden_0']['kernel'].ravel(),
      [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
  assert len(seen) == 1
  np.testing.assert_array_equal(seen[0].grads['hidden_0']['kernel'],
                                grads['hidden_0']['kernel'])


@pytest.mark.parametrize('kwargs,match', [
    (dict(growth='random', grow_score='random'), 'not both'),
    (dict(importance_lambda=0.5, drop_score='magnitude'), 'not both'),
    (dict(grow_score='magic'), 'Unknown grow score'),
    (dict(drop_score='magic'), 'Unknown drop score'),
    (dict(grow_score=3), 'grow_score must be a rule name or a function'),
    (dict(growth='magic'), 'growth'),
])
def test_tdm_rule_keyword_validation(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    tdm(optax.sgd(0.1), sparsity=0.5, **kwargs)


def test_mask_growth_flag_picks_a_registered_rule_by_name():
  from sparcl_jax.training import optimizers  # pylint: disable=import-outside-toplevel
  from sparcl_jax.training.config import RunConfig, validate  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match=r"^--mask_growth: Unknown grow "
                     r"score 'nope'; known: .*sampled_gradient"):
    validate(RunConfig(workdir="/unused", method="sparcl_derpp",
                       mask_growth="nope"))
  # SparCL-DER++ with gradient growth and a magnitude-only drop is RigL's
  # optimizer: the same masks after a task-start drop-and-grow.
  params = {"hidden_0": {"kernel": jax.random.normal(jax.random.key(0),
                                                     (20, 10))}}
  grads = {"hidden_0": {"kernel": jax.random.normal(jax.random.key(1),
                                                    (20, 10))}}
  masks = []
  for changes in (dict(method="sparcl_derpp", mask_growth="gradient",
                       importance_lambda=0.0, dgm=False),
                  dict(method="rigl_derpp"), dict(method="sparcl_derpp",
                                                  dgm=False,
                                                  importance_lambda=0.0)):
    config = validate(RunConfig(workdir="/unused", epochs=2, **changes))
    tx = optimizers.make_optimizer(config)
    state = tx.init(params)
    # The params stay fixed (masks only are read): tdm's usage check off.
    _, state = tx.update(grads, state, params, epoch=0, step_in_epoch=0,
                         check_usage=False)
    _, state = tx.update(grads, state, params, epoch=1, step_in_epoch=0,
                         check_usage=False)
    masks.append(np.asarray(tdm_masks(state)["hidden_0"]["kernel"]))
  np.testing.assert_array_equal(masks[0], masks[1])
  # Random growth (the flag left empty) grows elsewhere.
  assert not np.array_equal(masks[0], masks[2])
