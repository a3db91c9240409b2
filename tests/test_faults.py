"""Faults: SIGKILL then rerun, SIGTERM, NaN weights, corrupt checkpoints.

Runs use the scikit-learn digits (no download). The SIGKILL test runs the
real script in subprocesses; the others call the CLI in-process.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from sparcl_jax.training import checkpoint
from sparcl_jax.training import cli
from sparcl_jax.training import loop
from sparcl_jax.training import outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "experiments", "train.py")
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")
# Numbers that must not change when a run is interrupted and resumed.
EXACT_KEYS = ("acc_matrix", "final", "train_flops", "dense_train_flops",
              "train_examples", "data_kept_per_epoch", "sparsity",
              "weights_zero_fraction")


def _records(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def _kill_in_task_2_then_rerun(tmp_path, args, exact_keys):
  """Kills a run once task 2 has logged an epoch, reruns it, and checks its
  results and log against an uninterrupted run's."""
  killed, clean = tmp_path / "killed", tmp_path / "clean"

  def command(workdir):
    return [sys.executable, TRAIN, f"--workdir={workdir}", *args]

  reference = subprocess.Popen(command(clean), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=REPO)
  victim = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
  deadline = time.time() + 300
  log = killed / "metrics.jsonl"
  in_task_2 = False
  while time.time() < deadline and victim.poll() is None:
    if log.exists() and any(r["event"] == "epoch" and r["task"] == 1
                            for r in _records(killed)):
      in_task_2 = True
      break
    time.sleep(0.02)
  assert in_task_2 and victim.poll() is None, "the run ended before the kill"
  victim.send_signal(signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  assert not (killed / "results.json").exists()
  _, err = reference.communicate(timeout=300)
  assert reference.returncode == 0, err[-2000:]

  rerun = subprocess.run(command(killed), capture_output=True, text=True,
                         timeout=300, cwd=REPO, check=False)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  resumed_from = [l for l in rerun.stdout.splitlines()
                  if l.startswith("resuming from ")]
  assert len(resumed_from) == 1
  assert "(task 2 of 2, epoch " in resumed_from[0]

  got = json.loads((killed / "results.json").read_text())
  want = json.loads((clean / "results.json").read_text())
  for key in exact_keys:
    assert got[key] == want[key], key
  # The log is neither truncated nor duplicated by the restart.
  drop = ("task_time_s",)
  assert ([{k: v for k, v in r.items() if k not in drop}
           for r in _records(killed)] ==
          [{k: v for k, v in r.items() if k not in drop}
           for r in _records(clean)])


def test_sigkill_in_a_later_task_then_rerun_gives_exact_results(tmp_path):
  # SparCL-DER++ carries masks, DGM state, DDR statistics and the buffer
  # across the kill; one step per call makes a checkpoint every 10 steps.
  _kill_in_task_2_then_rerun(
      tmp_path,
      [f"--flagfile={QUICKSTART}", "--method=sparcl_derpp", "--epochs=2",
       "--num_tasks=2", "--steps_per_call=1", "--checkpoint_every_steps=10",
       "--ddr_epochs=1", "--mask_update_interval=1", "--noprogress",
       "--notensorboard"], EXACT_KEYS)


def test_clnp_sigkill_mid_task_then_rerun_gives_exact_results(tmp_path):
  # CLNP carries its partition masks (in the optimizer state), the used
  # units and their history, and the prune diagnostics across the kill,
  # which lands in the middle of the second task's training.
  _kill_in_task_2_then_rerun(
      tmp_path,
      ["--dataset=digits", "--data_source=digits", "--scenario=permuted",
       "--num_tasks=2", "--model=mlp", "--hidden_sizes=32,32", "--head=multi",
       "--method=clnp", "--epochs=3", "--batch_size=32", "--optimizer=adam",
       "--lr=0.01", "--l1=0.003", "--margin=2.0", "--val_fraction=0.2",
       "--steps_per_call=1", "--checkpoint_every_steps=10", "--noprogress",
       "--notensorboard"],
      ("acc_matrix", "final", "clnp", "capacity_plot_data"))


def _main(capsys, *args):
  status = cli.main(["train.py", f"--flagfile={QUICKSTART}", "--num_tasks=2",
                     "--noprogress", "--notensorboard", *args])
  return status, capsys.readouterr()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, capsys,
                                                      monkeypatch):
  original = outputs.MetricsLog.__call__

  def log_then_signal(self, record):
    original(self, record)
    if record["event"] == "epoch" and record["epoch"] == 0:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(outputs.MetricsLog, "__call__", log_then_signal)
  status, out = _main(capsys, f"--workdir={tmp_path}", "--epochs=2",
                      "--steps_per_call=10")
  assert status == 128 + signal.SIGTERM
  lines = out.err.strip().splitlines()
  assert lines == [
      "SIGTERM received: saving a checkpoint at the next chunk boundary, "
      "then stopping.",
      "train.py: stopped by SIGTERM: saved a checkpoint at task 1 of 2, "
      f"epoch 2, step 10 of 45 in {tmp_path}/checkpoints/1; run the same "
      "command again to resume."]
  assert not (tmp_path / "results.json").exists()
  meta = checkpoint.Checkpointer(str(tmp_path)).read_meta()
  assert (meta["task"], meta["in_task"], meta["epoch"], meta["step"]) == (
      0, True, 1, 10)
  assert meta["logged"] == 1 and meta["steps_done"] == 55
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_nan_weights_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch):
  original = loop.steps.make_train_chunk

  def poisoned_chunks(*args, **kwargs):
    chunk = original(*args, **kwargs)

    def call(state, data, order, facts):
      state, loss = chunk(state, data, order, facts)
      if int(facts.task_id) == 1 and int(facts.first_step) == 20:
        state = state._replace(params=jax.tree.map(
            lambda p: p * jnp.nan, state.params))
      return state, loss

    return call

  monkeypatch.setattr(loop.steps, "make_train_chunk", poisoned_chunks)
  status, out = _main(capsys, f"--workdir={tmp_path}", "--epochs=1",
                      "--steps_per_call=10", "--checkpoint_every_steps=10")
  assert status == 1
  lines = out.err.strip().splitlines()
  assert len(lines) == 1
  # Task 2's chunks end at run steps 55, 65, 75: the save due at 70 finds
  # the poisoned weights; the one at 60 (task 2, step 20) stays the newest.
  assert lines[0].startswith(
      "train.py: error: the model weights became NaN or infinite by task 2 "
      "of 2, epoch 1, step 30 of 44; the last good checkpoint "
      f"{tmp_path}/checkpoints/")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert f"{ckpt.directory}/{ckpt.latest_step()} is kept" in lines[0]
  meta = ckpt.read_meta()
  ckpt.close()
  assert (meta["task"], meta["in_task"], meta["step"]) == (1, True, 20)
  assert not (tmp_path / "results.json").exists()


