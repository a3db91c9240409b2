"""Per-method settings: each method's flags, checked and recorded for it only.

A method reads the fields of its settings class (sparcl_jax/methods/
settings.py). A flag given for another method is named in one warning line
and left out of the run and its outputs; a bad value of a flag the method
reads refuses the run in one line. The runs are tiny digits runs (no files
needed).
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from sparcl_jax import methods
from sparcl_jax.errors import ConfigError
from sparcl_jax.methods import settings as settings_lib
from sparcl_jax.training import cli
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import resume_checks
from sparcl_jax.training.config import RunConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "experiments", "train.py")
CONFIGS = os.path.join(REPO, "experiments", "configs")
TINY = ["--dataset=digits", "--data_source=digits", "--epochs=1",
        "--num_tasks=2", "--hidden_sizes=16", "--noprogress",
        "--notensorboard"]


def _lines(text):
  return [line for line in text.splitlines() if line.strip()]


def _saved_flags(workdir):
  """The names the saved ``config`` flagfile sets (``--noX`` as ``X``)."""
  names = []
  for line in (workdir / "config").read_text().splitlines():
    name = line[2:].split("=")[0]
    if "=" not in line and name.startswith("no") and name[2:] in {
        f.name for f in config_lib.config_fields()}:
      name = name[2:]
    names.append(name)
  return names


def test_clnp_with_a_buffer_size_warns_once_and_records_none(tmp_path):
  """The issue's check: the run trains, one warning line names the flag,
  and neither the saved config nor results.json holds it."""
  workdir = tmp_path / "clnp"
  proc = subprocess.run(
      [sys.executable, TRAIN, "--method=clnp", "--buffer_size=500",
       "--val_fraction=0.1", f"--workdir={workdir}", *TINY],
      capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert _lines(proc.stderr) == [
      "train.py: warning: --buffer_size does not apply to --method=clnp; "
      "ignored."]
  saved = _saved_flags(workdir)
  assert "method" in saved and "margin" in saved
  assert "buffer_size" not in saved
  flags = json.loads((workdir / "results.json").read_text())["flags"]
  assert flags["method"] == "clnp" and "buffer_size" not in flags
  assert set(flags) == set(saved)
  # The saved config is a flagfile that repeats the run without a warning.
  config, ignored = cli.parse_args(
      ["train.py", f"--flagfile={workdir / 'config'}"])
  assert ignored == () and config.method == "clnp"


def test_derpp_after_the_sparcl_flagfile_is_the_dense_run(capsys, tmp_path):
  """``--flagfile=<SparCL config> --method=derpp``: the SparCL flags are
  named in one line and dropped; the run is the DER++ config's own."""
  sparcl_cfg = os.path.join(CONFIGS, "split_mnist_sparcl_derpp.cfg")
  derpp_cfg = os.path.join(CONFIGS, "split_mnist_derpp_cpu.cfg")
  config, ignored = cli.parse_args(["train.py", f"--flagfile={sparcl_cfg}",
                                    "--method=derpp", "--workdir=/tmp/x",
                                    "--data_dir=/tmp"])
  assert ignored == ("sparsity", "sparsity_distribution",
                     "mask_update_interval", "mask_extra_growth",
                     "mask_swap_fraction", "tdm", "dgm", "ddr",
                     "importance_lambda", "gradient_sparsity", "dgm_refresh",
                     "ddr_epochs", "ddr_fraction")
  assert config == cli.parse_config(["train.py", f"--flagfile={derpp_cfg}",
                                     "--workdir=/tmp/x", "--data_dir=/tmp"])
  # Trained on digits: the warning is the run's one stderr line, and the
  # saved config holds DER++'s flags without --tdm --dgm --ddr.
  workdir = tmp_path / "derpp"
  status = cli.main(["train.py", f"--flagfile={sparcl_cfg}", "--method=derpp",
                     f"--workdir={workdir}", "--minibatch_size=16",
                     "--buffer_size=50", *TINY])
  err = capsys.readouterr().err
  assert status == 0, err
  assert _lines(err) == [
      "train.py: warning: --sparsity, --sparsity_distribution, "
      "--mask_update_interval, --mask_extra_growth, --mask_swap_fraction, "
      "--tdm, --dgm, --ddr, --importance_lambda, --gradient_sparsity, "
      "--dgm_refresh, --ddr_epochs, --ddr_fraction do not apply to "
      "--method=derpp; ignored."]
  text = (workdir / "config").read_text().splitlines()
  assert "--method=derpp" in text and "--alpha=0.2" in text
  for line in ("--tdm", "--dgm", "--ddr", "--notdm", "--nodgm", "--noddr"):
    assert line not in text
  saved = _saved_flags(workdir)
  assert not {"sparsity", "mask_structure", "ddr_epochs"} & set(saved)
  flags = json.loads((workdir / "results.json").read_text())["flags"]
  assert set(flags) == set(saved)


