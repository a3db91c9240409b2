"""The README's Python examples run as written."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "README.md")


def test_readme_python_blocks_run(capsys):
  with open(README) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
  assert blocks, "the README lost its Python example"
  for block in blocks:
    exec(compile(block, README, "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.split()
  assert printed[-1] == "0.74"
