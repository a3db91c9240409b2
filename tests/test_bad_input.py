"""Bad input and a hostile machine: one line on stderr, exit 2, no traceback.

Issue 15, items 6, 7, 9 and 10: seeds out of range, non-finite floats, a
flagfile that is not UTF-8, a JAX platform the machine lacks, a disk that
fills up during a checkpoint, a work directory path too long for the system,
clean flagfile messages, and files created with the user's umask. Every
check runs in-process and stops before training (the data is the bundled
digits, or a --data_dir that does not exist, so nothing trains even where a
check would not stop it), so the file adds a few seconds to the suite.
"""

import errno
import logging
import math
import os
import stat

import jax.numpy as jnp
import pytest

from sparcl_jax.errors import ConfigError
from sparcl_jax.training import checkpoint
from sparcl_jax.training import cli
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import loop
from sparcl_jax.training import outputs
from sparcl_jax.training import sharding


def _main(capsys, *args):
  status = cli.main(["train.py", *args])
  return status, capsys.readouterr().err


def _one_line_exit_2(status, err, *fragments):
  assert status == 2, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("train.py: error: "), err
  assert "Traceback" not in err
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


# Were a flag not refused at validation, the missing --data_dir would stop
# the run (with another message) before anything trains.
_NO_TRAINING = ("--dataset=mnist", "--data_source=files",
                "--data_dir=/nonexistent/sparcl_mnist")


@pytest.mark.parametrize("flag,message", [
    ("--seed=-1", "--seed=-1 is out of range: it must be in [0, 4294967295]."),
    ("--seed=9223372036854775808", "--seed=9223372036854775808 is out of "
     "range: it must be in [0, 4294967295]."),
    ("--epochs=9223372036854775808", "--epochs=9223372036854775808 is out "
     "of range: it must be in [-2147483647, 2147483647]."),
    ("--lr=inf", "--lr=inf is not a finite number; give a finite value."),
    ("--lr=1e400", "--lr=inf is not a finite number; give a finite value."),
    ("--alpha=nan", "--alpha=nan is not a finite number"),
    ("--beta=inf", "--beta=inf is not a finite number"),
    # SparCL's own flag, checked where SparCL reads it.
    ("--method=sparcl_derpp --importance_lambda=inf",
     "--importance_lambda=inf is not a finite number"),
    ("--method=sparcl_derpp --importance_lambda=-1",
     "--importance_lambda must be non-negative"),
])
def test_numbers_refused_at_validation(capsys, tmp_path, flag, message):
  status, err = _main(capsys, f"--workdir={tmp_path / 'run'}", *_NO_TRAINING,
                      *flag.split())
  _one_line_exit_2(status, err, message)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_every_float_field_must_be_finite(bad):
  """Generic over RunConfig: a float flag added later is checked too."""
  floats = [f.name for f in config_lib.config_fields()
            if f.type in ("float", float)]
  assert {"lr", "alpha", "beta", "importance_lambda"} <= set(floats)
  for name in floats:
    config = config_lib.RunConfig(workdir="/tmp/unused", **{name: bad})
    with pytest.raises(ConfigError, match=f"^--{name}=(-?inf|nan) is not a "
                       "finite number"):
      config_lib.validate(config)


def test_flagfile_not_utf8(capsys, tmp_path):
  cfg = tmp_path / "latin1.cfg"
  cfg.write_bytes(b"--lr=0.1\n# caf\xe9 au lait\n--epochs=1\n")
  status, err = _main(capsys, f"--flagfile={cfg}",
                      f"--workdir={tmp_path / 'run'}")
  _one_line_exit_2(status, err, f"flagfile {cfg} is not UTF-8 text (byte "
                   "0xe9 on line 2); save it as UTF-8.")


def test_nested_flagfile_not_utf8_is_named(capsys, tmp_path):
  inner = tmp_path / "inner.cfg"
  inner.write_bytes(b"# \xff\n")
  outer = tmp_path / "outer.cfg"
  outer.write_text(f"--lr=0.1\n--flagfile={inner}\n")
  status, err = _main(capsys, f"--flagfile={outer}",
                      f"--workdir={tmp_path / 'run'}")
  _one_line_exit_2(status, err, f"flagfile {inner} is not UTF-8 text")


def test_missing_flagfile_has_no_absl_prefix(capsys, tmp_path):
  missing = tmp_path / "nope.cfg"
  status, err = _main(capsys, f"--flagfile={missing}",
                      f"--workdir={tmp_path}")
  line = _one_line_exit_2(status, err, str(missing))
  assert line == (f"train.py: error: cannot open flagfile {missing}: No such "
                  "file or directory.")


def test_missing_nested_flagfile_names_its_config(capsys, tmp_path):
  outer = tmp_path / "outer.cfg"
  outer.write_text("--lr=0.1\n--flagfile=base.cfg\n")
  status, err = _main(capsys, f"--flagfile={outer}",
                      f"--workdir={tmp_path / 'run'}")
  line = _one_line_exit_2(status, err, "base.cfg")
  assert line == (f"train.py: error: cannot open flagfile {tmp_path}/base.cfg"
                  f" (named in {outer}): No such file or directory.")


def test_flagfile_that_includes_itself(capsys, tmp_path):
  (tmp_path / "a.cfg").write_text("--flagfile=b.cfg\n")
  (tmp_path / "b.cfg").write_text("--lr=0.1\n--flagfile=a.cfg\n")
  status, err = _main(capsys, f"--flagfile={tmp_path / 'a.cfg'}",
                      f"--workdir={tmp_path / 'run'}")
  line = _one_line_exit_2(status, err, "includes itself")
  assert line == (f"train.py: error: flagfile {tmp_path}/a.cfg includes "
                  f"itself ({tmp_path}/a.cfg -> {tmp_path}/b.cfg -> "
                  f"{tmp_path}/a.cfg); remove the loop.")


