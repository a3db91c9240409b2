"""The rehearsal losses pinned to hand-computed values, and DER end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

import sparcl_jax as sc
from sparcl_jax.training import cli
from sparcl_jax.methods.rehearsal_hooks import (MethodSpec, RehearsalHooks,
                                                ReplayState, rehearsal_loss)
from sparcl_jax.replay.losses import draw_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")

# A linear "model" over 2 inputs and 3 classes: logits = x @ W.
W = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
STREAM = (jnp.array([[1.0, 0.0]]), jnp.array([0]))  # logits (1, 0, -1)
# Replay batch 1 with its stored logits, and replay batch 2.
REPLAY = ((jnp.array([[0.0, 1.0]]), jnp.array([2]),  # logits (0, 2, 1)
           jnp.array([[0.5, 1.0, 0.0]])),
          (jnp.array([[1.0, 1.0]]), jnp.array([1])))  # logits (1, 2, 0)
ALPHA, BETA = 0.3, 0.7


def _lse(*values):
  return math.log(sum(math.exp(v) for v in values))


# By hand: each cross-entropy is logsumexp(logits) - logit of the label.
STREAM_CE = _lse(1, 0, -1) - 1
ER_TERM = _lse(0, 2, 1) - 1
# Mean over the 3 logits of (out1 - z1)^2 = (0.25 + 1 + 1) / 3.
DER_TERM = ALPHA * 0.75
DERPP_TERM = DER_TERM + BETA * (_lse(1, 2, 0) - 2)


def _loss(replay, do_replay=True, current_task_logit_mask=False):
  method = MethodSpec(replay=replay, alpha=ALPHA, beta=BETA,
                      replay_batch_size=1,
                      current_task_logit_mask=current_task_logit_mask)
  forward = lambda p, bs, x, rng, train: (x @ p, bs)
  loss, (logits, _) = rehearsal_loss(
      method, forward, W, {}, *STREAM, REPLAY if replay else None,
      jnp.asarray(do_replay), jax.random.key(0),
      jnp.array([True, True, False]))
  return float(loss), logits


@pytest.mark.parametrize("replay,term", [("", 0.0), ("er", ER_TERM),
                                         ("der", DER_TERM),
                                         ("derpp", DERPP_TERM)])
def test_loss_is_the_hand_computed_value(replay, term):
  loss, logits = _loss(replay)
  assert loss == pytest.approx(STREAM_CE + term, rel=1e-6)
  assert logits.tolist() == [[1.0, 0.0, -1.0]]


def test_no_replay_step_is_the_stream_loss_alone():
  for replay in ("er", "der", "derpp"):
    assert _loss(replay, do_replay=False)[0] == pytest.approx(STREAM_CE,
                                                              rel=1e-6)


def test_current_task_logit_mask_touches_the_stream_term_only():
  # Classes 0 and 1 are the current task's: the stream cross-entropy is
  # over (1, 0); the replay terms still see every class.
  loss, logits = _loss("derpp", current_task_logit_mask=True)
  assert loss == pytest.approx(_lse(1, 0) - 1 + DERPP_TERM, rel=1e-6)
  assert logits.tolist() == [[1.0, 0.0, -1.0]]


def test_derpp_weights_and_targets_are_not_interchangeable():
  # The pinned value would not survive a swap of alpha and beta, or of the
  # batch that matches logits and the batch that is classified.
  swapped_weights = BETA * 0.75 + ALPHA * (_lse(1, 2, 0) - 2)
  # Logit matching on batch 2 (logits (1, 2, 0)) against z1; batch 1's
  # cross-entropy with its label.
  swapped_batches = (ALPHA * ((0.5**2 + 1 + 0) / 3) +
                     BETA * (_lse(0, 2, 1) - 2))
  loss = _loss("derpp")[0] - STREAM_CE
  assert loss == pytest.approx(DERPP_TERM, rel=1e-6)
  assert abs(loss - swapped_weights) > 0.05
  assert abs(loss - swapped_batches) > 0.05


@pytest.mark.parametrize("method", ["der", "er_ace"])
def test_one_batch_replay_methods_run_end_to_end(tmp_path, capsys, method):
  status = cli.main(["train.py", f"--flagfile={QUICKSTART}",
                     f"--method={method}", "--num_tasks=2", "--epochs=1",
                     f"--workdir={tmp_path}", "--noprogress",
                     "--notensorboard"])
  capsys.readouterr()
  assert status == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["flags"]["method"] == method
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r["event"] == "epoch"]
  # DER and ER-ACE replay one batch of 16 per step once the buffer holds 16
  # examples: every step but the first (batch 16) of the first task
  # (--replay_first_task), every step of the second.
  assert [r["replayed_examples"] for r in epochs] == [
      16 * (epochs[0]["steps"] - 1), 16 * epochs[1]["steps"]]
  assert all(math.isfinite(v) for v in results["final"].values())
  assert results["acc_matrix"]["task_il"][1][0] > 50.0


def _er_ace_loss(task_mask, seen_mask, do_replay=True):
  method = MethodSpec(replay="er_ace", replay_batch_size=1)
  forward = lambda p, bs, x, rng, train: (x @ p, bs)
  loss, (logits, _) = rehearsal_loss(
      method, forward, W, {}, *STREAM, REPLAY, jnp.asarray(do_replay),
      jax.random.key(0), jnp.array(task_mask), jnp.array(seen_mask))
  return float(loss), logits


def test_er_ace_stream_over_the_task_and_replay_over_the_seen_classes():
  # Current task: classes 0 and 1, so the stream term is over (1, 0). Seen
  # so far: classes 0 and 2, so the replay term (label 2, logits (0, 2, 1))
  # is over (0, 1), class 1's logit 2 left out.
  loss, logits = _er_ace_loss([True, True, False], [True, False, True])
  assert loss == pytest.approx((_lse(1, 0) - 1) + (_lse(0, 1) - 1), rel=1e-6)
  assert logits.tolist() == [[1.0, 0.0, -1.0]]
  # With every class seen, the replay term is ER's; the stream term stays
  # over the current task's classes, unlike ER's.
  loss, _ = _er_ace_loss([True, True, False], [True, True, True])
  assert loss == pytest.approx((_lse(1, 0) - 1) + ER_TERM, rel=1e-6)
  assert loss != pytest.approx(STREAM_CE + ER_TERM, rel=1e-3)


def test_er_ace_without_replay_is_the_masked_stream_loss():
  loss, _ = _er_ace_loss([True, True, False], [True, True, True],
                         do_replay=False)
  assert loss == pytest.approx(_lse(1, 0) - 1, rel=1e-6)


def _one_item_buffer():
  """A buffer holding replay batch 1's single item: every draw returns it."""
  (x1, y1, z1), _ = REPLAY
  buffer = sc.buffer_init(4, (2,), 3)
  return sc.reservoir_add(buffer, jax.random.key(0), x1, y1, z1, 0)


