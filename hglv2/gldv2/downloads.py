"""A checked, resumable download of the GLDv2 metadata files.

:func:`download` fetches serially, through :func:`hglv2.http.fetch_resumable` (policy
User-Agent, retries with backoff and ``Retry-After``; a cut connection resumes from the bytes on
disk with an HTTP ``Range`` request guarded by ``If-Range``); each file is checked against its
``Content-Length`` and, from the second download on, against the size and sha256 recorded in the
lock file (``gldv2.lock.json``) at the first one. ``offline=True`` downloads nothing and checks
what is on disk against the lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from hglv2.errors import InputError, NetworkError
from hglv2.fileio import file_lock, sha256_file, write_json
from hglv2.gldv2.specs import DEFAULT_BASE_URL, FILES, file_url
from hglv2.http import Retries, check_url, fetch_resumable, make_session

LOCK_NAME = "gldv2.lock.json"
LOCK_FORMAT = 1


@dataclass
class FileRecord:
    """What :func:`download` did for one file."""

    name: str
    path: str
    size: int
    sha256: str
    status: str  # "downloaded", "verified" (already on disk, matches the lock), "recorded", "unverified"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "status": self.status}


def read_lock(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The ``files`` mapping of a lock file (``{}`` if there is none)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        for name, rec in files.items():
            if not isinstance(rec["size"], int) or not isinstance(rec["sha256"], str):
                raise TypeError(name)
        return files
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a valid GLDv2 lock file ({exc})") from None


def _write_lock(path: Path, files: dict[str, dict[str, Any]]) -> None:
    write_json(path, {"format": LOCK_FORMAT, "files": dict(sorted(files.items()))})


def update_lock(
    path: str | os.PathLike[str], name: str, entry: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Set the lock entry ``name`` (remove it when ``entry`` is None) and return the ``files``
    mapping now on disk. The file is re-read under an inter-process mutex, so concurrent writers
    (a metadata download and an image download into one folder) keep each other's entries."""
    path = Path(path)
    with file_lock(path.with_name(f".{path.name}.flock")):  # waits for the other writers
        files = read_lock(path)
        if entry is not None:
            files[name] = entry
        elif files.pop(name, None) is None:
            return files
        _write_lock(path, files)
        return files


def _check_against_lock(name: str, path: Path, lock: dict[str, dict[str, Any]]) -> tuple[int, str, bool]:
    """(size, sha256, matches) for a file on disk; ``matches`` is True when the lock has no entry."""
    size = path.stat().st_size
    entry = lock.get(name)
    if entry is not None and entry["size"] != size:
        return size, "", False
    digest = sha256_file(path)
    return size, digest, entry is None or entry["sha256"] == digest


def download(
    names: Iterable[str] | None,
    dest: str | os.PathLike[str],
    *,
    base_url: str = DEFAULT_BASE_URL,
    offline: bool = False,
    lock_path: str | os.PathLike[str] | None = None,
    contact: str = "anonymous",
    session: requests.Session | None = None,
    retries: Retries | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> list[FileRecord]:
    """Fetch GLDv2 metadata files into ``dest`` (all of :data:`FILES` when ``names`` is None).

    A file already on disk that matches its lock entry is not fetched again. A new download is
    checked against ``Content-Length`` and, if the lock has an entry, against its size and sha256
    (a mismatch raises :class:`NetworkError` and keeps the old file); otherwise its size and
    sha256 are recorded in the lock. ``offline=True`` fetches nothing: files must be on disk and
    match the lock where it has an entry (else :class:`InputError`). ``retries``: timeout and
    backoff of each request (default :class:`hglv2.http.Retries`).

    Returns one :class:`FileRecord` per file, in the order of ``names``.
    """
    dest = Path(dest)
    names = list(FILES) if names is None else list(dict.fromkeys(names))
    for name in names:
        if name not in FILES:
            raise InputError(f"{name}: not a GLDv2 metadata file (known: {', '.join(FILES)})")
    lock_path = Path(lock_path) if lock_path is not None else dest / LOCK_NAME
    lock = read_lock(lock_path)
    records: list[FileRecord] = []
    if not offline:
        dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = dest / name
        if path.exists():
            size, digest, ok = _check_against_lock(name, path, lock)
            if ok:
                status = "verified" if name in lock else ("unverified" if offline else "recorded")
                if status == "recorded":
                    lock = update_lock(lock_path, name, {"size": size, "sha256": digest})
                records.append(FileRecord(name, str(path), size, digest, status))
                continue
            if offline:
                raise InputError(
                    f"{path}: does not match {lock_path.name} (size {size}, expected {lock[name]['size']}"
                    f"{'' if not digest else ', sha256 differs'}); re-download it without --offline"
                )
        elif offline:
            raise InputError(f"{path}: not on disk (offline mode downloads nothing)")
        if session is None:
            session = make_session(contact)
        url = file_url(name, base_url)
        check_url(url, [base_url])
        fetch_resumable(
            session,
            url,
            path,
            retries=retries or Retries(),
            chunk_size=chunk_size,
            progress=progress,
            base_url=base_url,
            verify=_matches_lock(url, lock.get(name)),
        )
        size, digest = path.stat().st_size, sha256_file(path)
        if name not in lock:
            lock = update_lock(lock_path, name, {"size": size, "sha256": digest})
        records.append(FileRecord(name, str(path), size, digest, "downloaded"))
    return records


def _matches_lock(url: str, expected: dict[str, Any] | None) -> Callable[[Path], None] | None:
    """A check of a downloaded file against its lock entry (size and sha256), if it has one."""
    if expected is None:
        return None

    def check(part: Path) -> None:
        size, digest = part.stat().st_size, sha256_file(part)
        if size != expected["size"] or digest != expected["sha256"]:
            raise NetworkError(
                f"GET {url}: downloaded file (size {size}, sha256 {digest[:12]}...) does not match "
                f"the lock file (size {expected['size']}, sha256 {expected['sha256'][:12]}...); the "
                "server copy changed or is corrupt — remove its lock entry to accept the new version"
            )

    return check
