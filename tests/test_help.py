"""``train.py --help``: the flags grouped by what they configure.

Every flag the project defines is listed once, under one of the headings of
``flag_help.FLAG_GROUPS`` in that order, with its default; no help text is unsure
of itself ("(?)"). ``--list_configs`` gives each shipped config a line.
In-process (``cli.main``), so no JAX start-up per test.
"""

import os

import pytest

from sparcl_jax import methods
from sparcl_jax.training import cli
from sparcl_jax.training import flag_help
from sparcl_jax.training import flagfiles
from sparcl_jax.training import config as config_lib
from sparcl_jax.training.config import RunConfig

HEADINGS = [heading for heading, _ in flag_help.FLAG_GROUPS]


def _help(capsys, *args):
  assert cli.main(["train.py", *args]) == 0
  captured = capsys.readouterr()
  assert captured.err == ""
  return captured.out


def _groups(text):
  """``{heading: [flag names]}`` of a ``--help`` text, in printed order."""
  groups, heading = {}, None
  for line in text.splitlines():
    if line.endswith(":") and line[:-1] in HEADINGS:
      heading = line[:-1]
      assert heading not in groups, f"{heading} printed twice"
      groups[heading] = []
    elif heading is not None and line.startswith("  --"):
      name = line[4:].split(":")[0]
      groups[heading].append(name[4:] if name.startswith("[no]") else name)
  return groups


def test_help_lists_the_groups_in_order_with_their_flags(capsys):
  groups = _groups(_help(capsys, "--help"))
  assert list(groups) == HEADINGS == [
      "Data and scenario", "Model", "Method and rehearsal",
      "SparCL sparsity (masks, TDM, DGM, DDR)", "CLNP / EWC / SI",
      "Training", "Outputs and resume", "Devices and hosts"]
  assert "dataset" in groups["Data and scenario"]
  assert "scenario" in groups["Data and scenario"]
  assert {"model", "hidden_sizes", "nf"} <= set(groups["Model"])
  assert {"method", "buffer_size", "alpha", "beta"} <= set(
      groups["Method and rehearsal"])
  sparcl = set(groups["SparCL sparsity (masks, TDM, DGM, DDR)"])
  assert {"sparsity", "mask_group", "tdm", "dgm", "ddr"} <= sparcl
  assert {"l1", "margin", "activity_reading", "threshold_per_layer",
          "ewc_lambda", "si_c", "si_xi"} == set(
              groups["CLNP / EWC / SI"]) - {"prune_search", "finetune_lr",
                                            "finetune_epochs"}
  assert {"lr", "epochs", "batch_size", "seed"} <= set(groups["Training"])
  assert {"workdir", "overwrite", "checkpoint_every_steps"} <= set(
      groups["Outputs and resume"])
  assert set(groups["Devices and hosts"]) == {
      "num_devices", "coordinator_address", "num_processes", "process_id"}


def test_every_flag_is_in_exactly_one_group(capsys):
  table = [name for _, names in flag_help.FLAG_GROUPS for name in names]
  fields = [f.name for f in config_lib.config_fields()]
  assert sorted(table) == sorted(fields)
  listed = [n for names in _groups(_help(capsys, "--help")).values()
            for n in names]
  assert sorted(listed) == sorted(fields)
  # Only the project's flags: absl's own (--flagfile, --undefok) are not
  # listed as a group of their own; the usage lines explain --flagfile.
  text = _help(capsys, "--help")
  assert "absl.flags:" not in text and "--undefok" not in text
  assert text.startswith("usage: python experiments/train.py "
                         "--flagfile=CONFIG.cfg")


def test_a_new_field_outside_every_group_is_refused():
  with pytest.raises(ValueError, match="--new_flag is in no --help group"):
    flag_help.flag_group("new_flag")


@pytest.mark.parametrize("arg", ["-h", "--help", "--helpfull", "--helpshort",
                                 "-?"])
def test_every_help_spelling_prints_the_same_groups(capsys, arg):
  assert _groups(_help(capsys, arg)) == _groups(_help(capsys, "--help"))


def test_every_flag_shows_its_default_and_no_help_is_unsure(capsys):
  text = _help(capsys, "--help")
  defaults = RunConfig()
  blocks = text.split("\nData and scenario:\n")[1].split("\n  --")
  assert len(blocks) == len(config_lib.config_fields())
  for block in blocks:
    name = block.strip().lstrip("-").split(":")[0].replace("[no]", "")
    shown = getattr(defaults, name)
    if isinstance(shown, bool):
      shown = str(shown).lower()
    assert f"(default: '{shown}')" in " ".join(block.split()), name
  assert "(?)" not in text
  for field in config_lib.config_fields():
    assert "(?)" not in config_lib.field_help(field), field.name


@pytest.mark.parametrize("method", methods.names())
def test_help_method_keeps_the_groups_order(capsys, method):
  groups = _groups(_help(capsys, f"--help_method={method}"))
  assert list(groups) == [h for h in HEADINGS if h in groups]
  listed = {n for names in groups.values() for n in names}
  assert listed == set(config_lib.applying(RunConfig(method=method)))


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "experiments", "configs")


def test_list_configs_gives_every_shipped_config_a_line(capsys):
  out = _help(capsys, "--list_configs").splitlines()
  assert out[0].startswith("The configs in ")
  rows = {line.split()[0]: line.split(None, 1)[1] for line in out[1:]}
  shipped = sorted(n[:-4] for n in os.listdir(CONFIGS) if n.endswith(".cfg"))
  assert list(rows) == shipped
  for name, text in rows.items():
    # The first comment line, a sentence on its own line of the file.
    with open(os.path.join(CONFIGS, f"{name}.cfg"), encoding="utf-8") as f:
      assert f.readline() == f"# {text}\n", name
    assert text.endswith(".") and len(text) <= 90, name
  assert rows["quickstart"].startswith("Quickstart: Split Digits")


def test_list_configs_without_the_folder_is_one_line_exit_2(
    capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(flagfiles, "shipped_folder",
                      lambda: str(tmp_path / "gone"))
  assert cli.main(["train.py", "--list_configs"]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert len(captured.err.splitlines()) == 1
  assert captured.err.startswith("train.py: error: cannot list the configs "
                                 f"in {tmp_path / 'gone'}: ")