_FORWARD = lambda p, bs, x, rng, train: (x @ p, bs)


@pytest.mark.parametrize("loss_fn,kwargs,term", [
    (sc.er_loss, {}, ER_TERM),
    (sc.der_loss, {"alpha": ALPHA}, DER_TERM),
    # Both draws return the one item: DER's term plus BETA times ER's.
    (sc.derpp_loss, {"alpha": ALPHA, "beta": BETA}, DER_TERM + BETA * ER_TERM),
])
def test_buffer_losses_are_the_terms_on_the_drawn_items(loss_fn, kwargs, term):
  buffer = _one_item_buffer()
  got, stats = jax.jit(lambda w, b, k: loss_fn(_FORWARD, w, {"n": 1}, b, k, 1,
                                               **kwargs))(
                                                   W, buffer,
                                                   jax.random.key(3))
  assert float(got) == pytest.approx(term, rel=1e-6)
  assert stats == {"n": 1}
  # Not ready (two items asked of a buffer that saw one): zero, no gradient.
  grads = jax.grad(lambda w: loss_fn(_FORWARD, w, {}, buffer,
                                     jax.random.key(3), 2, **kwargs)[0])(W)
  assert float(loss_fn(_FORWARD, W, {}, buffer, jax.random.key(3), 2,
                       **kwargs)[0]) == 0.0
  assert not jnp.any(grads)


def test_buffer_losses_prepare_the_drawn_inputs_and_mask_classes():
  buffer = _one_item_buffer()
  zeroed = sc.er_loss(_FORWARD, W, {}, buffer, jax.random.key(0), 1,
                      prepare=lambda key, x: 0 * x)[0]
  assert float(zeroed) == pytest.approx(math.log(3), rel=1e-6)
  # ER-ACE's replay: over the classes seen so far (logits (0, 2, 1)).
  masked = sc.er_loss(_FORWARD, W, {}, buffer, jax.random.key(0), 1,
                      class_mask=jnp.array([True, False, True]))[0]
  assert float(masked) == pytest.approx(_lse(0, 1) - 1, rel=1e-6)


def test_the_library_step_draws_as_the_buffer_losses_do():
  """RehearsalHooks.draw is draw_batch with the step's keys, prepared."""
  buffer = _one_item_buffer()
  hooks = RehearsalHooks(MethodSpec(replay="derpp", alpha=ALPHA, beta=BETA,
                                    replay_batch_size=1))
  keys = jax.random.split(jax.random.key(0), 8)
  facts = type("Facts", (), {"task_id": jnp.int32(1)})
  prepare = lambda key, x: x + 1.0
  (first, second), ready = hooks.draw(ReplayState(buffer, None), keys, facts,
                                      prepare, lambda tree: tree)
  assert bool(ready)
  expected = draw_batch(buffer, (keys[3], keys[6]), 1, prepare)
  for got, want in zip(first, expected):
    assert jnp.array_equal(got, want)
  assert jnp.array_equal(second[0], REPLAY[0][0] + 1.0)
