"""Tests for sparcl_jax.sparse.tdm (task-aware dynamic masking)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sparcl_jax as sc

from sparcl_jax.errors import ConfigError
from sparcl_jax.sparse import sparsity
from sparcl_jax.sparse.dgm import DGMSpec, dgm, dgm_masks
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import TDMState, tdm, tdm_masks


def _expected_row(epoch):
  if epoch == 0:
    return True, 0.75, 0.74
  if epoch == 45:
    return True, 0.75, 0.75
  if epoch % 5 == 0:
    return True, 0.76, 0.75
  return False, 0.75, 0.75


def test_schedule_table_python_ints():
  sched = MaskSchedule()
  for epoch in range(50):
    assert sched.targets(epoch, 0.75) == _expected_row(epoch), epoch
  # Past the schedule the epoch is read modulo epochs_per_task: epoch 50
  # is the next task's start (it used to freeze the masks silently).
  assert sched.targets(50, 0.75) == (True, 0.75, 0.74)
  assert sched.targets(55, 0.75) == (True, 0.76, 0.75)
  assert sched.targets(101, 0.75) == (False, 0.75, 0.75)


@pytest.mark.parametrize('path', ['epoch_arg', 'steps_per_epoch'])
def test_epoch_past_the_schedule_starts_the_next_task_on_both_paths(path):
  # A global epoch counter given as epoch= and the steps_per_epoch
  # fallback follow one rule: epoch 2 of a 2-epoch schedule is the next
  # task's start, a drop-and-grow (the epoch= path froze the masks).
  params = {'hidden_0': {'kernel': jax.random.normal(jax.random.key(0),
                                                     (20, 20))}}
  grads = jax.tree.map(jnp.ones_like, params)
  sched = MaskSchedule(update_interval=1, epochs_per_task=2)
  tx = tdm(optax.sgd(0.1), sparsity=0.5, schedule=sched, steps_per_epoch=1)
  state = tx.init(params)
  # The params stay fixed (masks only are read): tdm's usage check off.
  where = ((lambda e: dict(epoch=e, step_in_epoch=0, check_usage=False))
           if path == 'epoch_arg' else (lambda e: dict(check_usage=False)))
  for epoch in range(2):
    _, state = tx.update(grads, state, params, **where(epoch))
  before = tdm_masks(state)['hidden_0']['kernel']
  _, state = tx.update(grads, state, params, **where(2))
  after = tdm_masks(state)['hidden_0']['kernel']
  # The task start grows 1% extra: 200 -> 204 of 400 kept.
  assert int(before.sum()) == 200 and int(after.sum()) == 204


def test_schedule_table_traced_matches():
  sched = MaskSchedule()
  upd, prune, grow = jax.jit(jax.vmap(lambda e: sched.targets(e, 0.9)))(
      jnp.arange(50))
  for epoch in range(50):
    u, p, g = _expected_row(epoch)
    assert bool(upd[epoch]) == u
    assert float(prune[epoch]) == pytest.approx(p + 0.15, abs=1e-6)
    assert float(grow[epoch]) == pytest.approx(g + 0.15, abs=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(update_interval=0), 'update_interval'),
    (dict(epochs_per_task=0), 'epochs_per_task'),
    (dict(extra_growth=1.0), 'extra_growth'),
    (dict(swap_fraction=-0.1), 'swap_fraction'),
])
def test_schedule_validation(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    MaskSchedule(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(), 'exactly one'),
    (dict(sparsity=0.5, sparsities={}), 'exactly one'),
    (dict(sparsity=1.0), r'\[0, 1\)'),
    (dict(sparsity=0.5, distribution='lognormal'), 'distribution'),
    (dict(sparsity=0.5, growth='magic'), 'growth'),
    (dict(sparsity=0.5, importance_lambda=-1.0), 'importance_lambda'),
    (dict(sparsity=0.5, steps_per_epoch=0), 'steps_per_epoch'),
])
def test_tdm_validation(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    tdm(optax.sgd(0.1), **kwargs)


def _params():
  rng = np.random.default_rng(0)
  return {
      'hidden_0': {'kernel': jnp.asarray(rng.normal(size=(20, 50)),
                                         jnp.float32),
                   'bias': jnp.zeros((50,), jnp.float32)},
      'head': {'kernel': jnp.asarray(rng.normal(size=(50, 4)), jnp.float32)},
  }


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


SCHED = MaskSchedule(update_interval=2, epochs_per_task=6)
STEPS_PER_EPOCH = 2


def _run(tx, num_tasks=2, check=None):
  """Runs tasks of SCHED.epochs_per_task epochs with fixed fake gradients."""
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step_fn(g, s, p, e, k):
    updates, s = tx.update(g, s, p, epoch=e, step_in_epoch=k)
    return optax.apply_updates(p, updates), s

  step = 0
  for _ in range(num_tasks):
    for epoch in range(SCHED.epochs_per_task):
      for k in range(STEPS_PER_EPOCH):
        grads = _grads(step)
        new_params, new_state = step_fn(grads, state, params, epoch, k)
        if check is not None:
          check(epoch, k, grads, params, state, new_params, new_state)
        params, state = new_params, new_state
        step += 1
  return params, state


def test_tdm_masks_exact_zeros_and_counts_through_schedule():
  tx = tdm(optax.sgd(0.1), sparsity=0.5, schedule=SCHED, seed=3)
  n = 1000
  expected_nnz = {0: 510, 2: 500, 4: 500}  # task start, swap, final
  seen = []

  def check(epoch, k, grads, params, state, new_params, new_state):
    mask = np.asarray(new_state.masks['hidden_0']['kernel'])
    w = np.asarray(new_params['hidden_0']['kernel'])
    # Masked weights are exactly zero after every step.
    assert np.all(w[~mask] == 0.0)
    assert new_state.masks['head']['kernel'] is None
    old = np.asarray(state.masks['hidden_0']['kernel'])
    if k == 0 and epoch in expected_nnz:
      assert mask.sum() == expected_nnz[epoch]
      seen.append(epoch)
      score = np.abs(np.asarray(params['hidden_0']['kernel']))
      if bool(state.has_grads):
        score = score + 0.5 * np.abs(
            np.asarray(state.last_grads['hidden_0']['kernel']))
      keep = sparsity.keep_count(n, {0: 0.5, 2: 0.51, 4: 0.5}[epoch])
      ranked = np.argsort(-np.where(old, score, -np.inf).ravel())[:keep]
      # The highest-importance active weights survive the drop.
      assert np.all(mask.ravel()[ranked])
      survivors = np.zeros(n, bool)
      survivors[ranked] = True
      survivors = survivors.reshape(mask.shape)
      # Grown positions: anything outside the drop survivors, just-dropped
      # weights included.
      grown = mask & ~survivors
      assert grown.sum() == mask.sum() - min(keep, old.sum())
      # Grown weights start from zero: after one SGD step they equal the
      # (masked) update, -lr * g.
      np.testing.assert_allclose(
          w[grown], -0.1 * np.asarray(grads['hidden_0']['kernel'])[grown],
          rtol=1e-6)
    else:
      assert np.array_equal(mask, old)
    # Kept weights get the SGD update of the masked gradient.
    kept = mask & old
    if k == 0 and epoch in expected_nnz:
      kept = mask & survivors
    expect = np.asarray(params['hidden_0']['kernel']) - np.float32(
        0.1) * np.asarray(grads['hidden_0']['kernel'])
    np.testing.assert_allclose(w[kept], expect[kept], rtol=1e-6, atol=1e-7)
    # Dense leaves are updated normally.
    np.testing.assert_allclose(
        np.asarray(new_params['head']['kernel']),
        np.asarray(params['head']['kernel']) - 0.1 * np.asarray(
            grads['head']['kernel']), rtol=1e-6, atol=1e-7)

  _, state = _run(tx, num_tasks=2, check=check)
  assert seen == [0, 2, 4, 0, 2, 4]
  assert int(state.count) == 2 * 6 * STEPS_PER_EPOCH
  assert bool(state.has_grads)


def test_tdm_first_update_uses_weights_only_then_task_aware():
  # lambda large: after the first task, gradients dominate the importance,
  # so the second task's start mask must differ from a |W|-only choice.
  tx = tdm(optax.sgd(0.0), sparsity=0.5, schedule=SCHED,
           importance_lambda=100.0)
  params = _params()
  state = tx.init(params)
  init_mask = np.asarray(state.masks['hidden_0']['kernel'])
  step_fn = jax.jit(lambda g, s, p, e, k: tx.update(
      g, s, p, epoch=e, step_in_epoch=k, check_usage=False))
  # (The params stay fixed, masks only are read: tdm's usage check off.)
  _, state = step_fn(_grads(0), state, params, 0, 0)
  # First update: prune to 0.5 keeps exactly the magnitude mask.
  assert np.all(np.asarray(state.masks['hidden_0']['kernel'])[init_mask])
  last = np.asarray(state.last_grads['hidden_0']['kernel'])
  mask = np.asarray(state.masks['hidden_0']['kernel'])
  np.testing.assert_array_equal(
      last, np.where(mask, np.asarray(_grads(0)['hidden_0']['kernel']), 0))
  # "Next task" start (epoch 0 again) ranks by |W| + 100 |g_last|.
  _, state2 = step_fn(_grads(1), state, params, 0, 0)
  score = np.abs(np.asarray(params['hidden_0']['kernel'])) + 100 * np.abs(
      last)
  keep = np.argsort(-np.where(mask, score, -np.inf).ravel())[:500]
  assert np.all(np.asarray(state2.masks['hidden_0']['kernel']).ravel()[keep])


def test_tdm_with_momentum_and_chain_and_accessor():
  inner = optax.sgd(0.05, momentum=0.9)
  tx = optax.chain(optax.clip_by_global_norm(10.0),
                   tdm(inner, sparsity=0.8, schedule=SCHED))
  params, state = _run(tx, num_tasks=1)
  mask = np.asarray(tdm_masks(state)['hidden_0']['kernel'])
  assert mask.sum() == 200
  w = np.asarray(params['hidden_0']['kernel'])
  assert np.all(w[~mask] == 0) and np.count_nonzero(w) <= 200
  # Momentum is fed masked gradients: positions never active have no trace.
  trace = np.asarray(state[1].inner_state[0].trace['hidden_0']['kernel'])
  assert np.count_nonzero(trace) < trace.size


def test_tdm_accessor_errors():
  with pytest.raises(ValueError, match='found 0'):
    tdm_masks(optax.sgd(0.1).init(_params()))


def test_tdm_counter_fallback_and_missing_extra_args():
  params = _params()
  tx = tdm(optax.sgd(0.1), sparsity=0.5, schedule=SCHED,
           steps_per_epoch=STEPS_PER_EPOCH)
  state = tx.init(params)

  @jax.jit
  def step_fn(g, s, p):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  nnz = []
  for step in range(6):
    params, state = step_fn(_grads(step), state, params)
    nnz.append(int(state.masks['hidden_0']['kernel'].sum()))
  # Epoch 0 grows to 510, epoch 2 (steps 4-5) swaps back to 500.
  assert nnz == [510, 510, 510, 510, 500, 500]
  bad = tdm(optax.sgd(0.1), sparsity=0.5)
  with pytest.raises(ConfigError, match='epoch= and step_in_epoch='):
    bad.update(_grads(0), bad.init(params), params)


def test_tdm_erk_init_counts_and_gradient_growth():
  params = {'hidden_0': {'kernel': jnp.asarray(
      np.random.default_rng(1).normal(size=(40, 40)), jnp.float32)},
            'hidden_1': {'kernel': jnp.asarray(
                np.random.default_rng(2).normal(size=(40, 5)), jnp.float32)}}
  sp = sparsity.erk_sparsities(params, sparsity.default_sparse_filter, 0.8)
  tx = tdm(optax.sgd(0.1), sparsity=0.8, distribution='erk',
           growth='gradient', schedule=SCHED)
  state = tx.init(params)
  for name, n in (('hidden_0', 1600), ('hidden_1', 200)):
    assert int(state.masks[name]['kernel'].sum()) == sparsity.keep_count(
        n, sp[name]['kernel'])
  old = np.asarray(state.masks['hidden_0']['kernel'])
  g = {'hidden_0': {'kernel': jnp.asarray(np.random.default_rng(5).normal(
      size=(40, 40)), jnp.float32)}, 'hidden_1': {'kernel': jnp.ones((40, 5))}}
  _, state = jax.jit(lambda g, s, p: tx.update(
      g, s, p, epoch=0, step_in_epoch=0))(g, state, params)
  new = np.asarray(state.masks['hidden_0']['kernel'])
  s0 = sp['hidden_0']['kernel']
  n_grow = sparsity.keep_count(1600, s0 - 0.01) - sparsity.keep_count(
      1600, s0)
  assert n_grow > 0 and (new & ~old).sum() == n_grow
  zero_g = np.where(old, -np.inf, np.abs(np.asarray(g['hidden_0']['kernel'])))
  expected = np.argsort(-zero_g.ravel())[:n_grow]
  assert np.all(new.ravel()[expected])


def test_tdm_state_is_namedtuple_with_int32_counter():
  state = tdm(optax.sgd(0.1), sparsity=0.5).init(_params())
  assert isinstance(state, TDMState)
  assert state.count.dtype == jnp.int32
  assert state.last_grads['head']['kernel'] is None


def test_static_schedule_never_updates():
  schedule = MaskSchedule(epochs_per_task=10, static=True)
  for epoch in range(10):
    assert schedule.targets(epoch, 0.75) == (False, 0.75, 0.75)
  update, _, _ = schedule.targets(jnp.int32(0), 0.75)
  assert not bool(update)


def _tdm_with_dgm(learning_rate=0.1):
  return tdm(optax.sgd(learning_rate), sparsity=0.5, steps_per_epoch=1,
             dgm=DGMSpec(0.8))


def test_tdm_dgm_is_its_transform_run_as_gradient_masking():
  # dgm=DGMSpec(...) runs spec.transform() where gradient_masking= would:
  # the same updates, bit for bit, over a drop-and-grow and DGM refreshes.
  params = _params()
  only_hidden = lambda path, leaf: path == 'hidden_0/kernel'
  spec = DGMSpec(0.8, refresh_interval=2, sparse_filter=only_hidden)
  a = tdm(optax.sgd(0.1, momentum=0.9), sparsity=0.5, steps_per_epoch=3,
          dgm=spec)
  b = tdm(optax.sgd(0.1, momentum=0.9), sparsity=0.5, steps_per_epoch=3,
          gradient_masking=dgm(0.8, refresh_interval=2,
                               sparse_filter=only_hidden))
  pa, pb = params, params
  sa, sb = a.init(pa), b.init(pb)
  for k in range(7):
    ua, sa = a.update(_grads(k), sa, pa)
    ub, sb = b.update(_grads(k), sb, pb)
    pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
  assert jax.tree.structure((pa, sa)) == jax.tree.structure((pb, sb))
  for x, y in zip(jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb))):
    np.testing.assert_array_equal(x, y)
  assert int(dgm_masks(sa)['hidden_0']['kernel'].sum()) == 200


def test_tdm_takes_tdm_sparse_leaves_only_through_dgm_spec():
  # Two kernels the default filter selects; tdm's sparsities make only
  # hidden_0 sparse. A DGMSpec without a filter masks tdm's sparse leaf; a
  # dgm transform given as gradient_masking= runs as it is, on its own
  # (the default) filter's leaves.
  params = {'hidden_0': {'kernel': jnp.ones((10, 10))},
            'hidden_1': {'kernel': jnp.ones((10, 10))}}
  sp = {'hidden_0': {'kernel': 0.5}, 'hidden_1': {'kernel': None}}
  spec_masks = dgm_masks(tdm(optax.sgd(0.1), sparsities=sp,
                             dgm=DGMSpec(0.8)).init(params))
  assert spec_masks['hidden_1']['kernel'] is None
  assert spec_masks['hidden_0']['kernel'] is not None
  as_given = dgm_masks(tdm(optax.sgd(0.1), sparsities=sp,
                           gradient_masking=dgm(0.8)).init(params))
  assert as_given['hidden_1']['kernel'] is not None


@pytest.mark.parametrize('kwargs,match', [
    (dict(dgm=dgm(0.8)), r'tdm dgm= takes a DGMSpec .*got a '
                         r'GradientTransformationExtraArgs'),
    (dict(dgm=DGMSpec(0.8), gradient_masking=optax.identity()),
     'tdm takes dgm= or gradient_masking=, not both'),
])
def test_tdm_dgm_argument_misuse(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    tdm(optax.sgd(0.1), sparsity=0.5, **kwargs)


_LABELS = {'hidden_0': {'kernel': 'sparse', 'bias': 'dense'},
           'head': {'kernel': 'dense'}}


@pytest.mark.parametrize('wrap', [
    lambda: optax.chain(optax.clip(1.0), _tdm_with_dgm()),
    lambda: optax.multi_transform(
        {'sparse': _tdm_with_dgm(), 'dense': optax.sgd(0.1)}, _LABELS),
    lambda: optax.inject_hyperparams(_tdm_with_dgm)(learning_rate=0.1),
    lambda: optax.MultiSteps(_tdm_with_dgm(), every_k_schedule=2),
], ids=['chain', 'multi_transform', 'inject_hyperparams', 'MultiSteps'])
def test_accessors_find_the_state_inside_optax_wrappers(wrap):
  state = wrap().init(_params())
  masks = tdm_masks(state)
  assert int(masks['hidden_0']['kernel'].sum()) == 500
  assert masks['head']['kernel'] is None
  assert masks['hidden_0']['bias'] is None
  # A fresh DGM state keeps what a refresh keeps: 20% of 1000.
  assert int(dgm_masks(state)['hidden_0']['kernel'].sum()) == 200
  assert dgm_masks(state)['head']['kernel'] is None


def test_tdm_and_dgm_update_inside_all_four_wrappers():
  # tdm+dgm in a chain, under inject_hyperparams, under MultiSteps, as one
  # group of a multi_transform: one compile covers every wrapper's update.
  inner = optax.MultiSteps(optax.inject_hyperparams(
      lambda learning_rate: optax.chain(optax.clip(10.0), _tdm_with_dgm(
          learning_rate)))(learning_rate=0.1), every_k_schedule=1)
  tx = optax.multi_transform({'sparse': inner, 'dense': optax.sgd(0.1)},
                             _LABELS)
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  sgd_step = jax.jit(lambda p, g: optax.apply_updates(
      p, optax.sgd(0.1).update(g, optax.sgd(0.1).init(p), p)[0]))
  for k in range(2):
    new_params, state = step(params, state, _grads(k))
    mask = np.asarray(tdm_masks(state)['hidden_0']['kernel'])
    # The task start grows to s - 0.01: keep_count(1000, 0.49).
    assert mask.sum() == 510
    w = np.asarray(new_params['hidden_0']['kernel'])
    assert np.all(w[~mask] == 0.0) and np.count_nonzero(w) <= 510
    kept = np.asarray(dgm_masks(state)['hidden_0']['kernel'])
    assert kept.sum() == 200 and not np.any(kept & ~mask)
    # The dense group is plain SGD, untouched by the masks.
    np.testing.assert_array_equal(
        np.asarray(new_params['head']['kernel']),
        np.asarray(sgd_step(params['head'], _grads(k)['head'])['kernel']))
    params = new_params
  assert tdm_masks(state)['head']['kernel'] is None


def _mlp_params():
  key = jax.random.key(0)
  return {"hidden_0": {"kernel": jax.random.normal(key, (20, 10)),
                       "bias": jnp.zeros(10)}}


def _loss(params, x):
  return jnp.sum((x @ params["hidden_0"]["kernel"]) ** 2)


def test_a_transform_chained_after_tdm_fails_the_next_update():
  params = _mlp_params()
  tx = optax.chain(sc.tdm(optax.sgd(0.1), sparsity=0.75),
                   optax.add_decayed_weights(1e-4))
  state = tx.init(params)
  x = jnp.ones((4, 20))

  @jax.jit
  def step(params, state, epoch, step_in_epoch):
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params, epoch=epoch,
                               step_in_epoch=step_in_epoch)
    return optax.apply_updates(params, updates), state

  params, state = step(params, state, 0, 0)  # dense start: zeroed here
  masks = sc.tdm_masks(state)["hidden_0"]["kernel"]
  stray = int(((params["hidden_0"]["kernel"] != 0) & ~masks).sum())
  # 200 - 50 kept - 2 grown back (1% at a task start): decay moved every
  # masked weight off zero.
  assert stray == 200 - int(masks.sum()) == 148
  with pytest.raises(Exception, match=r"tdm: 148 weights outside its masks "
                     r"were nonzero.*inside tdm"):
    jax.block_until_ready(step(params, state, 0, 1))


def test_the_same_chain_with_decay_inside_tdm_passes_and_stays_masked():
  params = _mlp_params()
  tx = sc.tdm(optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1)),
              sparsity=0.75)
  state = tx.init(params)
  x = jnp.ones((4, 20))
  for s in range(3):
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params, epoch=0, step_in_epoch=s)
    params = optax.apply_updates(params, updates)
  masks = sc.tdm_masks(state)["hidden_0"]["kernel"]
  assert int(((params["hidden_0"]["kernel"] != 0) & ~masks).sum()) == 0


def test_a_mini_batch_count_under_multisteps_fails_with_what_to_pass():
  params = _mlp_params()
  tx = optax.MultiSteps(sc.tdm(optax.sgd(0.1), sparsity=0.75),
                        every_k_schedule=2)
  state = tx.init(params)
  x = jnp.ones((4, 20))
  with pytest.raises(Exception, match=r"epoch 0 began at step_in_epoch=1.*"
                     r"MultiSteps\(every_k_schedule=k\), pass "
                     r"step_in_epoch=mini_batch // k"):
    for mini_batch in range(4):  # counts mini-batches: tdm sees 1, 3
      grads = jax.grad(_loss)(params, x)
      updates, state = tx.update(grads, state, params, epoch=0,
                                 step_in_epoch=mini_batch)
      params = jax.block_until_ready(optax.apply_updates(params, updates))


def test_update_counts_under_multisteps_drop_and_grow_at_each_epoch():
  params = _mlp_params()
  schedule = sc.MaskSchedule(update_interval=1, epochs_per_task=4)
  tx = optax.MultiSteps(sc.tdm(optax.sgd(0.1), sparsity=0.75,
                               schedule=schedule), every_k_schedule=2)
  state = tx.init(params)
  x = jnp.ones((4, 20))
  seen = []
  for epoch in range(2):
    for mini_batch in range(4):
      grads = jax.grad(_loss)(params, x)
      updates, state = tx.update(grads, state, params, epoch=epoch,
                                 step_in_epoch=mini_batch // 2)
      params = optax.apply_updates(params, updates)
    seen.append(np.asarray(sc.tdm_masks(state)["hidden_0"]["kernel"]))
  assert (seen[0] != seen[1]).any()  # the second epoch dropped and grew
