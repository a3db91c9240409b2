"""What a dataset's entry declares about one of its downloadable files.

Its own module so that the dataset entries (:mod:`sparcl_jax.data.datasets`)
declare their files without importing the downloader
(:mod:`sparcl_jax.data.download`), which reads those entries.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One downloadable file of a dataset.

  Attributes:
    fname: its name in the data folder (and on a mirror).
    url: its official location.
    md5: the md5 published with the dataset, of the file as downloaded.
    unpacks_to: for a zip the reader cannot read as is, the folder it
      extracts to (the zip is deleted once extracted); "" otherwise.
    also: other names (files or folders) the reader accepts instead, e.g.
      the uncompressed file; any of them present makes the download
      unnecessary.

  Examples:
    >>> RemoteFile("a.gz", "https://example.org/a.gz", "0" * 32).unpacks_to
    ''
  """

  fname: str
  url: str
  md5: str
  unpacks_to: str = ""
  also: tuple[str, ...] = ()


__all__ = ['RemoteFile']
