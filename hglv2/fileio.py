"""Atomic, deterministic file output shared by every stage.

Every output is written to a temporary file in the destination folder and renamed into place, so a
crash never leaves a partial file behind. Parquet files are written without timestamps or
nondeterministic metadata so the same table gives the same bytes.

Outputs are transactions at three sizes:

- one file: :func:`atomic_path` / :func:`atomic_open` (temp file + rename). Temporary names carry
  the writer's pid (``.<name>.<pid>-<random>.tmp``); a later write beside them removes those whose
  process is gone (a ``kill -9`` leaves no temporary behind for long).
- the files of one stage: :func:`commit_together` holds back the renames of every file written in
  its block and does them all at its end, so a failing stage touches none of its outputs.
- a whole folder (``hglv2 export``, ``hglv2 synthesize``): :func:`folder_transaction` writes into a
  hidden staging folder beside ``out`` under a lock and swaps it into place; the folder carries an
  owner marker (:data:`OWNER_FILE`) so that a command only ever replaces a folder it wrote itself.

:func:`file_lock` is the one inter-process lock (``flock``; waiting or failing at once), and
:func:`write_json` / :func:`jsonl_line` the JSON writers, which write non-finite floats as ``null``
(:func:`finite_or_none`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from hglv2.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` in ``folder`` whose writing process is gone.

    ``name``: only those of this output file. A temporary of a live process (or of a pid that was
    reused since) is left alone. Returns the removed paths.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


# The open commit_together() group of this thread/task: (temp, final) renames held back.
_GROUP: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "hglv2_commit_group", default=None
)


@contextlib.contextmanager
def commit_together() -> Iterator[None]:
    """Commit every file written with :func:`atomic_path` (and the writers on it) in this block at once.

    Inside the block each writer leaves its complete temporary file beside its target; when the
    block ends without an exception all of them are renamed onto their targets, in the order they
    were written; on an exception all temporaries are removed and no target is touched. So the
    outputs of a stage are all new or all old: ``make`` sees either every target of the stage
    updated or none (and with none updated it runs the stage again). The renames at the end take
    microseconds; a ``kill -9`` inside that window leaves some targets new and the others older
    than the inputs that triggered the stage, so ``make`` reruns it.

    A file written inside the block is not at its final path until the block ends: do not read it
    back inside the block. Blocks may nest; the outermost one commits.
    """
    if _GROUP.get() is not None:  # nested: the outer group commits
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    finally:
        _GROUP.reset(token)
    try:
        for _, path in pending:  # the one failure a rename can meet here: the target is a folder
            if path.is_dir():
                raise InputError(f"{path}: is a folder, not a file")
        while pending:
            tmp, path = pending[0]
            os.replace(tmp, path)
            del pending[0]
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Inside :func:`commit_together` the rename waits for the end of the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        group = _GROUP.get()
        if group is None:
            os.replace(tmp_path, path)
        else:
            for k, (old_tmp, old_path) in enumerate(group):
                # written twice in one group: the last write wins
                if os.path.abspath(old_path) == os.path.abspath(path):
                    old_tmp.unlink()
                    del group[k]
                    break
            group.append((tmp_path, path))
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


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None``, through dicts, lists and
    tuples: what strict JSON (``null``) can hold, e.g. an undefined metric in a log record."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def jsonl_line(record: Any) -> str:
    """One strict-JSON line (non-finite floats as ``null``, sorted keys), newline included."""
    return json.dumps(finite_or_none(record), sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted strict JSON (deterministic bytes), atomically.

    Non-finite floats are written as ``null`` (:func:`finite_or_none`).
    """
    with atomic_open(path) as fh:
        json.dump(finite_or_none(obj), fh, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
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


# ------------------------------------------------------------------------------ folder transactions

#: The owner marker of a folder written by :func:`folder_transaction`: ``{"kind": "export"}``.
OWNER_FILE = ".hglv2-owner.json"

_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the platform, libc or file system cannot (the caller then falls back to
    two renames).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}"


