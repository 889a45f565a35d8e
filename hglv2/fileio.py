"""Atomic, deterministic file output shared by every stage.

Every output is written to a temporary file in the destination folder and renamed into place, so a
crash never leaves a partial file behind. Parquet files are written without timestamps or
nondeterministic metadata so the same table gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` that writes a temporary file and renames it onto ``path`` on success."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "\n")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (deterministic bytes), atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


def write_parquet(
    table: pa.Table,
    path: str | os.PathLike[str],
    row_group_size: int = 100_000,
    use_dictionary: bool | list[str] = True,
) -> None:
    """Write ``table`` to Parquet atomically with deterministic bytes (zstd, no pandas metadata).

    ``use_dictionary``: True, False, or the columns to dictionary-encode (leave out columns whose
    values are all distinct, such as image ids, to save the encoder's wasted attempt).
    """
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=row_group_size,
            compression="zstd",
            use_dictionary=use_dictionary,
            write_statistics=True,
            store_schema=False,
        )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_parquet_checked(
    path: str | os.PathLike[str],
    columns: Sequence[str] = (),
    missing_hint: str | None = None,
) -> pa.Table:
    """Read a Parquet file that must hold ``columns``; every problem is an ``InputError``.

    The one checked reader for Parquet inputs of the CLI stages: a missing file (with
    ``missing_hint``, e.g. "run `hglv2 hierarchy resolve` first"), a folder, a truncated or
    non-Parquet file, and a Parquet file without the expected columns each give one message that
    names the file (and the missing columns).
    """
    from hglv2.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file" + (f" ({missing_hint})" if missing_hint else ""))
    if not p.is_file():
        raise InputError(f"{p}: is a folder, expected a Parquet file")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not a readable Parquet file ({reason})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        has = ", ".join(table.column_names) or "none"
        raise InputError(f"{p}: missing column(s) {', '.join(missing)} (the file has: {has})")
    return table
