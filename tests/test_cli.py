"""The command line: bad input answers with one line and exit 2; a run works.

The end-to-end run uses the digits bundled with scikit-learn, so it needs no
download and no ../shared data.
"""

import json
import os
import subprocess
import sys

import pytest

from sparcl_jax.training import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "experiments", "train.py")
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")


def _run_main(capsys, *args):
  status = cli.main(["train.py", *args])
  captured = capsys.readouterr()
  return status, captured.err


def _assert_usage_error(status, err, *fragments):
  assert status == 2
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("train.py: error: ")
  assert "Traceback" not in err
  for fragment in fragments:
    assert fragment in lines[0]


@pytest.mark.parametrize("flag,fragment", [
    ("--dataset=imagenet22k", "--dataset='imagenet22k' is not known"),
    ("--model=vit", "--model='vit' is not known"),
    ("--method=magic", "--method='magic' is not known"),
    ("--optimizer=lion", "--optimizer='lion' is not known"),
    ("--lr=abc", "lr"),
    ("--epochs=-1", "--epochs=-1 must be at least 1"),
    ("--batch_size=0", "--batch_size=0 must be at least 1"),
    ("--lr=-0.1", "must be a positive number"),
    ("--buffer_size=-5", "--buffer_size=-5 must be at least 0"),
    ("--hidden_sizes=100,x", "comma-separated positive integers"),
    ("--val_fraction=1.5", "must be in [0, 1)"),
    ("--no_such_flag=1", "no_such_flag"),
    # A method's own flags are checked when the method reads them.
    ("--method=sparcl_derpp --sparsity=1.5", "--sparsity=1.5 is impossible"),
    ("--method=sparcl_derpp --gradient_sparsity=-0.1",
     "--gradient_sparsity=-0.1 is impossible"),
    ("--method=clnp --margin=120", "--margin=120.0 must be in [0, 100]"),
    ("--method=sparcl_er --ddr_epochs=5,x",
     "comma-separated non-negative integers"),
    ("--method=ewc --lr_schedule=step", "--lr_schedule='step' is not known"),
    ("--method=clnp --prune_search=golden",
     "--prune_search='golden' is not known"),
    ("--method=clnp --finetune_lr=-0.1",
     "--finetune_lr=-0.1 must be positive, or 0"),
    # A bad value refuses the run even beside a flag the method ignores.
    ("--method=clnp --buffer_size=5000 --margin=-1",
     "--margin=-1.0 must be in [0, 100]"),
])
def test_bad_flag_is_one_line_exit_2(capsys, tmp_path, flag, fragment):
  status, err = _run_main(capsys, f"--workdir={tmp_path / 'run'}",
                          "--dataset=digits", "--data_source=digits",
                          *flag.split())
  _assert_usage_error(status, err, fragment)
  assert not (tmp_path / "run").exists()


def test_missing_workdir_is_reported(capsys):
  status, err = _run_main(capsys, "--dataset=digits")
  _assert_usage_error(status, err, "--workdir is required")


def test_missing_flagfile_is_reported(capsys, tmp_path):
  status, err = _run_main(capsys, f"--flagfile={tmp_path / 'nope.cfg'}",
                          f"--workdir={tmp_path}")
  _assert_usage_error(status, err, "nope.cfg")


def test_buffer_larger_than_data(capsys, tmp_path):
  status, err = _run_main(capsys, f"--workdir={tmp_path}", "--method=er",
                          "--buffer_size=100000")
  _assert_usage_error(status, err, "--buffer_size=100000 is larger than the")