def test_dgm_and_ddr_that_would_do_nothing_are_said_at_the_start(capsys,
                                                                 tmp_path):
  """--sparsity=0.98 leaves DGM nothing to mask, and the default
  --ddr_epochs (5,10,15,20) never come in a one-epoch task: one warning line
  each, and results.json's parts agree."""
  workdir = tmp_path / "sparcl"
  status = cli.main(["train.py", "--method=sparcl_derpp", "--sparsity=0.98",
                     f"--workdir={workdir}", "--minibatch_size=16",
                     "--buffer_size=50", *TINY])
  err = capsys.readouterr().err
  assert status == 0, err
  assert _lines(err) == [
      "train.py: warning: --dgm does nothing at --sparsity=0.98: the weight "
      "mask zeroes more of each gradient than --gradient_sparsity=0.8 would; "
      "the run trains without DGM.",
      "train.py: warning: --ddr_epochs=5,10,15,20: epochs 5, 10, 15, 20 come "
      "after a task's last epoch (--epochs=1 counts 0-0); DDR removes no "
      "data in this run."]
  results = json.loads((workdir / "results.json").read_text())
  assert results["parts"] == ["TDM"]
  config = RunConfig(method="sparcl_derpp", epochs=6, ddr_epochs="2,5")
  assert methods.get("sparcl_derpp").inert_flags(config) == ()
  assert methods.get("sparcl_derpp").inert_flags(
      config_lib.replace(config, epochs=5, mask_structure="grouped",
                         sparsity=0.9)) == (
      "--dgm does nothing at --sparsity=0.9: the weight mask zeroes more of "
      "each gradient than --gradient_sparsity=0.8 would; the run trains "
      "without DGM.",
      "--ddr_epochs=2,5: epoch 5 comes after a task's last epoch (--epochs=5 "
      "counts 0-4); DDR removes no data at it.")
  assert methods.get("derpp").inert_flags(config) == ()


def test_bad_value_refuses_in_one_line_without_the_warning(capsys, tmp_path):
  status = cli.main(["train.py", f"--workdir={tmp_path / 'run'}",
                     "--method=clnp", "--buffer_size=500", "--margin=200",
                     *TINY])
  err = capsys.readouterr().err
  assert status == 2
  assert _lines(err) == ["train.py: error: --margin=200.0 must be in "
                         "[0, 100] (accuracy points)."]
  assert not (tmp_path / "run").exists()


def test_an_ignored_flag_is_at_its_default_and_unchecked():
  config, ignored = cli.parse_args(["train.py", "--workdir=/tmp/x",
                                    "--method=derpp", "--sparsity=0.9",
                                    "--mask_structure=grouped",
                                    "--lr_schedule=cosine", "--alpha=0.3"])
  assert ignored == ("lr_schedule", "sparsity", "mask_structure")
  assert (config.sparsity, config.mask_structure, config.lr_schedule,
          config.alpha) == (0.75, "unstructured", "constant", 0.3)
  # A flag the method reads is not named, even at its default value.
  _, ignored = cli.parse_args(["train.py", "--workdir=/tmp/x",
                               "--method=clnp", "--margin=0.1"])
  assert ignored == ()


