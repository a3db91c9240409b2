"""mkdocs hook: the API reference, generated from ``sparcl_jax.__all__``.

``sparcl_jax/__init__.py`` lists the public names in ``__all__``, one group
per concept, each group opened by a comment line ``# Title: what it is for``.
This hook replaces the marker ``<!-- api-reference -->`` in a page with one
section per group and a mkdocstrings entry (``::: sparcl_jax.NAME``) per
name, so the reference covers every public name by construction, in the
order ``__init__.py`` gives them.
"""

from __future__ import annotations

import pathlib
import re

MARKER = "<!-- api-reference -->"
INIT = pathlib.Path(__file__).resolve().parents[2] / "sparcl_jax" / "__init__.py"


def api_groups(source: str) -> list[tuple[str, str, list[str]]]:
  """``[(title, description, names)]`` from the ``__all__`` block of source.

  Args:
    source: the text of ``sparcl_jax/__init__.py``.

  Returns:
    The groups in order; each name once.

  Raises:
    ValueError: no ``__all__`` list, or a name before any group comment.
  """
  match = re.search(r"^__all__ = \[\n(.*?)^\]", source, re.M | re.S)
  if not match:
    raise ValueError("sparcl_jax/__init__.py has no __all__ = [...] block")
  groups: list[tuple[str, str, list[str]]] = []
  for line in match.group(1).splitlines():
    line = line.strip()
    comment = re.fullmatch(r"#\s*([^:]+):\s*(.+)", line)
    name = re.fullmatch(r"[\"'](\w+)[\"'],?", line)
    if comment:
      groups.append((comment.group(1).strip(), comment.group(2).strip(), []))
    elif name:
      if not groups:
        raise ValueError(f"__all__ names {name.group(1)} before a group comment")
      groups[-1][2].append(name.group(1))
  return groups


def api_markdown(source: str) -> str:
  """The reference's Markdown: a section per group, an entry per name."""
  parts = []
  for title, description, names in api_groups(source):
    parts.append(f"## {title}\n\n{description[0].upper()}{description[1:]}\n")
    parts += [f"::: sparcl_jax.{name}\n    options:\n      heading_level: 3\n"
              for name in names]
  return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs) -> str:
  """Fills the marker with the generated reference (mkdocs hook)."""
  del kwargs
  if MARKER not in markdown:
    return markdown
  return markdown.replace(MARKER, api_markdown(INIT.read_text()))
