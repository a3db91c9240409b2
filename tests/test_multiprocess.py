"""A run over two processes on localhost (``jax.distributed``, CPU
collectives, one device each): it trains as one process does, only
process 0 writes, and a process that dies stops the other in one line.

The processes run the real script on the scikit-learn digits (no download).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "experiments", "train.py")
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")
SMALL = ["--num_tasks=2", "--epochs=2", "--checkpoint_every_steps=10",
         "--noprogress"]
# Never let a wedged process hang the suite.
LIMIT_S = 400


def _free_port():
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _command(workdir, *args):
  return [sys.executable, TRAIN, f"--flagfile={QUICKSTART}",
          f"--workdir={workdir}", *args]


def _start_pair(workdir, *args):
  """Starts processes 0 and 1 of one run; returns their Popen objects."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      _command(workdir, *args, "--num_devices=0",
               f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={index}"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
      env=env) for index in range(2)]


def _finish(process, limit=LIMIT_S):
  try:
    out, err = process.communicate(timeout=limit)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"a process did not end within {limit} s:\n{err[-3000:]}")
  return process.returncode, out, err


def _files(root):
  return sorted(os.path.relpath(os.path.join(where, name), root)
                for where, _, names in os.walk(root) for name in names)


def test_two_processes_train_as_one_and_only_process_0_writes(tmp_path):
  pair = _start_pair(tmp_path / "two", *SMALL)
  single = subprocess.run(_command(tmp_path / "one", *SMALL),
                          capture_output=True, text=True, cwd=REPO,
                          timeout=LIMIT_S)
  (rc0, out0, err0), (rc1, out1, err1) = [_finish(p) for p in pair]
  assert single.returncode == 0, single.stderr[-3000:]
  assert (rc0, rc1) == (0, 0), err0[-3000:] + err1[-3000:]

  two = json.loads((tmp_path / "two" / "results.json").read_text())
  one = json.loads((tmp_path / "one" / "results.json").read_text())
  for key in ("class_il", "task_il"):
    assert abs(two["final"][key] - one["final"][key]) <= 0.5, key
  assert len(two["acc_matrix"]["class_il"]) == 2

  # Process 0 prints the summary; process 1 reports nothing and writes
  # nothing: no checkpoint shard, no file the one-process run lacks.
  assert "results:" in out0 and "results:" not in out1
  written = _files(tmp_path / "two")
  assert not [name for name in written if "process_1" in name]
  assert any(name.startswith("checkpoints/") for name in written)
  ignore = ("checkpoints/", "tensorboard/")
  assert ([n for n in written if not n.startswith(ignore)] ==
          [n for n in _files(tmp_path / "one") if not n.startswith(ignore)])


def test_a_dead_process_stops_the_other_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  pair = _start_pair(workdir, "--num_tasks=2", "--epochs=500", "--noprogress")
  log = workdir / "metrics.jsonl"
  deadline = time.time() + LIMIT_S
  while not (log.exists() and log.read_text().strip()):
    if time.time() > deadline or any(p.poll() is not None for p in pair):
      for p in pair:
        p.kill()
      pytest.fail("the run did not start training: "
                  + _finish(pair[0])[2][-3000:])
    time.sleep(0.5)
  pair[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  rc, _, err = _finish(pair[0], limit=120)
  took = time.time() - killed_at
  _finish(pair[1])

  assert rc == 1
  assert took < 60, f"process 0 took {took:.0f} s to stop"
  assert "Traceback" not in err
  errors = [line for line in err.splitlines() if "error:" in line]
  assert len(errors) == 1, err[-3000:]
  assert errors[0].startswith("train.py: error: process 0 of 2 lost another "
                              "process of the run (")
  assert errors[0].endswith("start every process again with the same "
                            "command to resume from the last checkpoint.")
  assert err.strip().splitlines()[-1] == errors[0]
