"""The docs' API reference covers every public name of ``sparcl_jax``."""

import importlib.util
import pathlib

import sparcl_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOOK = ROOT / "docs" / "hooks" / "api_reference.py"


def _hook():
  spec = importlib.util.spec_from_file_location("api_reference", HOOK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reference_has_every_public_name_once_in_its_group():
  hook = _hook()
  groups = hook.api_groups((ROOT / "sparcl_jax" / "__init__.py").read_text())
  names = [name for _, _, group in groups for name in group]
  assert names == list(sparcl_jax.__all__)  # all, once, in __all__'s order
  assert all(title and description and group
             for title, description, group in groups)
  markdown = hook.api_markdown(
      (ROOT / "sparcl_jax" / "__init__.py").read_text())
  for name in sparcl_jax.__all__:
    assert markdown.count(f"::: sparcl_jax.{name}\n") == 1, name


def test_reference_page_holds_the_marker_the_hook_fills():
  page = (ROOT / "docs" / "reference" / "api.md").read_text()
  assert _hook().MARKER in page
  filled = _hook().on_page_markdown(page)
  assert "## Sparse training" in filled and "::: sparcl_jax.tdm\n" in filled


def test_a_name_outside_any_group_is_refused():
  hook = _hook()
  try:
    hook.api_groups('__all__ = [\n    "tdm",\n]\n')
  except ValueError as error:
    assert "before a group comment" in str(error)
  else:
    raise AssertionError("a name before any group comment was accepted")
