"""The public GLDv2 metadata files: specs and URLs, validating readers, a checked download.

- :mod:`hglv2.gldv2.specs`: the file table (:data:`FILES`, :class:`FileSpec`, :func:`spec_for`;
  the file names as constants, :func:`~hglv2.gldv2.specs.numbering_of_file`), the official base URL and
  :func:`file_url`.
- :mod:`hglv2.gldv2.readers`: :func:`read_file`, the one validating reader of every GLDv2 file
  (no network), and its helpers (:func:`read_csv_strings`, :func:`hex_ids_to_uint64`,
  :func:`metadata_files`).
- :mod:`hglv2.gldv2.downloads`: :func:`download` with its lock file and resume logic.
- :mod:`hglv2.gldv2.export`: the GLDv2 joins of the export (train, train_full, index and query
  rows, each joined to the hierarchy of its numbering); :func:`hglv2.splits.export` writes them.
"""

from hglv2.gldv2.downloads import LOCK_FORMAT, LOCK_NAME, FileRecord, download, read_lock
from hglv2.gldv2.readers import (
    ID_PATTERN,
    INT_PATTERN,
    hex_ids_to_uint64,
    metadata_files,
    read_csv_strings,
    read_file,
    read_header,
)
from hglv2.gldv2.specs import DEFAULT_BASE_URL, FILES, KIND_COLUMNS, FileSpec, file_url, spec_for

__all__ = [
    "DEFAULT_BASE_URL",
    "FILES",
    "ID_PATTERN",
    "INT_PATTERN",
    "KIND_COLUMNS",
    "LOCK_FORMAT",
    "LOCK_NAME",
    "FileRecord",
    "FileSpec",
    "download",
    "file_url",
    "hex_ids_to_uint64",
    "metadata_files",
    "read_csv_strings",
    "read_file",
    "read_header",
    "read_lock",
    "spec_for",
]