def test_outputs_hold_the_flags_of_the_method_only():
  derpp = config_lib.to_dict(RunConfig(method="derpp"))
  assert {"alpha", "beta", "buffer_size", "lr", "seed"} <= set(derpp)
  assert not {"tdm", "dgm", "ddr", "sparsity", "margin", "ewc_lambda",
              "lr_schedule"} & set(derpp)
  sparcl = config_lib.to_dict(RunConfig(method="sparcl_derpp"))
  assert {"tdm", "dgm", "ddr", "sparsity", "alpha"} <= set(sparcl)
  assert config_lib.to_dict(RunConfig(method="ewc")).keys() == set(
      config_lib.common_names()) | {"lr_schedule", "ewc_lambda"}


def test_a_checkpoint_with_every_flag_resumes_under_the_method_flags():
  """Checkpoints written before this change hold every method's flags."""
  current = config_lib.to_dict(RunConfig(method="derpp"))
  old = dataclasses.asdict(RunConfig(method="derpp", sparsity=0.9))
  resume_checks.check_config(old, current, "/w/checkpoints")
  with pytest.raises(ConfigError, match="--alpha=0.5 there, 0.1 here"):
    resume_checks.check_config(dict(old, alpha=0.5), current,
                               "/w/checkpoints")


def _help_groups(text):
  """``{heading: [flag names]}`` of a ``--help`` text."""
  groups, heading = {}, None
  for line in text.splitlines():
    if line and not line.startswith(" ") and line.endswith(":"):
      heading = line[:-1]
      groups[heading] = []
    elif heading is not None and line.startswith("  --"):
      name = line[4:].split(":")[0]
      groups[heading].append(name[4:] if name.startswith("[no]") else name)
  return groups


def test_help_names_the_methods_that_read_a_methods_own_flag(capsys):
  # --help groups flags by what they configure (tests/test_help.py); a
  # flag of some methods only names them, from their settings classes.
  assert cli.main(["train.py", "--help"]) == 0
  text = " ".join(capsys.readouterr().out.split())
  assert ("--ewc_lambda: EWC penalty weight lambda: the loss adds lambda / 2 "
          "x sum over past tasks t of F_t (theta - theta*_t)^2. "
          "[methods: ewc]") in text
  assert "[methods: derpp, sparcl_derpp, snip_derpp, rigl_derpp]" in text
  assert ("Reservoir buffer size, in examples. [methods: er, der, derpp, "
          "er_ace, sparcl_er, sparcl_derpp, snip_derpp, rigl_derpp]") in text
  assert "--lr: Learning rate (the peak rate under --lr_schedule=cosine). (" \
      in text


def test_help_method_lists_the_flags_that_method_reads(capsys):
  assert cli.main(["train.py", "--help_method=clnp"]) == 0
  groups = _help_groups(capsys.readouterr().out)
  listed = {n for h, names in groups.items() if h != "absl.flags"
            for n in names}
  assert listed == set(config_lib.applying(RunConfig(method="clnp")))
  assert "margin" in listed and "buffer_size" not in listed
  assert cli.main(["train.py", "--help_method=magic"]) == 2
  assert _lines(capsys.readouterr().err) == [
      "train.py: error: --help_method='magic' is not known; choose one of: "
      f"{', '.join(methods.names())}."]


@pytest.mark.parametrize("name", methods.names())
def test_each_method_declares_frozen_settings_that_run_config_holds(name):
  cls = methods.get(name).settings
  assert issubclass(cls, settings_lib.Settings)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  run_fields = {f.name: f for f in config_lib.config_fields()}
  for flag, field in fields.items():
    # RunConfig inherits the field itself: one default, one help text.
    assert run_fields[flag] == field, flag
    assert field.metadata["help"], flag
  assert not set(fields) & set(config_lib.common_names())
  settings = RunConfig(method=name).settings
  assert type(settings) is cls  # pylint: disable=unidiomatic-typecheck
  for flag in fields:
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(settings, flag, getattr(settings, flag))


