"""Flagfiles read as configs: a ``--flagfile=`` inside one names a path
relative to that config's own folder.

absl resolves every ``--flagfile=`` against the current folder, so a config
that builds on another (``split_cifar10_sparcl_derpp.cfg`` on
``split_cifar10_derpp.cfg``) worked only from the folder its author ran it
in. :func:`expand` replaces each flagfile by the flags it holds before absl
parses anything: a flagfile named on the command line resolves against the
current folder, as the user typed it; one named inside a flagfile against
that file's folder. The lines kept are absl's: every line but blank ones and
comments (``#`` or ``//``), in order, so a later flag still overrides an
earlier one.

Examples:
  >>> import os, tempfile
  >>> folder = tempfile.mkdtemp()
  >>> with open(os.path.join(folder, "base.cfg"), "w") as f:
  ...   _ = f.write("# the base\\n--lr=0.1\\n--epochs=5\\n")
  >>> with open(os.path.join(folder, "more.cfg"), "w") as f:
  ...   _ = f.write("--flagfile=base.cfg\\n--epochs=1\\n")
  >>> expand(["train.py", f"--flagfile={folder}/more.cfg", "--seed=3"])
  ['train.py', '--lr=0.1', '--epochs=5', '--epochs=1', '--seed=3']
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from sparcl_jax.errors import ConfigError

_PREFIXES = ("--flagfile=", "-flagfile=")
_SEPARATE = ("--flagfile", "-flagfile")


def expand(argv: Sequence[str]) -> list[str]:
  """``argv`` with every flagfile replaced by its flags, nested ones too.

  Args:
    argv: ``sys.argv``-style list; ``argv[0]`` is the program name. Flagfiles
      are ``--flagfile=PATH``, ``-flagfile=PATH`` or ``--flagfile PATH``;
      everything after ``--`` is kept as it is.

  Returns:
    The same arguments with no flagfile left in them.

  Raises:
    ConfigError: a flagfile that cannot be opened or is not UTF-8 text, one
      that includes itself, or a ``--flagfile`` without a path.

  Examples:
    >>> expand(["train.py", "--lr=0.1", "--", "--flagfile=x"])
    ['train.py', '--lr=0.1', '--', '--flagfile=x']
  """
  argv = list(argv)
  expanded, rest = argv[:1], argv[1:]
  i = 0
  while i < len(rest):
    arg = rest[i]
    if arg == "--":
      expanded.extend(rest[i:])
      break
    if arg in _SEPARATE:
      if i + 1 == len(rest):
        raise ConfigError(f"{arg} needs a path: --flagfile=CONFIG.cfg")
      expanded.extend(_flags_of(os.path.expanduser(rest[i + 1]), ()))
      i += 2
      continue
    path = _flagfile_path(arg)
    if path is None:
      expanded.append(arg)
    else:
      expanded.extend(_flags_of(path, ()))
    i += 1
  return expanded


def _flagfile_path(arg: str) -> Optional[str]:
  for prefix in _PREFIXES:
    if arg.startswith(prefix):
      path = arg[len(prefix):].strip()
      if not path:
        raise ConfigError(f"{arg!r} names no file: --flagfile=CONFIG.cfg")
      return os.path.expanduser(path)
  return None


def _flags_of(path: str, including: tuple[str, ...]) -> list[str]:
  """The flags of one flagfile; ``including`` are the files that led here."""
  if os.path.abspath(path) in map(os.path.abspath, including):
    chain = " -> ".join((*including, path))
    raise ConfigError(f"flagfile {path} includes itself ({chain}); remove "
                      "the loop.")
  named_in = f" (named in {including[-1]})" if including else ""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as err:
    raise ConfigError(f"cannot open flagfile {path}{named_in}: "
                      f"{err.strerror or err}.") from None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as bad:
    line = raw[:bad.start].count(b"\n") + 1
    raise ConfigError(f"flagfile {path} is not UTF-8 text (byte "
                      f"{raw[bad.start]:#04x} on line {line}); save it as "
                      "UTF-8.") from None
  flags = []
  for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith(("#", "//")):
      continue
    nested = _flagfile_path(line)
    if nested is None:
      flags.append(line)
    else:
      if not os.path.isabs(nested):
        nested = os.path.join(os.path.dirname(path), nested)
      flags.extend(_flags_of(nested, (*including, path)))
  return flags


def summary(path: str) -> str:
  """A config's one-line description: its first comment line.

  Args:
    path: a flagfile.

  Returns:
    The text of the first line that starts with ``#`` or ``//``, without
    the marker; '' when the file starts with a flag or has no comment.

  Raises:
    ConfigError: the file cannot be read.

  Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.cfg")
    >>> with open(path, "w") as f:
    ...   _ = f.write("\\n# Split MNIST, DER++.\\n#\\n# More.\\n--lr=0.1\\n")
    >>> summary(path)
    'Split MNIST, DER++.'
  """
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        for marker in ("#", "//"):
          if line.startswith(marker):
            return line[len(marker):].strip()
        return ""
  except (OSError, UnicodeDecodeError) as err:
    raise ConfigError(f"cannot read config {path}: "
                      f"{getattr(err, 'strerror', None) or err}.") from None
  return ""


def shipped_folder() -> str:
  """``experiments/configs`` of the source tree this package sits in.

  Examples:
    >>> os.path.basename(shipped_folder())
    'configs'
  """
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(os.path.dirname(package), "experiments", "configs")


def configs(folder: str) -> list[tuple[str, str]]:
  """``(name, summary)`` of each ``*.cfg`` in ``folder``, by name.

  Args:
    folder: a folder of flagfiles.

  Returns:
    One pair per config: its file name without ``.cfg`` and
    :func:`summary`.

  Raises:
    ConfigError: the folder cannot be listed, or a config read.

  Examples:
    >>> dict(configs(shipped_folder()))["quickstart"][:11]
    'Quickstart:'
  """
  try:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".cfg"))
  except OSError as err:
    raise ConfigError(f"cannot list the configs in {folder}: "
                      f"{err.strerror or err}; they ship with the source "
                      "tree (experiments/configs).") from None
  return [(n[:-len(".cfg")], summary(os.path.join(folder, n)))
          for n in names]
