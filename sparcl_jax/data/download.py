"""Downloading datasets' original files, checked against their published md5.

A dataset's entry (:mod:`sparcl_jax.data.datasets`) lists its downloadable
files as :class:`RemoteFile` s: file name, official URL and the md5 published
with the dataset. :func:`fetch` downloads those the data folder lacks into
``<data folder>/<dataset name>/<file name>``, the layout the readers read.

* The data folder is ``--data_dir`` when given, else ``$SPARCL_JAX_DATA_DIR``,
  else ``~/.cache/sparcl_jax`` (:func:`data_folder`).
* ``$SPARCL_JAX_DATA_MIRROR=URL`` fetches ``URL/<dataset name>/<file name>``
  instead of the official locations: a filled data folder served over HTTP
  (``python -m http.server``) is a mirror (:func:`source_url`).
* Each file is streamed by pooch into a temporary file beside its target,
  checked against its md5, and only then moved to its name; a failed or
  interrupted transfer deletes the temporary file. Timeouts are bounded
  (:data:`TIMEOUT`) and nothing is retried, so a server that is down fails
  in seconds.

Every failure raises :class:`~sparcl_jax.errors.DataError` with one line
saying what to do, and leaves no file and no folder it created.

Examples:
  >>> from sparcl_jax.data import datasets
  >>> mnist = datasets.get("mnist")
  >>> source_url("mnist", mnist.downloads[0], mirror="http://10.0.0.5:8000/")
  'http://10.0.0.5:8000/mnist/train-images-idx3-ubyte.gz'
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from sparcl_jax.data.remote_file import RemoteFile
from sparcl_jax.errors import DataError

if TYPE_CHECKING:
  from sparcl_jax.data.datasets import DatasetSpec

DATA_DIR_ENV = "SPARCL_JAX_DATA_DIR"
MIRROR_ENV = "SPARCL_JAX_DATA_MIRROR"
# (connect, read) seconds, as requests takes them: a server that does not
# accept the connection, or stops sending, fails after this long.
TIMEOUT = (10.0, 30.0)


def data_folder(data_dir: Optional[str] = None) -> str:
  """The folder datasets are read from and downloaded to.

  Args:
    data_dir: ``--data_dir``; empty or None for the default folder.

  Returns:
    ``data_dir`` (``~`` expanded) if given, else ``$SPARCL_JAX_DATA_DIR``
    if set, else pooch's cache folder for sparcl_jax
    (``~/.cache/sparcl_jax`` on Linux).

  Examples:
    >>> data_folder("~/data") == os.path.expanduser("~/data")
    True
  """
  if data_dir:
    return os.path.expanduser(data_dir)
  if os.environ.get(DATA_DIR_ENV):
    return os.path.expanduser(os.environ[DATA_DIR_ENV])
  import pooch  # pylint: disable=g-import-not-at-top
  return str(pooch.os_cache("sparcl_jax").expanduser())


def source_url(name: str, remote: RemoteFile,
               mirror: Optional[str] = None) -> str:
  """Where ``remote`` is downloaded from.

  Args:
    name: the dataset's name.
    remote: the file.
    mirror: base URL of a mirror laid out like the data folder; None reads
      ``$SPARCL_JAX_DATA_MIRROR`` (unset or empty: the official URL).

  Returns:
    ``<mirror>/<name>/<fname>``, or ``remote.url`` without a mirror.

  Examples:
    >>> from sparcl_jax.data import datasets
    >>> cifar = datasets.get("cifar10").downloads[0]
    >>> source_url("cifar10", cifar, mirror="")
    'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
  """
  if mirror is None:
    mirror = os.environ.get(MIRROR_ENV, "")
  if not mirror:
    return remote.url
  return f"{mirror.rstrip('/')}/{name}/{remote.fname}"


def missing(spec: "DatasetSpec", root: str) -> tuple[RemoteFile, ...]:
  """The downloads of ``spec`` that ``root`` lacks, as the readers look.

  A file counts as present when its name (for a zip: the folder it unpacks
  to) or one of its ``also`` names is in ``root``, ``root/<name>`` or
  ``root/<name with dashes>``, or is ``root`` itself (an extracted folder
  given as the data folder). Presence is not a check of content: files put
  there by hand are the reader's to judge.

  Args:
    spec: the dataset's entry.
    root: the data folder.

  Returns:
    The missing files, in ``spec.downloads`` order.

  Examples:
    >>> import tempfile
    >>> from sparcl_jax.data import datasets
    >>> len(missing(datasets.get("mnist"), tempfile.mkdtemp()))
    4
  """
  dirs = dict.fromkeys([root, os.path.join(root, spec.name),
                        os.path.join(root, spec.name.replace("_", "-"))])
  itself = os.path.basename(os.path.normpath(root))
  def present(remote):
    names = (remote.unpacks_to or remote.fname,) + remote.also
    return itself in names or any(os.path.exists(os.path.join(d, n))
                                  for d in dirs for n in names)
  return tuple(r for r in spec.downloads if not present(r))


def fetch(spec: "DatasetSpec", root: str, download: bool = True,
          timeout: Optional[tuple[float, float]] = None,
          progressbar: Optional[bool] = None) -> None:
  """Downloads the files of ``spec`` that ``root`` lacks into ``root/<name>``.

  Args:
    spec: the dataset's entry.
    root: the data folder (created if missing).
    download: False forbids the network (``--nodownload``): missing files
      are an error.
    timeout: ``(connect, read)`` seconds; None takes :data:`TIMEOUT`.
    progressbar: show pooch's progress bar; None shows it when stderr is a
      terminal.

  Returns:
    None; the files are in ``root/<name>/`` (a zip extracted and deleted).

  Raises:
    DataError: a file is missing and ``download`` is False; the server
      cannot be reached or stops answering; a file's md5 is not the
      published one; the disk is full; the folder cannot be written.

  Examples:
    >>> from sparcl_jax.data import datasets
    >>> fetch(datasets.get("cifar10"), "/data")  # doctest: +SKIP
  """
  todo = missing(spec, root)
  if not todo:
    return
  folder = os.path.join(root, spec.name)
  urls = [source_url(spec.name, r) for r in todo]
  if not download:
    raise DataError(
        f"{spec.name}: {', '.join(map(_local_name, todo))} "
        f"{'is' if len(todo) == 1 else 'are'} not in {folder} and "
        f"--nodownload forbids downloading; put {_them(todo)} there by hand "
        f"(from {_where(urls)}) or drop --nodownload")
  if progressbar is None:
    progressbar = sys.stderr.isatty()
  with _removing_new_folders(folder):
    for remote, url in zip(todo, urls):
      _fetch_one(spec.name, remote, url, folder, timeout or TIMEOUT,
                 progressbar)


def _local_name(remote: RemoteFile) -> str:
  """What the data folder must hold: the file, or the folder a zip gives."""
  if remote.unpacks_to:
    return f"{remote.unpacks_to}/ (unzipped {remote.fname})"
  return remote.fname


def _them(todo: Sequence[RemoteFile]) -> str:
  return "it" if len(todo) == 1 else "them"


def _where(urls: Sequence[str]) -> str:
  if len(urls) == 1:
    return urls[0]
  return os.path.dirname(urls[0]) + "/" if len(
      {os.path.dirname(u) for u in urls}) == 1 else ", ".join(urls)


@contextlib.contextmanager
def _removing_new_folders(folder: str) -> Iterator[None]:
  """Creates ``folder``; on an error, removes the folders it created if empty."""
  created, parent = [], os.path.abspath(folder)
  while not os.path.exists(parent):
    created.append(parent)
    parent = os.path.dirname(parent)
  try:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      raise _os_error(e, folder, "create the folder") from None
    yield
  except BaseException:
    for path in created:  # deepest first
      try:
        os.rmdir(path)
      except OSError:
        pass  # holds a file: kept (a verified file stays)
    raise


def _fetch_one(name: str, remote: RemoteFile, url: str, folder: str,
               timeout: tuple[float, float], progressbar: bool) -> None:
  import pooch  # pylint: disable=g-import-not-at-top
  import requests  # pylint: disable=g-import-not-at-top

  by_hand = (f"put {_local_name(remote)} in {folder} by hand "
             f"(or pass --data_dir=FOLDER holding it)")
  logger = pooch.get_logger()
  level = logger.level
  if not progressbar:  # pooch logs each download to stderr
    logger.setLevel(logging.WARNING)
  try:
    # HTTPDownloader passes `timeout` to requests.get; retrieve tries once,
    # streams into a temporary file in `folder`, checks the md5 and only
    # then moves it to `fname` (deleting it on any failure).
    path = pooch.retrieve(
        url, known_hash=f"md5:{remote.md5}", fname=remote.fname, path=folder,
        progressbar=progressbar,
        downloader=pooch.HTTPDownloader(progressbar=progressbar,
                                        timeout=timeout))
  except requests.exceptions.RequestException as e:
    raise DataError(f"{name}: cannot download {url} ({_reason(e, timeout)}); "
                    f"check the connection, or {by_hand}") from None
  except ValueError as e:
    if "does not match the known hash" not in str(e):
      raise
    got = re.search(r"but got (\w+)", str(e))
    raise DataError(
        f"{name}: wrong checksum: {url} gave {remote.fname} with md5 "
        f"{got.group(1) if got else '?'}, the published md5 is {remote.md5}; "
        f"the download was deleted; retry, or {by_hand}") from None
  except OSError as e:
    raise _os_error(e, folder, f"write {remote.fname}") from None
  finally:
    logger.setLevel(level)
  if remote.unpacks_to:
    _unzip(name, path, remote.unpacks_to, folder)


def _unzip(name: str, path: str, member: str, folder: str) -> None:
  """Extracts ``member/`` of the zip into ``folder`` atomically, then
  deletes the zip (a half-extracted folder never takes the final name)."""
  scratch = tempfile.mkdtemp(prefix=".unzip-", dir=folder)
  try:
    with zipfile.ZipFile(path) as archive:
      archive.extractall(scratch)
    if not os.path.isdir(os.path.join(scratch, member)):
      raise DataError(f"{name}: {path} holds no {member}/ folder; delete "
                      "it and download again")
    os.replace(os.path.join(scratch, member), os.path.join(folder, member))
  except zipfile.BadZipFile as e:
    raise DataError(f"{name}: cannot unzip {path} ({e}); delete it and "
                    "download again") from None
  except OSError as e:
    raise _os_error(e, folder, f"unzip {os.path.basename(path)}") from None
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  os.remove(path)


def _os_error(err: OSError, folder: str, doing: str) -> DataError:
  if err.errno == errno.ENOSPC:
    return DataError(f"the disk is full: no space left to {doing} in "
                     f"{folder}; free some space, or set {DATA_DIR_ENV} or "
                     "--data_dir to a folder on another disk")
  return DataError(f"cannot {doing} in {folder}: "
                   f"{err.strerror or err}; set {DATA_DIR_ENV} or --data_dir "
                   "to a folder you can write")


def _reason(err: Exception, timeout: tuple[float, float]) -> str:
  """A few words for a requests error (its own text spans lines of repr)."""
  import requests  # pylint: disable=g-import-not-at-top

  text = str(err)
  if isinstance(err, requests.exceptions.HTTPError):
    response = err.response
    return (f"HTTP {response.status_code} {response.reason}"
            if response is not None else "HTTP error")
  if isinstance(err, requests.exceptions.ConnectTimeout):
    return f"no connection within {timeout[0]:g} s"
  if isinstance(err, requests.exceptions.ReadTimeout) or (
      "Read timed out" in text):
    return f"the server sent nothing for {timeout[1]:g} s"
  if isinstance(err, requests.exceptions.ChunkedEncodingError) or (
      "IncompleteRead" in text):
    return "the transfer was cut short"
  if "Connection refused" in text:
    return "connection refused: the server is down or offline"
  if "Name or service not known" in text or "resolve" in text:
    return "the host name cannot be resolved: offline?"
  return type(err).__name__
