"""Faults: SIGKILL then rerun, SIGTERM, NaN weights, corrupt checkpoints,
a safe --overwrite, the work-directory lock, the data fingerprint.

Runs use the scikit-learn digits or a tiny MNIST written here in IDX format
(no download, no ../shared). The SIGKILL tests run the real script in
subprocesses; the others call the CLI in-process.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparcl_jax.errors import ConfigError
from sparcl_jax.training import checkpoint
from sparcl_jax.training import cli
from sparcl_jax.training import steps
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
  results and log against an uninterrupted run's.

  The three processes share a persistent compilation cache: the reference
  run compiles, the other two load its executables (the same programs, so
  the comparison is unchanged) instead of compiling them again.
  """
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  env = dict(os.environ,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  def command(workdir):
    return [sys.executable, TRAIN, f"--workdir={workdir}", *args]

  reference = subprocess.run(command(clean), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, timeout=600,
                             cwd=REPO, env=env, check=False)
  assert reference.returncode == 0, reference.stderr[-2000:]
  victim = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=env)
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

  rerun = subprocess.run(command(killed), capture_output=True, text=True,
                         timeout=300, cwd=REPO, env=env, check=False)
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
  original = steps.make_train_chunk

  def poisoned_chunks(*args, **kwargs):
    chunk = original(*args, **kwargs)

    def call(state, data, order, facts):
      state, loss = chunk(state, data, order, facts)
      if int(facts.task_id) == 1 and int(facts.first_step) == 20:
        state = state._replace(params=jax.tree.map(
            lambda p: p * jnp.nan, state.params))
      return state, loss

    return call

  monkeypatch.setattr(steps, "make_train_chunk", poisoned_chunks)
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
  original = steps.make_train_chunk

  def nan_loss(*args, **kwargs):
    chunk = original(*args, **kwargs)

    def call(state, data, order, facts):
      state, loss = chunk(state, data, order, facts)
      if int(facts.task_id) == 1 and int(facts.first_step) == 30:
        loss = loss * jnp.nan
      return state, loss

    return call

  monkeypatch.setattr(steps, "make_train_chunk", nan_loss)
  status, out = _main(capsys, f"--workdir={tmp_path}", "--epochs=1",
                      "--steps_per_call=10")
  assert status == 1
  assert out.err.strip() == (
      "train.py: error: the training loss became nan at task 2 of 2, epoch "
      "1, steps 31-40 of 44 (one compiled chunk; --steps_per_call=1 names "
      f"the step); the last good checkpoint {tmp_path}/checkpoints/1 is kept, "
      "but resuming from it would diverge again; lower --lr or check the "
      "data, and start fresh in another --workdir (or delete "
      f"{tmp_path}/checkpoints)")


def _write_mnist(folder, train=120, test=40):
  """A tiny MNIST in IDX format: random pixels, every class present."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
      "train-labels-idx1-ubyte": np.arange(train) % 10,
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
      "t10k-labels-idx1-ubyte": np.arange(test) % 10,
  }
  for name, array in arrays.items():
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    (folder / name).write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_main(capsys, workdir, data, *args):
  return _main(capsys, f"--workdir={workdir}", "--dataset=mnist",
               "--data_source=files", f"--data_dir={data}", "--epochs=1",
               "--steps_per_call=50", "--buffer_size=20", *args)


def test_a_new_workdir_of_a_run_refused_for_its_data_is_not_left_behind(
    tmp_path, capsys):
  (tmp_path / "broken").mkdir()
  status, out = _mnist_main(capsys, tmp_path / "new", tmp_path / "broken")
  assert status == 2 and len(out.err.strip().splitlines()) == 1
  assert not (tmp_path / "new").exists()
  # A directory that existed before the run is left as it was.
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "notes.txt").write_text("mine")
  status, _ = _mnist_main(capsys, tmp_path / "old", tmp_path / "broken")
  assert status == 2
  assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [
      ".lock", "notes.txt"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 2-task run on the tiny MNIST: checkpoints 1 and 2 (the ends
  of the tasks), results, config, log and plots."""
  root = tmp_path_factory.mktemp("finished")
  _write_mnist(root / "mnist")
  status = cli.main(["train.py", f"--flagfile={QUICKSTART}", "--num_tasks=2",
                     "--noprogress", "--notensorboard",
                     f"--workdir={root / 'run'}", "--dataset=mnist",
                     "--data_source=files", f"--data_dir={root / 'mnist'}",
                     "--epochs=1", "--steps_per_call=50", "--buffer_size=20"])
  assert status == 0
  assert sorted(os.listdir(root / "run" / "checkpoints")) == ["1", "2"]
  return root / "run", root / "mnist"