def folder_owner(folder: str | os.PathLike[str]) -> str | None:
    """The kind of hglv2 output held by ``folder`` (``export``, ``synthetic``, ...), or None."""
    folder = Path(folder)
    marker = folder / OWNER_FILE
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text("utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if not isinstance(kind, str):
            raise InputError(f'{marker}: not a valid hglv2 owner marker (expected {{"kind": ...}})')
        return kind
    return None


def check_owner(folder: str | os.PathLike[str], kind: str) -> None:
    """Raise :class:`InputError` unless a ``kind`` command may write into ``folder``.

    Allowed: a folder that does not exist, an empty folder, or one whose owner marker is ``kind``.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    owner = folder_owner(folder)
    if owner == kind:
        return
    if owner is not None:
        raise InputError(
            f"{folder}: holds the output of hglv2 {owner}, not {kind}; refusing to overwrite it "
            "(choose another folder)"
        )
    if any(os.scandir(folder)):
        raise InputError(
            f"{folder}: is not empty and was not written by hglv2 {kind} (no {OWNER_FILE}); "
            "refusing to overwrite it (choose another folder)"
        )


def claim_folder(folder: str | os.PathLike[str], kind: str) -> Path:
    """Make ``folder`` the output folder of a ``kind`` command that writes into it file by file.

    For folders that grow over several calls (a training run, a benchmark's runs) rather than being
    replaced whole: :func:`check_owner`, then create the folder and its owner marker if missing.
    Another command's folder or a foreign non-empty one is an :class:`InputError`.
    """
    folder = Path(folder)
    check_owner(folder, kind)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OWNER_FILE
    if not marker.is_file():
        write_json(marker, {"kind": kind})
    return folder


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], *, busy: str | None = None, unwritable: str | None = None
) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder if missing) for the block.

    ``busy=None`` waits until the lock is free; with a message the call does not wait: a lock
    held elsewhere raises :class:`InputError` ``busy``. ``unwritable``: when the lock file cannot
    be created, raise :class:`InputError` ``<unwritable> (<reason>)`` instead of the ``OSError``.
    The lock file stays (removing it would let two holders lock different files); the lock
    itself ends with the block or with the process, however it ends.
    """
    import fcntl

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if unwritable is None:
            raise
        raise InputError(f"{unwritable} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if busy is None else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(busy) from None
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (:func:`file_lock` on ``.<name>.lock`` beside it).

    A second writer does not wait: it gets :class:`InputError` ``<folder> is being written by another
    hglv2 process``.
    """
    lock = _sibling(Path(os.path.realpath(folder)), "lock")
    with file_lock(
        lock,
        busy=f"{folder} is being written by another hglv2 process",
        unwritable=f"{folder}: cannot write a folder here",
    ):
        yield lock


def recover_folder(out: str | os.PathLike[str]) -> list[Path]:
    """Clean up after a :func:`folder_transaction` that was killed; call with the lock held.

    A staging folder (``.<name>.staging-<pid>``) was never committed: removed. A set-aside old
    folder (``.<name>.old-<pid>``) is put back when ``out`` is missing (the kill came between the
    two renames of the fallback swap, so the old folder is restored) and removed otherwise.
    Returns the removed paths.
    """
    out = Path(os.path.realpath(out))
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for entry in sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*")):
        if not out.exists():
            os.rename(entry, out)
        else:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    for entry in sorted(out.parent.glob(f".{glob.escape(out.name)}.staging-*")):
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def folder_transaction(out: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Write a whole folder as one commit: yield a staging folder, then swap it onto ``out``.

    Under :func:`folder_lock` on ``out``: leftovers of killed runs are cleaned up
    (:func:`recover_folder`), ``out`` is checked to be writable by a ``kind`` command
    (:func:`check_owner`), and a fresh staging folder ``.<name>.staging-<pid>`` beside ``out`` is
    yielded. When the block succeeds the owner marker is added and the staging folder replaces
    ``out`` wholesale (nothing of the old folder survives: fewer files means fewer files). On an
    exception the staging folder is removed and ``out`` is untouched.

    The swap is one ``renameat2(RENAME_EXCHANGE)`` on Linux, so ``out`` is always either the
    complete old or the complete new folder. Where that is unavailable it is two renames (``out``
    to ``.<name>.old-<pid>``, staging to ``out``); a kill between them leaves ``out`` missing for
    that instant and the next run puts the old folder back.
    """
    shown = out
    out = Path(os.path.realpath(out))
    if out.exists() and not out.is_dir():
        raise InputError(f"{shown}: exists and is not a folder")
    with folder_lock(shown):
        recover_folder(out)
        check_owner(shown, kind)
        staging = _sibling(out, f"staging-{os.getpid()}")
        staging.mkdir(mode=0o777)
        try:
            yield staging
            write_json(staging / OWNER_FILE, {"kind": kind})
            _fsync_dir(staging)
            if not out.exists():
                os.rename(staging, out)
            elif _exchange(staging, out):
                shutil.rmtree(staging)  # now the old folder
            else:
                old = _sibling(out, f"old-{os.getpid()}")
                os.rename(out, old)
                try:
                    os.rename(staging, out)
                except BaseException:
                    os.rename(old, out)
                    raise
                shutil.rmtree(old)
            _fsync_dir(out.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