@pytest.mark.parametrize("args", [["--flagfile="], ["--flagfile"]])
def test_flagfile_without_a_path(capsys, tmp_path, args):
  status, err = _main(capsys, f"--workdir={tmp_path / 'run'}", *args)
  _one_line_exit_2(status, err, "--flagfile=CONFIG.cfg")


@pytest.mark.parametrize("error,says", [
    # jax skips 'cuda' without a visible GPU, then asserts it has a backend.
    (AssertionError(), "none of those platforms is on this machine"),
    # A platform whose plugin fails to start.
    (RuntimeError("Unable to initialize backend 'cuda': FAILED_PRECONDITION: "
                  "No visible GPU devices. (set JAX_PLATFORMS='' to "
                  "automatically choose an available backend)"),
     "Unable to initialize backend 'cuda': FAILED_PRECONDITION"),
])
def test_platform_the_machine_lacks(capsys, tmp_path, monkeypatch, error,
                                    says):
  """JAX_PLATFORMS=cuda without a GPU: JAX fails at its first device use
  (injected: this process's JAX has long started its backend)."""

  def no_backend():
    raise error

  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  monkeypatch.setattr(sharding, "is_primary", no_backend)
  status, err = _main(capsys, f"--workdir={tmp_path / 'run'}")
  _one_line_exit_2(status, err, "JAX cannot start its backend "
                   f"(JAX_PLATFORMS=cuda): {says}", "; unset JAX_PLATFORMS "
                   "or name a platform this machine has (e.g. "
                   "JAX_PLATFORMS=cpu).")
  assert not (tmp_path / "run").exists()


def _full_disk_on_save(monkeypatch):
  """Orbax's save writes its temporary step, then the disk is full."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step < 2:
      return real_save(self, step, *args, **kwargs)
    tmp = os.path.join(str(self.directory),
                       f"{step}.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp, "state"))
    # As orbax's writer threads do before the error reaches the caller.
    logging.getLogger("absl").error("_SignalingThread.run() raised ...")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                  os.path.join(tmp, "state", "d"))

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_disk_full_during_checkpoint(capsys, caplog, tmp_path, monkeypatch):
  """The second save fails with ENOSPC: one line, exit 2, the first kept,
  orbax's logged tracebacks dropped."""
  _full_disk_on_save(monkeypatch)
  tree = {"w": jnp.arange(3.0)}

  def run(config, scenario, log_fn, checkpoints, start_time):
    del config, scenario, log_fn, start_time
    checkpoints.save(tree, {"task": 0})
    checkpoints.save(tree, {"task": 1})
    raise AssertionError("the full disk was not noticed")

  monkeypatch.setattr(loop, "run", run)
  workdir = tmp_path / "run"
  status, err = _main(capsys, f"--workdir={workdir}")
  directory = workdir / "checkpoints"
  _one_line_exit_2(
      status, err,
      f"the disk is full: checkpoint 2 could not be saved in {directory} "
      "(No space left on device)",
      f"the last good checkpoint {directory / '1'} is kept; free some space "
      "and run the same command again to resume from it.")
  assert "_SignalingThread" not in caplog.text
  assert sorted(os.listdir(directory)) == ["1"]  # the half-written one gone
  ckpt = checkpoint.Checkpointer(str(workdir))
  restored, meta = ckpt.restore({"w": jnp.zeros(3)})
  ckpt.close()
  assert meta == {"task": 0} and restored["w"].tolist() == [0.0, 1.0, 2.0]


def test_disk_full_elsewhere_is_one_line(capsys, tmp_path, monkeypatch):
  """ENOSPC writing any other file (here the config) is one line too."""

  def full(rundir, values):
    del values
    path = os.path.join(rundir, outputs.CONFIG)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(outputs, "write_config", full)
  workdir = tmp_path / "run"
  status, err = _main(capsys, f"--workdir={workdir}")
  _one_line_exit_2(status, err, f"the disk is full at {workdir / 'config'}; "
                   "free some space, then run the same command again "
                   "(finished files are kept).")


def test_workdir_path_too_long(capsys, tmp_path):
  # About 4000 characters in names of 199: each is legal, the whole too long
  # for the files a run writes under it (PATH_MAX is 4096 on Linux).
  workdir = str(tmp_path) + ("/" + "d" * 199) * 20
  assert 3900 < len(workdir) < 4096 - 20
  status, err = _main(capsys, f"--workdir={workdir}", *_NO_TRAINING)
  line = _one_line_exit_2(status, err, "is too long:", "choose a shorter "
                          "--workdir.")
  assert len(line) < 400
  assert os.listdir(tmp_path) == []


def test_workdir_name_too_long(capsys, tmp_path):
  workdir = tmp_path / ("n" * 300)
  status, err = _main(capsys, f"--workdir={workdir}", *_NO_TRAINING)
  _one_line_exit_2(status, err, "has a name of 300 bytes, longer than this "
                   "system's limit of 255; choose a shorter --workdir.")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
  previous = os.umask(umask)
  try:
    outputs.write_config(str(tmp_path), {"lr": 0.1, "tdm": True})
    outputs.write_results(str(tmp_path), {"final": {}})
    outputs.MetricsLog(str(tmp_path))({"event": "epoch"})
    (tmp_path / "plain").write_text("")
  finally:
    os.umask(previous)
  want = 0o666 & ~umask
  for name in (outputs.CONFIG, outputs.RESULTS, outputs.METRICS_LOG,
               "plain"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