def _copy_of(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  return workdir, finished_run[1]


def _snapshot(workdir):
  """Every file of the run (not the lock or the staging area): its bytes'
  hash."""
  files = {}
  for root, dirs, names in os.walk(workdir):
    dirs[:] = [d for d in dirs if d not in (".overwrite", ".replaced")]
    for name in names:
      path = os.path.join(root, name)
      if name != ".lock":
        with open(path, "rb") as f:
          files[os.path.relpath(path, workdir)] = hashlib.sha256(
              f.read()).hexdigest()
  return files


def _results(workdir):
  return json.loads((workdir / "results.json").read_text())


def _same_log(a, b):
  drop = ("task_time_s",)
  return ([{k: v for k, v in r.items() if k not in drop} for r in _records(a)]
          == [{k: v for k, v in r.items() if k not in drop}
              for r in _records(b)])


def test_corrupt_or_foreign_checkpoint_is_reported_and_kept(
    finished_run, tmp_path, capsys):
  workdir, data = _copy_of(finished_run, tmp_path)
  # As if the process died after its last checkpoint, before results.json.
  (workdir / "results.json").unlink()
  config_text = (workdir / "config").read_text()

  status, out = _mnist_main(capsys, workdir, data, "--lr=0.5")
  assert status == 2
  assert out.err.strip() == (
      f"train.py: error: {workdir}/checkpoints belongs to a run with other "
      "flags (--lr=0.05 there, 0.5 here); resume with the same flags, or to "
      f"start fresh, use another --workdir or delete {workdir}/checkpoints.")
  assert (workdir / "config").read_text() == config_text

  def corrupt(step_dir):
    files = glob.glob(str(step_dir / "state" / "**" / "d" / "*"),
                      recursive=True)
    assert files
    for name in files:
      with open(name, "wb") as f:
        f.write(b"garbage")
    return files

  # The newest checkpoint corrupt: the run falls back to the previous one,
  # says so in one line, keeps the corrupt one aside, and ends exactly as
  # the uninterrupted run did.
  corrupt(workdir / "checkpoints" / "2")
  status, out = _mnist_main(capsys, workdir, data)
  assert status == 0, out.err
  lines = out.err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"checkpoint {workdir}/checkpoints/2 is corrupt "
                             "(its arrays cannot be read (")
  assert lines[0].endswith(
      f"), moved to {workdir}/checkpoints/2.corrupt; resuming from the "
      f"newest intact checkpoint, {workdir}/checkpoints/1.")
  assert f"resuming from {workdir}/checkpoints/1 (" in out.out
  for key in EXACT_KEYS:
    assert _results(workdir)[key] == _results(finished_run[0])[key], key
  assert _same_log(workdir, finished_run[0])
  for name in glob.glob(str(workdir / "checkpoints" / "2.corrupt" / "state" /
                            "**" / "d" / "*"), recursive=True):
    with open(name, "rb") as f:
      assert f.read() == b"garbage"

  # Every checkpoint corrupt: one line naming the newest, nothing deleted.
  (workdir / "results.json").unlink()
  files = corrupt(workdir / "checkpoints" / "1") + corrupt(
      workdir / "checkpoints" / "2")
  status, out = _mnist_main(capsys, workdir, data)
  assert status == 2
  lines = out.err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"train.py: error: checkpoint {workdir}/"
                             "checkpoints/2 is corrupt: its arrays cannot be "
                             "read (")
  assert lines[0].endswith(f"to start fresh, use another --workdir or delete "
                           f"{workdir}/checkpoints.")
  for name in files:
    with open(name, "rb") as f:
      assert f.read() == b"garbage"
  assert not (workdir / "results.json").exists()


def test_overwrite_keeps_the_finished_run_until_it_is_replaced(
    finished_run, tmp_path, capsys, monkeypatch):
  workdir, data = _copy_of(finished_run, tmp_path)
  before = _snapshot(workdir)

  # A new run that fails (broken data) changes nothing.
  (tmp_path / "broken").mkdir()
  status, out = _mnist_main(capsys, workdir, tmp_path / "broken",
                            "--overwrite")
  assert status == 2 and len(out.err.strip().splitlines()) == 1, out.err
  assert _snapshot(workdir) == before
  assert not (workdir / ".overwrite").exists()

  # While the new run trains, every file of the finished one stays; SIGTERM
  # at the end of task 1, then of task 2, stops it (a checkpoint each time).
  original = outputs.MetricsLog.__call__
  unchanged, stop_in_task = [], [0]

  def log_check_and_signal(self, record):
    original(self, record)
    unchanged.append(_snapshot(workdir) == before)
    if record["event"] == "epoch" and record["task"] == stop_in_task[0]:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(outputs.MetricsLog, "__call__", log_check_and_signal)
  status, out = _mnist_main(capsys, workdir, data, "--overwrite")
  assert status == 128 + signal.SIGTERM, out.err
  assert f"{workdir}/.overwrite/checkpoints/1; run the same command" in out.err
  assert _snapshot(workdir) == before

  # The interrupted --overwrite run resumes without --overwrite...
  stop_in_task[0] = 1
  status, out = _mnist_main(capsys, workdir, data)
  assert status == 128 + signal.SIGTERM, out.err
  assert f"resuming from {workdir}/.overwrite/checkpoints/1 (" in out.out
  assert _snapshot(workdir) == before
  # ... and with it, without starting over, then swaps its files in.
  stop_in_task[0] = None
  status, out = _mnist_main(capsys, workdir, data, "--overwrite")
  assert status == 0, out.err
  assert f"resuming from {workdir}/.overwrite/checkpoints/2 (" in out.out
  assert unchanged and all(unchanged)
  # No staging area left, no file of the finished run left behind.
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(finished_run[0]))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  # Same flags, same data: the replacement equals the run it replaced.
  for key in EXACT_KEYS:
    assert _results(workdir)[key] == _results(finished_run[0])[key], key
  assert _same_log(workdir, finished_run[0])
  assert "--overwrite" in (workdir / "config").read_text().splitlines()


