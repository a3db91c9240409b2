"""End-to-end CLNP, EWC, SI and single-task runs on permuted 8x8 digits.

The runs are tiny (MLP 64-24-24, a few epochs, scikit-learn's digits), so
the numbers are not the point; the structure is: CLNP never changes an
earlier task's Task-IL accuracy, not even in the last bit, the diagnostics
add up, a full layer stops the run cleanly with partial results.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparcl_jax as sc
from sparcl_jax import clnp as clnp_lib
from sparcl_jax import losses
from sparcl_jax import regularizers
from sparcl_jax.data import pipeline, scenarios, sources
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods import clnp as clnp_method
from sparcl_jax.methods import task_level
from sparcl_jax.models import registry
from sparcl_jax.training import capacity_plot, cli, families, loop, measures
from sparcl_jax.training import steps, tasks
from sparcl_jax.training.config import RunConfig, validate

_DIGITS = sources.load_dataset("digits", "embedded", None)


def _scenario(num_tasks: int, val_fraction: float = 0.2):
  return scenarios.permuted_scenario(_DIGITS, num_tasks, seed=0,
                                     val_fraction=val_fraction)


def _config(tmp_path, **changes) -> RunConfig:
  base = dict(workdir=str(tmp_path), dataset="digits", data_source="digits",
              scenario="permuted", model="mlp", hidden_sizes="32,32",
              head="multi", method="clnp", epochs=2, batch_size=32,
              optimizer="adam", lr=1e-2, l1=3e-3, margin=2.0,
              val_fraction=0.2, eval_batch_size=128, steps_per_call=40,
              seed=0, progress=False)
  base.update(changes)
  return validate(RunConfig(**base))


def _run(config, scenario):
  records = []
  results = loop.run(config, scenario=scenario, log_fn=records.append,
                     start_time=time.perf_counter())
  return results, records


def _assert_columns_constant_below_diagonal(matrix):
  R = np.asarray(matrix)
  for j in range(R.shape[1]):
    for i in range(j + 1, R.shape[0]):
      # Exact equality on purpose: CLNP promises bit-identical outputs.
      assert R[i, j] == R[j, j], (i, j, R)


def test_clnp_multi_head_zero_forgetting_and_diagnostics(tmp_path):
  results, records = _run(_config(tmp_path, num_tasks=3), _scenario(3))

  assert "stopped_early" not in results
  task_il = results["acc_matrix"]["task_il"]
  assert np.shape(task_il) == (3, 3)
  _assert_columns_constant_below_diagonal(task_il)
  assert results["final"]["forgetting_task_il"] == 0.0
  assert results["final"]["bwt_task_il"] == 0.0
  # Every task is learnt well above the 10% of chance.
  assert min(np.diag(task_il)) > 40.0

  widths = {"hidden_0": 32, "hidden_1": 32}
  assert results["clnp"]["units"] == widths
  tasks = results["clnp"]["tasks"]
  assert [d["task"] for d in tasks] == [0, 1, 2]
  claimed_sum = {n: 0 for n in widths}
  for t, diag in enumerate(tasks):
    assert diag["val_acc_after"] >= diag["val_acc_before"] - 2.0
    for name, width in widths.items():
      layer = diag["layers"][name]
      claimed_sum[name] += layer["claimed"]
      assert layer["used"] == claimed_sum[name]
      assert layer["used"] + layer["free"] == width
      assert 0 <= layer["reused"] <= layer["available"]
      used_before = layer["used"] - layer["claimed"]
      assert layer["available"] == used_before
      fraction = results["capacity_plot_data"]["used_fraction"][name][t]
      assert fraction == layer["used"] / width
  assert tasks[0]["layers"]["hidden_0"]["available"] == 0
  assert results["capacity_plot_data"]["tasks"] == [1, 2, 3]

  events = [r["event"] for r in records]
  assert events.count("epoch") == 3 * 2
  assert events.count("clnp_prune") == 3
  assert events.count("eval") == 3
  # results.json must be strict JSON (no NaN or Infinity).
  json.dumps(results, allow_nan=False)
  path = capacity_plot.plot_capacity(str(tmp_path), results)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_clnp_shared_head_gate_with_finetuning(tmp_path):
  config = _config(tmp_path, num_tasks=2, head="shared", finetune_epochs=1)
  results, records = _run(config, _scenario(2))

  assert np.shape(results["acc_matrix"]["task_il"]) == (2, 2)
  _assert_columns_constant_below_diagonal(results["acc_matrix"]["task_il"])
  # Class-IL is not protected: after task 1 it also ranks task 1's classes,
  # whose bias task 1 trains. An example right over all seen classes is
  # right over its own task's, so Class-IL never exceeds Task-IL.
  class_il = np.asarray(results["acc_matrix"]["class_il"])
  task_il = np.asarray(results["acc_matrix"]["task_il"])
  assert class_il[0, 0] == task_il[0, 0]
  assert class_il[1, 0] <= task_il[1, 0]
  # Fine-tuning runs once per distinct candidate the search evaluates.
  trials = sum(len(d["trials"]) for d in results["clnp"]["tasks"])
  finetunes = [r for r in records if r["event"] == "finetune"]
  assert 2 <= len(finetunes) <= trials + 2


def test_bisect_search_fine_tunes_at_most_seven_candidates_per_task(
    tmp_path):
  config = _config(tmp_path, num_tasks=2, finetune_epochs=1,
                   prune_search="bisect", lr_schedule="cosine",
                   finetune_lr=1e-3)
  results, records = _run(config, _scenario(2))

  _assert_columns_constant_below_diagonal(results["acc_matrix"]["task_il"])
  for task in results["clnp"]["tasks"]:
    # ceil(log2(101 candidates)) evaluations, each after one fine-tuning.
    assert len(task["trials"]) <= 7
    finetunes = [r for r in records
                 if r["event"] == "finetune" and r["task"] == task["task"]]
    # One per distinct set of kept units (candidates that keep the same
    # units share it), plus the keep-everything fallback if none passes.
    distinct = len({acc for _, acc in task["trials"]})
    assert distinct <= len(finetunes) <= len(task["trials"]) + 1


def test_cosine_schedule_restarts_each_task_and_decays_to_zero():
  config = RunConfig(workdir="/tmp/unused", method="clnp", optimizer="sgd",
                     lr=0.5, lr_schedule="cosine")
  tx = families.make_task_optimizer(config, 4)
  params = {"w": jnp.zeros(())}
  grads = {"w": jnp.ones(())}
  for _ in range(2):  # two tasks: a fresh state restarts the schedule
    state = tx.init(params)
    steps = []
    for _ in range(5):
      updates, state = tx.update(grads, state, params)
      steps.append(-float(updates["w"]))
    # 0.5 * (1 + cos(pi * k / 4)) / 2 for k = 0..4.
    np.testing.assert_allclose(
        steps, [0.5, 0.4267767, 0.25, 0.0732233, 0.0], atol=1e-6)


def test_full_layer_stops_cleanly_and_cli_writes_results(tmp_path, capsys):
  # hidden_0 has one unit: once a task keeps it (cutting a live unit makes
  # every prediction the same, which a margin of 0 rejects), the next task
  # finds no free unit there.
  workdir = tmp_path / "run"
  status = cli.main([
      "train.py", f"--workdir={workdir}", "--dataset=digits",
      "--data_source=digits", "--scenario=permuted", "--num_tasks=3",
      "--model=mlp", "--hidden_sizes=1,8", "--head=multi", "--method=clnp",
      "--epochs=2", "--batch_size=32", "--optimizer=adam", "--lr=0.01",
      "--margin=0", "--val_fraction=0.2", "--eval_batch_size=128",
      "--steps_per_call=40", "--noprogress"])
  capsys.readouterr()
  assert status == 0
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  done = len(results["acc_matrix"]["task_il"])
  assert 1 <= done < 3
  assert np.shape(results["acc_matrix"]["class_il"]) == (done, done)
  assert results["stopped_early"].startswith(
      f"stopped before task {done + 1} of 3: layer 'hidden_0' has no free "
      "units left")
  last = results["clnp"]["tasks"][-1]["layers"]["hidden_0"]
  assert len(results["clnp"]["tasks"]) == done
  assert (last["used"], last["free"]) == (1, 0)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line)["event"] for line in f]
  assert events[-1] == "stopped"


def test_regularisers_vanish_on_the_first_task(tmp_path):
  scenario = _scenario(2, val_fraction=0.0)
  rows = {}
  for method in ("single_task", "ewc", "si"):
    config = _config(tmp_path, num_tasks=2, method=method, val_fraction=0.0,
                     epochs=1, ewc_lambda=1e3, si_c=1.0)
    results, _ = _run(config, scenario)
    rows[method] = np.asarray(results["acc_matrix"]["task_il"])
    assert "clnp" not in results
  # Same seed, zero penalty before any consolidation: identical first rows.
  np.testing.assert_array_equal(rows["ewc"][0], rows["single_task"][0])
  np.testing.assert_array_equal(rows["si"][0], rows["single_task"][0])
  # single_task answers for task 0 with network 0, which never changes.
  assert rows["single_task"][1, 0] == rows["single_task"][0, 0]
  # The carried-over network of EWC and SI is another network.
  assert not np.array_equal(rows["ewc"][1], rows["single_task"][1])
  assert not np.array_equal(rows["si"][1], rows["ewc"][1])


def test_device_fisher_matches_library_estimate():
  scenario = _scenario(2)
  model = registry.make_model("mlp", 20, hidden_sizes=(5,), head="multi",
                              head_sizes=(10, 10))
  params = registry.init_model(model, jax.random.key(1),
                               (1, 8, 8, 1))["params"]
  spec = tasks.input_spec(scenario)
  data = pipeline.to_device(scenario)
  rows = np.asarray(scenario.tasks[1].train_indices[:7])
  mask = jnp.arange(20) >= 10
  fisher = measures.make_fisher(model, spec, chunk=3)(
      params, data, jnp.asarray(np.pad(rows, (0, 5))), jnp.int32(7),
      jnp.int32(1), mask)

  x, y = pipeline.gather_batch(data, jnp.asarray(rows), 1, "train", True)

  def log_likelihood(p, xb, yb):
    logits = model.apply({"params": p}, xb)
    return -losses.cross_entropy(losses.mask_logits(logits, mask), yb)

  expected = regularizers.fisher_diagonal(log_likelihood, params, x, y,
                                          batch_size=4)
  for got, want in zip(jax.tree.leaves(fisher), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  # Task 0's head does not take part in task 1's likelihood.
  assert not np.any(np.asarray(fisher["head"]["head_0"]["kernel"]))


def test_setup_errors_are_config_errors(tmp_path):
  scenario = _scenario(2, val_fraction=0.0)
  with pytest.raises(ConfigError, match="--val_fraction > 0"):
    loop.run(_config(tmp_path, num_tasks=2, val_fraction=0.0),
             scenario=scenario, log_fn=print, start_time=0.0)
  with pytest.raises(ConfigError, match="zenke_cnn"):
    loop.run(_config(tmp_path, num_tasks=2, model="resnet18",
                     val_fraction=0.0, method="ewc"),
             scenario=scenario, log_fn=print, start_time=0.0)
  bare = registry.make_model("mlp", 10, hidden_sizes=())
  params = registry.init_model(bare, jax.random.key(0), (1, 8, 8, 1))
  with pytest.raises(ConfigError, match="no ReLU units|none"):
    clnp_method.layer_specs("mlp", params["params"])
  with pytest.raises(ConfigError, match="plot_capacity"):
    capacity_plot.plot_capacity(str(tmp_path), {"acc_matrix": {}})


def test_gate_shared_head_zeroes_gated_rows():
  params = {"hidden_0": {"kernel": jnp.ones((2, 3))},
            "head": {"kernel": jnp.arange(6.0).reshape(3, 2),
                     "bias": jnp.ones(2)}}
  gated = clnp_method.gate_shared_head(params, np.array([1.0, 0.0, 1.0]))
  np.testing.assert_array_equal(gated["head"]["kernel"],
                                [[0.0, 1.0], [0.0, 0.0], [4.0, 5.0]])
  assert gated["head"]["bias"] is params["head"]["bias"]
  assert gated["hidden_0"] is params["hidden_0"]


def _penalised_start(tmp_path, method, tx, partition=True):
  """A task-1 start of ``method`` whose penalty is not zero.

  Returns ``(scenario, config, model, spec, hooks, state, data, order,
  facts)``: CLNP with a partition whose used units are every third one,
  EWC and SI with a consolidated state whose anchor is not the parameters.
  ``partition``: set CLNP's partition in ``tx``'s state (CLNP's optimizer).
  """
  scenario = _scenario(2)
  config = _config(tmp_path, method=method, ewc_lambda=50.0, si_c=0.5)
  model = registry.make_model("mlp", scenario.num_outputs,
                              hidden_sizes=config.hidden_widths, head="multi",
                              head_sizes=[10, 10])
  spec = tasks.input_spec(scenario)
  hooks = task_level.make_hooks(config)
  params = registry.init_model(model, jax.random.key(0),
                               (1,) + spec.image_shape)["params"]
  opt_state = tx.init(params)
  reg = hooks.init_state(params)
  shifted = jax.tree.map(lambda p: p + 0.05, params)
  if method == "clnp" and partition:
    specs = clnp_method.layer_specs("mlp", params)
    used = {k: np.arange(v.size) % 3 == 0 for k, v in
            sc.init_used(params, specs).items()}
    opt_state = sc.set_partition(opt_state, sc.compute_partition(
        params, specs, used, task=1))
  elif method == "ewc":
    fisher = jax.tree.map(lambda p: jnp.abs(p) + 0.1, params)
    reg = regularizers.ewc_consolidate(reg, shifted, fisher, merged=True)
  elif method == "si":
    # A path integral of -0.05 * 0.05 per weight, consolidated at the
    # shifted weights: every importance positive, the anchor not params.
    fake_grads = jax.tree.map(lambda p: jnp.full_like(p, -1.0), params)
    reg = regularizers.si_accumulate(reg, fake_grads, params, shifted)
    reg = regularizers.si_consolidate(reg, shifted, config.si_xi)
  state = steps.TrainState(params, {}, opt_state, reg, jax.random.key(3))
  arrays = tasks.TaskArrays(scenario, joint=False)
  ex_index, ex_task, usable = arrays.train(1)
  data = (pipeline.to_device(scenario), jnp.asarray(ex_index),
          jnp.asarray(ex_task))
  order, _ = jax.jit(pipeline.epoch_order)(jax.random.key(4),
                                           jnp.asarray(usable))
  masks = tasks.class_masks(scenario)
  facts = steps.StepFacts(jnp.int32(1), jnp.int32(0), jnp.int32(0),
                          jnp.int32(12), jnp.asarray(masks[1]),
                          jnp.asarray(masks[:2].any(axis=0)))
  return scenario, config, model, spec, hooks, state, data, order, facts


@pytest.mark.parametrize("method", ["clnp", "ewc", "si"])
def test_train_chunk_equals_the_reference_step_in_a_loop(tmp_path, method):
  # Twelve steps in two calls of the scanned train chunk against twelve
  # calls of the reference step, with a penalty that is not zero (SI's
  # steps take two gradients, the others one).
  config = _config(tmp_path, method=method, ewc_lambda=50.0, si_c=0.5)
  tx = families.make_task_optimizer(config, 40)
  _, _, model, spec, hooks, state, data, order, facts = _penalised_start(
      tmp_path, method, tx)
  assert hooks.keeps_stream_gradient == (method == "si")

  chunk = steps.make_train_chunk(model, tx, hooks, spec, 32, 6)
  fused, fused_loss = state, 0.0
  for first in (0, 6):
    fused, loss = chunk(fused, data, order,
                        facts._replace(first_step=jnp.int32(first)))
    fused_loss += float(loss)
  step = jax.jit(steps.make_train_step(model, tx, hooks, spec))
  plain, plain_loss = state, 0.0
  for k in range(12):
    plain, loss = step(plain, data, order[32 * k:32 * (k + 1)], facts,
                       jnp.int32(k))
    plain_loss += float(loss)

  assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _recording_sgd(lr: float):
  """SGD whose state is the last gradient it was given."""

  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, state, params=None):
    del state, params
    return jax.tree.map(lambda g: -lr * g, grads), grads

  return optax.with_extra_args_support(
      optax.GradientTransformation(init, update))


@pytest.mark.parametrize("method", ["clnp", "ewc", "si"])
def test_step_gradient_is_the_stream_gradient_plus_the_penalty_gradient(
    tmp_path, method):
  # What the removed `fused=` comparison pinned: one backward pass of the
  # stream loss plus the penalty (CLNP, EWC), or SI's two passes added, give
  # the gradient of the task-masked cross-entropy plus that of the penalty;
  # SI's path integral takes the stream gradient alone; the step reports the
  # stream loss without the penalty.
  tx = _recording_sgd(0.1)
  _, config, model, spec, hooks, state, data, order, facts = (
      _penalised_start(tmp_path, method, tx, partition=False))
  assert not spec.augment  # the batch below is the step's own
  positions = order[:32]
  new, loss = jax.jit(steps.make_train_step(model, tx, hooks, spec))(
      state, data, positions, facts, jnp.int32(0))

  device_data, ex_index, ex_task = data
  x, y = pipeline.gather_batch(device_data, ex_index[positions],
                               ex_task[positions], "train", spec.permuted)
  x = steps.prepare_inputs(None, x, spec)

  def stream_loss(p):
    logits = model.apply({"params": p}, x)
    return losses.cross_entropy(
        losses.mask_logits(logits, facts.task_class_mask), y)

  def penalty(p):
    if method == "clnp":
      return config.l1 * clnp_lib.l1_penalty(p, None)
    if method == "ewc":
      return regularizers.ewc_penalty(p, state.method_state,
                                      config.ewc_lambda)
    return regularizers.si_penalty(p, state.method_state, config.si_c)

  assert float(penalty(state.params)) > 0.0
  stream, stream_grads = jax.value_and_grad(stream_loss)(state.params)
  penalty_grads = jax.grad(penalty)(state.params)
  assert float(loss) == pytest.approx(float(stream), rel=1e-6)
  got = new.opt_state  # the gradient the optimizer received
  want = jax.tree.map(jnp.add, stream_grads, penalty_grads)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-7)
  assert any(float(jnp.abs(p).max()) > 1e-3
             for p in jax.tree.leaves(penalty_grads))
  if method == "si":
    path = regularizers.si_accumulate(state.method_state, stream_grads,
                                      state.params, new.params)
    for a, b in zip(jax.tree.leaves(new.method_state.omega),
                    jax.tree.leaves(path.omega)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                 atol=1e-9)
    # ... and not the total gradient's.
    total_path = regularizers.si_accumulate(state.method_state, want,
                                            state.params, new.params)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(
        jax.tree.leaves(new.method_state.omega),
        jax.tree.leaves(total_path.omega)))
  else:
    # Nothing else is carried: the regulariser state is untouched.
    for a, b in zip(jax.tree.leaves(new.method_state),
                    jax.tree.leaves(state.method_state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