def test_unwritable_workdir(capsys, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  status, err = _run_main(capsys, f"--workdir={blocker / 'run'}")
  _assert_usage_error(status, err, "cannot write to --workdir")


def test_missing_data_dir_names_directory(capsys, tmp_path):
  missing = tmp_path / "no_mnist_here"
  args = (f"--workdir={tmp_path / 'run'}", "--dataset=mnist",
          "--data_source=files", f"--data_dir={missing}")
  status, err = _run_main(capsys, *args, "--nodownload")
  _assert_usage_error(status, err, f"mnist: --data_dir={missing} does not "
                      "exist")
  # Downloading, the folder is made for the files, and removed again when
  # the download fails (conftest.py's mirror refuses connections).
  status, err = _run_main(capsys, *args)
  _assert_usage_error(status, err, "mnist: cannot download http://127.0.0.1:",
                      f"put train-images-idx3-ubyte.gz in {missing / 'mnist'} "
                      "by hand")
  assert not missing.exists()


def test_finished_results_are_never_overwritten(capsys, tmp_path):
  results = tmp_path / "results.json"
  results.write_text('{"final": "precious"}')
  status, err = _run_main(capsys, f"--workdir={tmp_path}")
  _assert_usage_error(status, err, "already holds finished results",
                      "--overwrite")
  assert results.read_text() == '{"final": "precious"}'


def test_a_closed_stdout_costs_a_finished_run_nothing(tmp_path):
  workdir = tmp_path / "closed"
  proc = subprocess.Popen(
      [sys.executable, TRAIN, f"--flagfile={QUICKSTART}",
       f"--workdir={workdir}", "--epochs=1", "--num_tasks=2",
       "--notensorboard"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  proc.stdout.close()  # nobody reads: every write to stdout fails
  err = proc.stderr.read()
  assert proc.wait(timeout=300) == 0, err[-2000:]
  assert err.splitlines() == [
      f"train.py: the summary could not be printed ([Errno 32] Broken "
      f"pipe); the results are in {workdir / 'results.json'}"]
  assert json.loads((workdir / "results.json").read_text())["final"]


def test_end_to_end_quickstart_run(tmp_path):
  """One short epoch of the quickstart config through the real script."""
  workdir = tmp_path / "quick"
  proc = subprocess.run(
      [sys.executable, TRAIN, f"--flagfile={QUICKSTART}",
       f"--workdir={workdir}", "--epochs=1", "--num_tasks=2"],
      capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "mean" in proc.stdout
  # Progress lines reach a pipe too: one per epoch and one per task.
  progress = [l.split("  ")[0] for l in proc.stdout.splitlines()
              if l.startswith("task ") and ("epoch" in l or "done" in l)]
  assert progress == ["task 1/2 epoch 1/1", "task 1/2 done",
                      "task 2/2 epoch 1/1", "task 2/2 done"]
  results = json.loads((workdir / "results.json").read_text())
  class_il = results["acc_matrix"]["class_il"]
  task_il = results["acc_matrix"]["task_il"]
  assert len(class_il) == 2 and all(len(row) == 2 for row in class_il)
  for key in ("class_il", "task_il", "forgetting_class_il",
              "forgetting_task_il", "bwt_class_il", "bwt_task_il"):
    assert isinstance(results["final"][key], float)
  assert results["final"]["class_il"] == pytest.approx(
      sum(class_il[-1]) / 2)
  # After task 1, task 2's classes are unseen: Class-IL accuracy on it is 0.
  assert class_il[0][1] == 0.0
  assert task_il[1][1] > 50.0
  assert results["flags"]["method"] == "derpp"
  assert (workdir / "acc_matrix.png").stat().st_size > 1000
  records = [json.loads(l) for l in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["event"] for r in records] == ["epoch", "eval", "epoch", "eval"]
  assert "--method=derpp" in (workdir / "config").read_text().splitlines()
  # Running again on the same work directory refuses, and keeps the results.
  again = subprocess.run(
      [sys.executable, TRAIN, f"--flagfile={QUICKSTART}",
       f"--workdir={workdir}"], capture_output=True, text=True, timeout=120,
      cwd=REPO, check=False)
  assert again.returncode == 2
  assert json.loads((workdir / "results.json").read_text()) == results


@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(os.path.join(REPO, "experiments", "configs"))
    if f.endswith(".cfg")))
def test_every_shipped_config_parses_and_validates(name, tmp_path,
                                                  monkeypatch):
  # From a folder other than the repository: a config's own --flagfile=
  # lines resolve against the config's folder.
  monkeypatch.chdir(tmp_path)
  config, ignored = cli.parse_args([
      "train.py", f"--flagfile={os.path.join(REPO, 'experiments', 'configs', name)}",
      f"--workdir={tmp_path}", f"--data_dir={tmp_path}"])
  assert config.workdir == str(tmp_path)
  # A shipped config sets only flags its method reads: it runs without a
  # warning.
  assert ignored == ()
  if name.startswith("permuted_mnist_") and "_cpu" not in name:
    # The README's CLNP table: one setting for the four methods.
    assert (config.num_tasks, config.hidden_sizes, config.epochs,
            config.lr_schedule, config.batch_size) == (
                10, "2000,2000", 20, "cosine", 256)


def test_saved_config_repeats_the_run_from_another_folder(tmp_path,
                                                          monkeypatch):
  from sparcl_jax.training import config as config_lib, outputs
  here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
  here.mkdir()
  elsewhere.mkdir()
  monkeypatch.chdir(here)
  config = cli.parse_config([
      "train.py", "--flagfile=" + os.path.join(
          REPO, "experiments", "configs", "split_cifar10_sparcl_derpp.cfg"),
      "--workdir=run", "--data_dir=~/cifar"])
  # The nested base config (split_cifar10_derpp.cfg) was read.
  assert (config.method, config.model, config.nf, config.epochs,
          config.sparsity) == ("sparcl_derpp", "resnet18", 64, 50, 0.75)
  assert config.workdir == str(here / "run")
  assert config.data_dir == os.path.expanduser("~/cifar")
  outputs.write_config(str(here), config_lib.to_dict(config))
  monkeypatch.chdir(elsewhere)
  again = cli.parse_config(["train.py", f"--flagfile={here / 'config'}"])
  assert again == config


def test_bars_are_drawn_on_a_terminal_or_in_a_kernel_with_widgets(
    monkeypatch):
  import importlib.util
  import io
  import types
  from sparcl_jax.training import tasks

  class Terminal(io.StringIO):

    def isatty(self):
      return True

  monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  assert not tasks.bars_drawable()
  monkeypatch.setattr(sys, "stderr", Terminal())
  assert tasks.bars_drawable()
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
  find_spec = importlib.util.find_spec
  widgets = {"ipywidgets": None}
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: widgets.get(name, find_spec(name, *a)))
  assert not tasks.bars_drawable()  # a kernel without ipywidgets
  widgets["ipywidgets"] = object()
  assert tasks.bars_drawable()