def test_a_second_run_on_a_locked_workdir_is_refused(finished_run, tmp_path,
                                                      capsys):
  workdir, data = _copy_of(finished_run, tmp_path)
  before = _snapshot(workdir)
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import fcntl, os, socket, sys, time\n"
       "f = open(sys.argv[1], 'w')\n"
       "fcntl.flock(f, fcntl.LOCK_EX)\n"
       "f.write(f'pid {os.getpid()} on {socket.gethostname()}\\n')\n"
       "f.flush(); print('locked', flush=True); time.sleep(120)\n",
       str(workdir / ".lock")], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    status, out = _mnist_main(capsys, workdir, data, "--overwrite")
    assert status == 2
    assert out.err.strip() == (
        f"train.py: error: --workdir={workdir} is in use by another run (pid "
        f"{holder.pid} on {socket.gethostname()}); wait for it to finish, "
        "stop it, or choose another --workdir.")
    assert _snapshot(workdir) == before
  finally:
    holder.kill()
  assert holder.wait(timeout=30) == -signal.SIGKILL
  # The dead holder's lock is taken over: the run gets as far as the
  # finished-results check.
  status, out = _mnist_main(capsys, workdir, data)
  assert status == 2
  assert "already holds finished results" in out.err
  assert (workdir / ".lock").read_text() == (
      f"pid {os.getpid()} on {socket.gethostname()}\n")


def test_resuming_on_other_data_is_refused(finished_run, tmp_path, capsys):
  workdir, data = _copy_of(finished_run, tmp_path)
  (workdir / "results.json").unlink()
  before = _snapshot(workdir)
  other = tmp_path / "other"
  shutil.copytree(data, other)
  images = other / "train-images-idx3-ubyte"
  raw = bytearray(images.read_bytes())
  raw[-1] ^= 0xFF
  images.write_bytes(bytes(raw))
  status, out = _mnist_main(capsys, workdir, other)
  assert status == 2
  lines = out.err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(
      f"train.py: error: {workdir}/checkpoints was trained on other data "
      f"(--data_dir={data}: 120 train + 40 test examples, hash ")
  assert f" there; --data_dir={other}: 120 train + 40 test examples, hash " \
      in lines[0]
  assert lines[0].endswith(
      f" here); resume with the data it was trained on, or to start fresh, "
      f"use another --workdir or delete {workdir}/checkpoints.")
  assert _snapshot(workdir) == before
  # The same data in another directory resumes (--data_dir is free).
  same = tmp_path / "same"
  shutil.copytree(data, same)
  status, out = _mnist_main(capsys, workdir, same)
  assert status == 0, out.err
  assert _results(workdir)["final"] == _results(finished_run[0])["final"]


def test_an_overwrite_swap_cut_short_is_completed_by_the_next_command(
    tmp_path, monkeypatch):
  # Old run: results, config, a plot the new run does not write, checkpoints.
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "7").mkdir(parents=True)
  for name, text in (("results.json", "old"), ("config", "old"),
                     ("sparsity.png", "old")):
    (workdir / name).write_text(text)
  staging = workdir / ".overwrite"
  (staging / "checkpoints" / "2").mkdir(parents=True)
  for name in ("results.json", "config", "metrics.jsonl"):
    (staging / name).write_text("new")
  real_replace, calls = os.replace, []

  def dies_on_the_third_move(src, dst):
    calls.append(dst)
    if len(calls) == 3:
      raise KeyboardInterrupt  # as if killed in the middle of the swap
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", dies_on_the_third_move)
  cut_short = outputs.Workdir(str(workdir), str(staging),
                              outputs.WorkdirLock(str(workdir)))
  try:
    cut_short.commit()
  except KeyboardInterrupt:
    pass
  finally:
    cut_short.release()
  monkeypatch.undo()
  assert (workdir / "results.json").read_text() == "old"
  # The next command on the directory completes the swap, then refuses to
  # overwrite the (new) finished results.
  with pytest.raises(ConfigError, match="already holds finished"):
    outputs.prepare_workdir(str(workdir), overwrite=False)
  assert sorted(os.listdir(workdir)) == [".lock", "checkpoints", "config",
                                         "metrics.jsonl", "results.json"]
  assert os.listdir(workdir / "checkpoints") == ["2"]
  for name in ("results.json", "config", "metrics.jsonl"):
    assert (workdir / name).read_text() == "new"
