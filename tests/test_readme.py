"""The Python examples of the README and of the docs pages run as written."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The dated development log quotes past code as it was; it is not a guide.
DOC_PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md")
                   if "log" not in p.relative_to(ROOT / "docs").parts)


def _python_blocks(path):
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_python_blocks_run(capsys):
  blocks = _python_blocks(README)
  assert len(blocks) >= 3, "the README lost its Python examples"
  for block in blocks:
    exec(compile(block, str(README), "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.split()
  assert printed[-1] == "0.74"


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if _python_blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_docs_python_blocks_run(page):
  for block in _python_blocks(page):
    exec(compile(block, str(page), "exec"), {})  # pylint: disable=exec-used


def test_docs_pages_with_python_exist():
  assert {os.path.basename(p) for p in DOC_PAGES if _python_blocks(p)} >= {
      "optax.md", "structured.md", "extending.md"}
