"""Error types shared by every stage.

``InputError`` is bad user input (a malformed file, a missing column, an unknown id, a NaN
embedding...). The CLI prints it as one line ``Error: <message>`` on stderr and exits with code 2.
Messages name the file, row and field, e.g. ``train.csv:17: landmark_id 'x' is not an integer``.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message names the file/row/field at fault."""


class NetworkError(RuntimeError):
    """A remote server kept failing after all retries (or the cache lacks an entry offline)."""
