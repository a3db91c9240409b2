"""The recipes in examples/ run as written and their assertions hold."""

import glob
import os
import runpy

import pytest

EXAMPLES = sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
    "*.py")))


def test_there_are_recipes():
  assert len(EXAMPLES) >= 1


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_recipe_runs(path):
  # Each recipe asserts its own claims (one compilation, exact counts, ...).
  runpy.run_path(path, run_name="__main__")