def test_nan_loss_names_task_and_step(tmp_path, capsys, monkeypatch):
  original = loop.steps.make_train_chunk

  def nan_loss(*args, **kwargs):
    chunk = original(*args, **kwargs)

    def call(state, data, order, facts):
      state, loss = chunk(state, data, order, facts)
      if int(facts.task_id) == 1 and int(facts.first_step) == 30:
        loss = loss * jnp.nan
      return state, loss

    return call

  monkeypatch.setattr(loop.steps, "make_train_chunk", nan_loss)
  status, out = _main(capsys, f"--workdir={tmp_path}", "--epochs=1",
                      "--steps_per_call=10")
  assert status == 1
  assert out.err.strip() == (
      "train.py: error: the training loss became nan at task 2 of 2, epoch "
      "1, steps 31-40 of 44; the last good checkpoint "
      f"{tmp_path}/checkpoints/1 is kept; lower --lr or check the data, then "
      "start fresh (another --workdir) or resume.")


def test_corrupt_or_foreign_checkpoint_is_reported_and_kept(tmp_path,
                                                            capsys):
  flags = [f"--workdir={tmp_path}", "--epochs=1", "--steps_per_call=50"]
  status, _ = _main(capsys, *flags)
  assert status == 0
  # As if the process died after its last checkpoint, before results.json.
  (tmp_path / "results.json").unlink()
  config_text = (tmp_path / "config").read_text()

  status, out = _main(capsys, *flags, "--lr=0.5")
  assert status == 2
  assert out.err.strip() == (
      f"train.py: error: {tmp_path}/checkpoints belongs to a run with other "
      "flags (--lr=0.05 there, 0.5 here); resume with the same flags, or to "
      f"start fresh, use another --workdir or delete {tmp_path}/checkpoints.")
  assert (tmp_path / "config").read_text() == config_text

  latest = max(int(n) for n in os.listdir(tmp_path / "checkpoints"))
  step_dir = tmp_path / "checkpoints" / str(latest)
  files = glob.glob(str(step_dir / "state" / "**" / "d" / "*"),
                    recursive=True)
  for name in files:
    with open(name, "wb") as f:
      f.write(b"garbage")
  status, out = _main(capsys, *flags)
  assert status == 2
  lines = out.err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"train.py: error: checkpoint {step_dir} is "
                             "corrupt: its arrays cannot be read (")
  assert lines[0].endswith(f"to start fresh, use another --workdir or delete "
                           f"{tmp_path}/checkpoints.")
  for name in files:
    with open(name, "rb") as f:
      assert f.read() == b"garbage"
  assert not (tmp_path / "results.json").exists()
