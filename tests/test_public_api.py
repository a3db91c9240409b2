"""The curated public namespace: ``import sparcl_jax as sc``.

``sparcl_jax.__all__`` lists what a user composes (transforms, sparse
layers, buffer, replay losses, DDR, CLNP, FLOPs, metrics, errors);
internals live in their submodules. These tests keep it small, documented
and the only top-level names the repository itself uses.
"""

from __future__ import annotations

import glob
import importlib.util
import inspect
import os
import re
import types

import pytest

import sparcl_jax as sc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Helpers and low-level pieces that must stay in their submodules.
KNOWN_INTERNALS = ("bit_select", "control_flow", "row_mask", "selection",
                   "paths", "kept_membership", "random_rows",
                   "initial_values", "grouped_matmul", "require_selection",
                   "drop_and_grow", "magnitude_rows", "grouped_layers",
                   "sparsity_variables", "activity_sums", "merge_fisher_slot",
                   "squared_gradient_sum")


def _is_submodule(name: str) -> bool:
  return importlib.util.find_spec(f"sparcl_jax.{name}") is not None


def test_at_most_80_public_names_without_duplicates():
  assert len(sc.__all__) <= 80
  assert len(set(sc.__all__)) == len(sc.__all__)


def test_dir_is_the_public_names_and_dunders():
  listed = set(dir(sc))
  assert set(sc.__all__) <= listed
  extra = listed - set(sc.__all__)
  assert all(name.startswith("__") for name in extra), sorted(extra)


def test_every_public_name_resolves_to_no_module():
  for name in sc.__all__:
    obj = getattr(sc, name)
    assert not isinstance(obj, types.ModuleType), name


def test_star_import_gives_the_public_names():
  namespace = {}
  exec("from sparcl_jax import *", namespace)  # pylint: disable=exec-used
  assert set(namespace) - {"__builtins__"} == set(sc.__all__)


def test_known_internals_are_not_public():
  assert not set(KNOWN_INTERNALS) & set(sc.__all__)


def test_internals_stay_importable_from_their_modules():
  from sparcl_jax.sparse import grouped, masks  # pylint: disable=g-import-not-at-top
  from sparcl_jax import control_flow, paths  # pylint: disable=g-import-not-at-top,unused-import
  assert callable(masks.bit_select) and callable(grouped.row_mask)
  import sparcl_jax.sparse.tdm  # pylint: disable=g-import-not-at-top,unused-import
  assert sc.sparse.tdm.tdm is sc.tdm


@pytest.mark.parametrize("name", sc.__all__)
def test_public_name_has_a_summary_and_an_example(name):
  doc = getattr(sc, name).__doc__  # its own, not an inherited one
  assert doc and doc.strip(), f"{name} has no docstring"
  summary = doc.strip().splitlines()[0].strip()
  assert len(summary) > 10, f"{name}: no one-line summary"
  assert ">>>" in doc, f"{name}: no example"


def _uses_of_the_top_level(text: str, sc_alias: bool):
  """Names used as ``sc.<name>``, ``sparcl_jax.<name>`` or imported by
  ``from sparcl_jax import <name>``."""
  names = set(re.findall(r"(?<![\w.])sparcl_jax\.(\w+)", text))
  if sc_alias:
    names |= set(re.findall(r"(?<![\w.])sc\.(\w+)", text))
  for group in re.findall(r"from sparcl_jax import (\([^)]*\)|[\w ,*]+)",
                          text):
    for item in re.sub(r"#[^\n]*", "", group).strip("()").split(","):
      item = re.match(r"\s*(\w+|\*)", item)
      if item:
        names.add(item.group(1))
  return names


def _repo_files():
  for folder in ("tests", "examples", "benchmarks", "experiments",
                 "sparcl_jax"):
    for pattern in ("**/*.py", "**/*.ipynb"):
      yield from glob.glob(os.path.join(REPO, folder, pattern),
                           recursive=True)
  yield os.path.join(REPO, "conftest.py")


def test_the_repository_uses_only_public_top_level_names():
  bad = []
  for path in _repo_files():
    with open(path, encoding="utf-8") as f:
      text = f.read()
    # Doctests in the package get ``sc`` from conftest.py; elsewhere ``sc``
    # is the package where the file imports it so.
    sc_alias = ("import sparcl_jax as sc" in text or
                path.startswith(os.path.join(REPO, "sparcl_jax", "")))
    for name in _uses_of_the_top_level(text, sc_alias):
      if not (name in sc.__all__ or name.startswith("__") or
              name == "*" or _is_submodule(name)):
        bad.append(f"{os.path.relpath(path, REPO)}: {name}")
  assert not bad, "top-level names outside __all__:\n" + "\n".join(bad)
