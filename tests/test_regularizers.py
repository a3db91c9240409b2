"""Tests for the EWC and SI regularisers against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax import regularizers as reg
from sparcl_jax.errors import ConfigError


def _tree(w, b):
  return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def test_ewc_penalty_zero_before_consolidation():
  params = _tree([1.0, 2.0], [3.0])
  assert float(reg.ewc_penalty(params, reg.ewc_init(params), 5.0)) == 0.0


def test_ewc_per_task_sum_matches_hand_computation():
  state = reg.ewc_init(_tree([0.0, 0.0], [0.0]))
  state = reg.ewc_consolidate(state, _tree([1.0, 2.0], [0.5]),
                              _tree([1.0, 2.0], [4.0]))
  current = _tree([2.0, 0.0], [1.5])
  # diff = [1, -2], [1]: 1*1 + 2*4 + 4*1 = 13; lam/2 = 1.
  assert float(reg.ewc_penalty(current, state, 2.0)) == pytest.approx(13.0)
  state = reg.ewc_consolidate(state, _tree([2.0, 2.0], [0.0]),
                              _tree([1.0, 1.0], [0.0]))
  assert state.fisher["w"].shape == (2, 2)
  # second task adds 1*0 + 1*4 + 0 = 4.
  assert float(reg.ewc_penalty(current, state, 2.0)) == pytest.approx(17.0)


def test_ewc_merged_slot_has_the_per_task_gradient():
  tasks = [(_tree([1.0, 2.0], [0.5]), _tree([1.0, 2.0], [4.0])),
           (_tree([2.0, 2.0], [0.0]), _tree([1.0, 1.0], [0.0]))]
  per_task = merged = reg.ewc_init(_tree([0.0, 0.0], [0.0]))
  for anchor, fisher in tasks:
    per_task = reg.ewc_consolidate(per_task, anchor, fisher)
    merged = reg.ewc_consolidate(merged, anchor, fisher, merged=True)
  assert merged.fisher["w"].shape == (1, 2)
  # F = [2, 3], [4]; anchor = Fisher-weighted mean [(1 + 2) / 2, (4 + 2) / 3].
  np.testing.assert_array_equal(merged.fisher["w"], [[2.0, 3.0]])
  np.testing.assert_array_equal(merged.anchor["w"], [[1.5, 2.0]])
  np.testing.assert_array_equal(merged.anchor["b"], [[0.5]])
  current = _tree([2.0, 0.0], [1.5])
  grad = lambda state: jax.grad(reg.ewc_penalty)(current, state, 2.0)
  # lam * sum_t F_t (p - a_t) = 2 * ([1 + 0, -4 - 2], [4 + 0]).
  for g in (grad(per_task), grad(merged)):
    np.testing.assert_array_equal(g["w"], [2.0, -12.0])
    np.testing.assert_array_equal(g["b"], [8.0])
  # The penalties differ by a constant only (17 against 16.5 here).
  assert float(reg.ewc_penalty(current, merged, 2.0)) == pytest.approx(16.5)
  with pytest.raises(ConfigError, match="online or merged"):
    reg.ewc_consolidate(merged, current, current, online=True, merged=True)


def test_ewc_online_merges_fisher_and_moves_anchor():
  state = reg.ewc_init(_tree([0.0, 0.0], [0.0]))
  state = reg.ewc_consolidate(state, _tree([1.0, 2.0], [0.5]),
                              _tree([1.0, 2.0], [4.0]), online=True)
  state = reg.ewc_consolidate(state, _tree([2.0, 2.0], [0.0]),
                              _tree([1.0, 1.0], [0.0]), online=True,
                              gamma=0.5)
  np.testing.assert_array_equal(state.fisher["w"], [[1.5, 2.0]])
  np.testing.assert_array_equal(state.fisher["b"], [[2.0]])
  np.testing.assert_array_equal(state.anchor["w"], [[2.0, 2.0]])
  # F = [1.5, 2], [2]; diff = [0, -2], [1.5]: 0 + 8 + 4.5 = 12.5.
  current = _tree([2.0, 0.0], [1.5])
  assert float(reg.ewc_penalty(current, state, 2.0)) == pytest.approx(12.5)


def _quadratic_ll(p, x, y):
  return jnp.mean(-0.5 * jnp.square(p["w"] * x - y))


def test_fisher_per_example_and_per_batch():
  params = {"w": jnp.asarray(1.0)}
  x = jnp.asarray([1.0, 2.0, 3.0])
  y = jnp.zeros(3)
  # per-example gradients -x^2 = -1, -4, -9.
  per_ex = reg.fisher_diagonal(_quadratic_ll, params, x, y, batch_size=2)
  assert float(per_ex["w"]) == pytest.approx(98.0 / 3.0)
  # batch means -2.5 and -9: (6.25 + 81) / 2.
  per_batch = reg.fisher_diagonal(_quadratic_ll, params, x, y,
                                  mode="per_batch", batch_size=2)
  assert float(per_batch["w"]) == pytest.approx(43.625)


def test_si_path_integral_importance_and_penalty():
  state = reg.si_init(jnp.asarray([0.0, 1.0]))
  state = reg.si_accumulate(state, jnp.asarray([1.0, -2.0]),
                            jnp.asarray([0.0, 1.0]), jnp.asarray([-0.5, 2.0]))
  np.testing.assert_allclose(state.omega, [0.5, 2.0])
  state = reg.si_accumulate(state, jnp.asarray([0.5, 0.0]),
                            jnp.asarray([-0.5, 2.0]), jnp.asarray([-1.0, 2.0]))
  np.testing.assert_allclose(state.omega, [0.75, 2.0])
  state = reg.si_consolidate(state, jnp.asarray([-1.0, 2.0]), xi=0.5)
  # Delta = [-1, 1]: Omega = [0.75 / 1.5, 2 / 1.5].
  np.testing.assert_allclose(state.importance, [0.5, 4.0 / 3.0], rtol=1e-6)
  np.testing.assert_array_equal(state.omega, [0.0, 0.0])
  np.testing.assert_array_equal(state.anchor, [-1.0, 2.0])
  penalty = reg.si_penalty(jnp.asarray([0.0, 0.0]), state, 3.0)
  assert float(penalty) == pytest.approx(3.0 * (0.5 * 1 + 4.0 / 3.0 * 4))


def test_regularizers_run_inside_jit():
  params = _tree([1.0, 2.0], [0.5])
  ewc = reg.ewc_consolidate(reg.ewc_init(params), params,
                            _tree([1.0, 1.0], [1.0]))
  si = reg.si_init(params)

  @jax.jit
  def step(p, si, ewc):
    grads = jax.grad(lambda q: reg.ewc_penalty(q, ewc, 2.0)
                     + reg.si_penalty(q, si, 1.0))(p)
    new = jax.tree.map(lambda a, g: a - 0.5 * g, p, grads)
    return new, reg.si_accumulate(si, grads, p, new)

  shifted = _tree([2.0, 2.0], [0.5])
  new, si = step(shifted, si, ewc)
  # EWC grad = lam * F * diff = [2, 0], [0]; the SI importance is still zero.
  np.testing.assert_allclose(new["w"], [1.0, 2.0])
  # omega = -g * delta = -2 * -1 = 2 on w[0].
  np.testing.assert_allclose(si.omega["w"], [2.0, 0.0])


@pytest.mark.parametrize("call", [
    lambda p, s: reg.ewc_penalty(p, reg.ewc_init(p), -1.0),
    lambda p, s: reg.si_penalty(p, s, -0.1),
    lambda p, s: reg.si_consolidate(s, p, xi=0.0),
    lambda p, s: reg.ewc_consolidate(reg.ewc_init(p), p, p, gamma=1.5),
    lambda p, s: reg.fisher_diagonal(_quadratic_ll, p, jnp.ones(2),
                                     jnp.ones(2), mode="exact"),
])
def test_bad_hyperparameters_raise_config_error(call):
  params = _tree([1.0], [1.0])
  with pytest.raises(ConfigError):
    call(params, reg.si_init(params))
