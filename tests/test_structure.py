"""The library's shape: no import cycles, modules of one job (none over 500
lines), no lazy re-exports, and method names compared only inside
``sparcl_jax/methods``."""

import ast
import os
import pkgutil
import sys

import pytest

from sparcl_jax import methods

PACKAGE = os.path.dirname(os.path.abspath(methods.__file__)).rsplit(os.sep,
                                                                    1)[0]


def _modules() -> dict[str, str]:
  """``{dotted name: path}`` of every module of the package."""
  root = os.path.dirname(PACKAGE)
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def _import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
  """Module-level imports between the package's modules; importing a
  submodule also runs its parent packages, so they count too."""
  graph = {name: set() for name in modules}
  for name, path in modules.items():
    with open(path) as f:
      body = ast.parse(f.read()).body
    targets = []
    for node in body:
      if isinstance(node, ast.Import):
        targets += [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
          sub = f"{node.module}.{alias.name}"
          targets.append(sub if sub in modules else node.module)
    for target in targets:
      parts = target.split(".")
      for i in range(1, len(parts) + 1):
        parent = ".".join(parts[:i])
        if (parent in modules and parent != name and
            not name.startswith(parent + ".")):
          graph[name].add(parent)
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  found, done = [], set()
  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

  def visit(node, stack, on_stack):
    done.add(node)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt in on_stack:
        found.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in done:
        visit(nxt, stack, on_stack)
    stack.pop()
    on_stack.discard(node)

  for node in sorted(graph):
    if node not in done:
      visit(node, [], set())
  return found


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [
      ["a", "b", "c", "a"]]
  assert not _cycles({"a": {"b"}, "b": set()})


def test_no_import_cycle_in_the_package():
  assert _cycles(_import_graph(_modules())) == []


def test_no_module_over_500_lines():
  lengths = {}
  for name, path in _modules().items():
    with open(path) as f:
      lengths[name] = sum(1 for _ in f)
  assert {k: v for k, v in lengths.items() if v > 500} == {}


def test_no_module_reexports_lazily():
  # A module-level __getattr__ hides where a name lives and what imports it.
  lazy = []
  for name, path in _modules().items():
    with open(path) as f:
      tree = ast.parse(f.read())
    if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
           for node in tree.body):
      lazy.append(name)
  assert lazy == []


def test_lower_layers_never_import_the_run_machinery():
  # training/ (the loop, CLI, outputs) sits on top: nothing below reads it.
  graph = _import_graph(_modules())
  upward = sorted(
      (name, dep) for name, deps in graph.items() for dep in deps
      if dep.startswith("sparcl_jax.training") and
      not name.startswith("sparcl_jax.training"))
  assert upward == []


def _method_name_comparisons() -> list[str]:
  names = set(methods.names())
  hits = []
  for module, path in _modules().items():
    if module.startswith("sparcl_jax.methods"):
      continue
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if not isinstance(node, ast.Compare):
        continue
      strings = []
      for operand in [node.left] + node.comparators:
        elements = (operand.elts if isinstance(operand, (ast.Tuple, ast.List,
                                                         ast.Set))
                    else [operand])
        strings += [e.value for e in elements
                    if isinstance(e, ast.Constant) and isinstance(e.value,
                                                                  str)]
      if names & set(strings):
        hits.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
  return hits


def test_method_names_are_compared_at_most_five_times_outside_methods():
  hits = _method_name_comparisons()
  assert len(hits) <= 5, "\n".join(hits)


def test_every_module_of_methods_registers_on_import():
  # A new method is one file: the package imports every module in it.
  modules = {m.name for m in pkgutil.iter_modules(methods.__path__)}
  assert {"er_ace", "der", "clnp"} <= modules
  for name in modules:
    assert f"sparcl_jax.methods.{name}" in sys.modules
  assert methods.get("er_ace").replay_batches == 1
  with pytest.raises(methods.ConfigError, match="choose one of: sgd, joint"):
    methods.get("er_acee")