def test_every_flag_is_common_or_read_by_a_method():
  read = {n for m in methods.names() for n in methods.get(m).settings
          .flag_names()}
  names = {f.name for f in config_lib.config_fields()}
  assert read | set(config_lib.common_names()) == names
  assert not read & set(config_lib.common_names())


@pytest.mark.parametrize("method,settings,message", [
    ("er", settings_lib.ErSettings(buffer_size=-1), "--buffer_size=-1 must "
     "be at least 0"),
    ("er", settings_lib.ErSettings(buffer_size=0), "--method=er replays from "
     "a buffer: set --buffer_size to at least 1."),
    ("er_ace", settings_lib.ReplaySettings(buffer_size=8, minibatch_size=16),
     r"the replay mini-batch \(16\) is larger than --buffer_size=8"),
    ("der", settings_lib.DerSettings(alpha=-0.1), "--alpha=-0.1 must be "
     "non-negative"),
    ("derpp", settings_lib.DerppSettings(beta=-1.0), "--beta=-1.0 must be "
     "non-negative"),
    ("snip_derpp", settings_lib.SnipDerppSettings(sparsity=1.0),
     r"--sparsity=1.0 is impossible: it must be in \[0, 1\)"),
    ("snip_derpp", settings_lib.SnipDerppSettings(sparse_layers="(("),
     "is not a valid regular expression"),
    ("snip_derpp", settings_lib.SnipDerppSettings(mask_structure="grouped",
                                                  mask_group=10),
     "keeps a static mask"),
    ("rigl_derpp", settings_lib.RiglDerppSettings(mask_update_interval=0),
     "--mask_update_interval=0 must be at least 1"),
    ("rigl_derpp", settings_lib.RiglDerppSettings(mask_growth="psychic"),
     "--mask_growth: "),
    ("sparcl_er", settings_lib.SparclErSettings(sparsity=0.995),
     "leaves no weights once TDM swaps connections"),
    ("sparcl_derpp", settings_lib.SparclDerppSettings(ddr_fraction=0.3),
     "--ddr_fraction=0.3 at 4 removal epochs would remove the whole task"),
    ("sparcl_derpp", settings_lib.SparclDerppSettings(dgm_refresh=0),
     "--dgm_refresh=0 must be at least 1"),
    ("single_task", settings_lib.TaskLevelSettings(lr_schedule="step"),
     "--lr_schedule='step' is not known"),
    ("clnp", settings_lib.ClnpSettings(activity_reading="max"),
     "--activity_reading='max' is not known"),
    ("clnp", settings_lib.ClnpSettings(l1=-1e-5), "--l1=-1e-05 must be "
     "non-negative"),
    ("clnp", settings_lib.ClnpSettings(finetune_epochs=-1),
     "--finetune_epochs=-1 must be at least 0"),
    ("ewc", settings_lib.EwcSettings(ewc_lambda=-1.0), "--ewc_lambda=-1.0 "
     "must be non-negative"),
    ("si", settings_lib.SiSettings(si_xi=-1.0), "--si_xi=-1.0 must be "
     "positive"),
    ("si", settings_lib.SiSettings(si_xi=0.0), "--si_xi=0.0 must be "
     "positive"),
])
def test_settings_refuse_impossible_values(method, settings, message):
  config = dataclasses.replace(
      RunConfig(workdir="/tmp/x", method=method, hidden_sizes="40,40"),
      **dataclasses.asdict(settings))
  with pytest.raises(ConfigError, match=message):
    settings.validate(config)
  # RunConfig's validate reaches the same check through the method.
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)
  # At the defaults, the method's settings are possible.
  default = RunConfig(workdir="/tmp/x", method=method)
  default.settings.validate(default)
