"""The fast paths give exactly the results of the plain ones.

Covers the radix selection of ``selection.rank_mask`` (against a full
``lax.sort``), TDM/DGM's ``mask_events``/``record_grads`` extra args, and
the train chunk that picks update variants per step (against calling the
optimizer as built on every step).
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparcl_jax.sparse import masks as masks_lib
from sparcl_jax.sparse import selection
from sparcl_jax.sparse.dgm import DGMSpec, dgm, dgm_masks
from sparcl_jax.sparse.schedule import MaskSchedule
from sparcl_jax.sparse.tdm import tdm, tdm_masks
from sparcl_jax.training import optimizers, steps
from sparcl_jax.training.config import RunConfig, validate


def _sorted_selection(sort_keys, count):
  """Reference: the first ``count`` positions of a stable multi-key sort."""
  n = sort_keys[0].size
  operands = [selection._ordinal(k).reshape(-1) for k in sort_keys]  # pylint: disable=protected-access
  operands.append(jnp.arange(n, dtype=jnp.int32))
  order = jax.lax.sort(operands, num_keys=len(operands))[-1]
  chosen = np.zeros(n, bool)
  chosen[np.asarray(order)[:max(0, min(count, n))]] = True
  return chosen.reshape(sort_keys[0].shape)


def _awkward_floats(rng, shape):
  """Many exact ties, NaNs, signed zeros and infinities."""
  values = rng.integers(-3, 4, size=shape).astype(np.float32) * 0.5
  noise = rng.normal(size=shape).astype(np.float32)
  values = np.where(rng.random(shape) < 0.2, noise, values)
  values[rng.random(shape) < 0.1] = np.nan
  values[rng.random(shape) < 0.1] = -0.0
  values[rng.random(shape) < 0.05] = -np.inf
  return values


# (130, 300) spans two whole histogram blocks of selection._BLOCK positions and
# a partial one, so the blocked loop and its tail are both checked.
@pytest.mark.parametrize("shape", [(13, 17), (130, 300)])
@pytest.mark.parametrize("structure", ["float", "bool_float_bits", "int"])
def test_rank_mask_equals_a_full_sort(structure, shape):
  rng = np.random.default_rng(7)
  n = shape[0] * shape[1]
  assert shape == (13, 17) or n > 2 * selection._BLOCK  # pylint: disable=protected-access
  if structure == "float":
    keys = [jnp.asarray(_awkward_floats(rng, shape))]
  elif structure == "bool_float_bits":
    keys = [jnp.asarray(rng.random(shape) < 0.4),
            jnp.asarray(_awkward_floats(rng, shape)),
            jnp.asarray(rng.integers(0, 5, size=shape), jnp.uint32)]
  else:
    keys = [jnp.asarray(rng.integers(-70000, 90000, size=shape), jnp.int32)]
  for count in (0, 1, 2, 57, 110, n // 2, n - 1, n, n + 3, -2):
    got = np.asarray(selection.rank_mask(keys, jnp.int32(count)))
    assert got.sum() == min(max(count, 0), n)
    np.testing.assert_array_equal(got, _sorted_selection(keys, count))


def test_rank_mask_resolves_ties_in_the_last_digit_by_index():
  # Values sharing the high 16 bits and differing in the low ones, plus
  # exact ties at the threshold: the radix path's both digits and the
  # index tie-break decide.
  base = np.float32(1.0).view(np.uint32)
  bits = (base + np.array([5, 3, 3, 3, 9, 0, 3, 7], np.uint32)).view(
      np.float32)
  got = selection.rank_mask([jnp.asarray(bits)], 3)
  np.testing.assert_array_equal(
      np.asarray(got), [False, True, True, False, False, True, False, False])


def _leaf_params(seed):
  keys = jax.random.split(jax.random.key(seed), 2)
  return {"hidden_0": {"kernel": jax.random.normal(keys[0], (6, 8))},
          "head": {"kernel": jax.random.normal(keys[1], (8, 3))}}


def test_tdm_flags_change_nothing_on_steps_without_events():
  params = _leaf_params(0)
  tx = tdm(optax.sgd(0.1, momentum=0.9), sparsity=0.5,
           schedule=MaskSchedule(update_interval=1, epochs_per_task=4),
           dgm=DGMSpec(0.7, refresh_interval=3))
  state = tx.init(params)
  # The params stay fixed (masks only are read): tdm's usage check off.
  grads = _leaf_params(1)
  # Step 0 is an event (drop-and-grow and DGM refresh): the default path.
  _, state = tx.update(grads, state, params, epoch=1, step_in_epoch=0,
                       check_usage=False)
  grads = _leaf_params(2)
  plain_u, plain_s = tx.update(grads, state, params, epoch=1,
                               step_in_epoch=1, check_usage=False)
  fast_u, fast_s = tx.update(grads, state, params, epoch=1, step_in_epoch=1,
                             mask_events=False, check_usage=False)
  for a, b in zip(jax.tree.leaves((plain_u, plain_s)),
                  jax.tree.leaves((fast_u, fast_s))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, kept = tx.update(grads, state, params, epoch=1, step_in_epoch=1,
                      mask_events=False, record_grads=False,
                      check_usage=False)
  # Not recording leaves the previous step's gradient in place.
  np.testing.assert_array_equal(
      np.asarray(kept.last_grads["hidden_0"]["kernel"]),
      np.asarray(state.last_grads["hidden_0"]["kernel"]))
  assert not np.array_equal(
      np.asarray(kept.last_grads["hidden_0"]["kernel"]),
      np.asarray(plain_s.last_grads["hidden_0"]["kernel"]))


def test_dgm_without_events_reuses_its_masks():
  params = {"hidden_0": {"kernel": jnp.zeros((2, 5))}}
  tx = dgm(0.8, refresh_interval=2)
  state = tx.init(params)
  first = {"hidden_0": {"kernel": jnp.arange(10.).reshape(2, 5)}}
  _, state = tx.update(first, state, params, step_in_epoch=0)
  second = {"hidden_0": {"kernel": jnp.arange(10.)[::-1].reshape(2, 5)}}
  out, _ = tx.update(second, state, params, step_in_epoch=2,
                     mask_events=False)
  # Step 2 would refresh; without events the set of step 0 is reused.
  np.testing.assert_array_equal(np.asarray(out["hidden_0"]["kernel"]),
                                [[0, 0, 0, 0, 0], [0, 0, 0, 1, 0]])
  assert int(dgm_masks(state)["hidden_0"]["kernel"].sum()) == 2


def test_event_chunk_equals_calling_the_optimizer_as_built(
    digits_two_tasks, monkeypatch, run_capturing):
  # Epochs of 13 steps, 5 steps per call and a DGM refresh every 4 steps put
  # events and epoch ends inside and at the edges of calls.
  config = validate(RunConfig(
      workdir="/unused", dataset="digits", data_source="digits",
      method="sparcl_derpp", hidden_sizes="32", epochs=3, batch_size=16,
      minibatch_size=8, lr=0.05, buffer_size=50, replay_first_task=True,
      progress=False, steps_per_call=5, mask_update_interval=1,
      dgm_refresh=4, ddr_epochs="1", sparse_layers="hidden_.*/kernel"))
  assert optimizers.mask_events(config) == steps.MaskEvents(4, True)
  fast, fast_seen = run_capturing(config, digits_two_tasks, monkeypatch,
                                   None)
  plain, plain_seen = run_capturing(config, digits_two_tasks, monkeypatch,
                                     lambda events: None)
  assert fast_seen["mask_events"] == steps.MaskEvents(4, True)
  assert fast["acc_matrix"] == plain["acc_matrix"]
  assert fast["train_flops"] == plain["train_flops"]
  a, b = fast_seen["state"], plain_seen["state"]
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)),
                  jax.tree.leaves((b.params, b.opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The final phase keeps exactly 25% of the weights and DGM 20% of the
  # gradient entries.
  size = a.params["hidden_0"]["kernel"].size
  assert int(tdm_masks(a.opt_state)["hidden_0"]["kernel"].sum()) == round(
      0.25 * size)
  assert int(dgm_masks(a.opt_state)["hidden_0"]["kernel"].sum()) == round(
      0.2 * size)


def test_dense_methods_get_no_mask_events():
  assert optimizers.mask_events(
      RunConfig(method="derpp", workdir="/unused")) is None
  events = optimizers.mask_events(RunConfig(method="sparcl_derpp",
                                            workdir="/unused", dgm=False))
  assert events == steps.MaskEvents(0, True)


def test_fused_fast_chunk_equals_the_reference_step_in_a_loop(
    digits_two_tasks):
  # Ten steps of SparCL-DER++ (TDM, DGM refreshing every 4 steps, DDR
  # statistics, a buffer replayed from the first step): two fused chunks of
  # 5 with the fast update variants against ten calls of the plain
  # reference step, which calls the optimizer as built.
  from sparcl_jax import ddr as ddr_lib
  from sparcl_jax.replay import buffer as replay_buffer
  from sparcl_jax.data import pipeline
  from sparcl_jax.methods import rehearsal_hooks
  from sparcl_jax.models import registry
  from sparcl_jax.training import tasks
  scenario = digits_two_tasks
  config = validate(RunConfig(
      workdir="/unused", dataset="digits", data_source="digits",
      method="sparcl_derpp", hidden_sizes="32", epochs=3, batch_size=16,
      minibatch_size=8, lr=0.05, buffer_size=50, replay_first_task=True,
      mask_update_interval=1, dgm_refresh=4,
      sparse_layers="hidden_.*/kernel"))
  model = registry.make_model("mlp", scenario.num_outputs, hidden_sizes=(32,))
  spec, hooks = tasks.input_spec(scenario), rehearsal_hooks.make_hooks(config)
  tx = optimizers.make_optimizer(config)
  params = registry.init_model(model, jax.random.key(0),
                               (1,) + spec.image_shape)["params"]
  opt_state = tx.init(params)
  params = masks_lib.apply_mask(params, tdm_masks(opt_state))
  arrays = tasks.TaskArrays(scenario, joint=False)
  ex_index, ex_task, usable = arrays.train(0)
  data = (pipeline.to_device(scenario), jnp.asarray(ex_index),
          jnp.asarray(ex_task))
  order, _ = jax.jit(pipeline.epoch_order)(jax.random.key(1),
                                           jnp.asarray(usable))
  start = steps.TrainState(
      params, {}, opt_state,
      rehearsal_hooks.ReplayState(
          replay_buffer.buffer_init(50, spec.image_shape, scenario.num_outputs),
          ddr_lib.ddr_init(arrays.train_len)._replace(
              kept=jnp.asarray(usable))),
      jax.random.key(2))
  masks = tasks.class_masks(scenario)
  facts = steps.StepFacts(jnp.int32(0), jnp.int32(0), jnp.int32(0),
                          jnp.int32(10), jnp.asarray(masks[0]),
                          jnp.asarray(masks[0]))
  events = optimizers.mask_events(config)
  assert events == steps.MaskEvents(4, True)

  chunk = steps.make_train_chunk(model, tx, hooks, spec, 16, 5,
                                 mask_events=events)
  fused, fused_loss = start, 0.0
  for first in (0, 5):
    fused, loss = chunk(fused, data, order,
                        facts._replace(first_step=jnp.int32(first)))
    fused_loss += float(loss)

  reference_step = jax.jit(steps.make_train_step(model, tx, hooks, spec))
  plain, plain_loss = start, 0.0
  for k in range(10):
    plain, loss = reference_step(plain, data, order[16 * k:16 * (k + 1)],
                                 facts, jnp.int32(k))
    plain_loss += float(loss)

  assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
  for x, y in zip(jax.tree.leaves((fused.params, fused.opt_state,
                                   fused.method_state.buffer,
                                   fused.method_state.ddr)),
                  jax.tree.leaves((plain.params, plain.opt_state,
                                   plain.method_state.buffer,
                                   plain.method_state.ddr))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert int(plain.method_state.buffer.num_seen) == 160
