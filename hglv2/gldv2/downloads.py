"""A checked, resumable download of the GLDv2 metadata files.

:func:`download` fetches serially, through :mod:`hglv2.http` (policy User-Agent, retries with
backoff and ``Retry-After``); a cut connection resumes from the bytes on disk with an HTTP ``Range``
request (guarded by ``If-Range`` with the first response's ETag); each file is checked against its
``Content-Length`` and, from the second download on, against the size and sha256 recorded in the
lock file (``gldv2.lock.json``) at the first one. ``offline=True`` downloads nothing and checks
what is on disk against the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

from hglv2.errors import InputError, NetworkError
from hglv2.fileio import sha256_file, write_json
from hglv2.gldv2.specs import DEFAULT_BASE_URL, FILES, file_url
from hglv2.http import check_url, make_session, request_with_retries

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


@contextlib.contextmanager
def _lock_file_mutex(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<lock name>.flock`` beside the lock file (blocking): the
    metadata and image downloads, in one process or several, update it one at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.flock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def update_lock(
    path: str | os.PathLike[str], name: str, entry: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Set the lock entry ``name`` (remove it when ``entry`` is None) and return the ``files``
    mapping now on disk. The file is re-read under an inter-process mutex, so concurrent writers
    (a metadata download and an image download into one folder) keep each other's entries."""
    path = Path(path)
    with _lock_file_mutex(path):
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
    timeout: float = 60.0,
    max_tries: int = 8,
    backoff_base: float = 1.0,
    backoff_cap: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> list[FileRecord]:
    """Fetch GLDv2 metadata files into ``dest`` (all of :data:`FILES` when ``names`` is None).

    A file already on disk that matches its lock entry is not fetched again. A new download is
    checked against ``Content-Length`` and, if the lock has an entry, against its size and sha256
    (a mismatch raises :class:`NetworkError` and keeps the old file); otherwise its size and
    sha256 are recorded in the lock. ``offline=True`` fetches nothing: files must be on disk and
    match the lock where it has an entry (else :class:`InputError`).

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
        _fetch(
            session,
            url,
            path,
            timeout=timeout,
            max_tries=max_tries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            sleep=sleep,
            chunk_size=chunk_size,
            progress=progress,
            base_url=base_url,
            expected=lock.get(name),
        )
        size, digest = path.stat().st_size, sha256_file(path)
        if name not in lock:
            lock = update_lock(lock_path, name, {"size": size, "sha256": digest})
        records.append(FileRecord(name, str(path), size, digest, "downloaded"))
    return records


def _fetch(
    session: requests.Session,
    url: str,
    path: Path,
    *,
    timeout: float,
    max_tries: int,
    backoff_base: float,
    backoff_cap: float,
    sleep: Callable[[float], None],
    chunk_size: int,
    progress: bool,
    base_url: str,
    expected: dict[str, Any] | None,
    verify: Callable[[Path], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Stream ``url`` into ``path`` via ``.<name>.part``, resuming with ``Range`` after a cut.

    ``verify(part)`` (optional) checks the complete file before it is renamed into place; if it
    raises, the partial file is removed and the error propagates. ``on_bytes(n)`` (optional) is
    called with the size of each block received (for an overall progress bar).
    """
    part = path.with_name(f".{path.name}.part")
    meta = path.with_name(f".{path.name}.part.json")
    etag: str | None = None
    resumable = False
    if part.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            etag, resumable = info.get("etag"), info.get("url") == url
        except ValueError:
            pass
    if part.exists() and not resumable:
        part.unlink()  # a partial file we cannot tie to this URL: start over
    failures = 0
    bar = tqdm(
        total=None, unit="B", unit_scale=True, desc=path.name, disable=None if progress else True, leave=False
    )
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {}
            if have:
                headers["Range"] = f"bytes={have}-"
                if etag:
                    headers["If-Range"] = etag  # a changed file comes back whole (200)
            resp = request_with_retries(
                session,
                "GET",
                url,
                headers=headers,
                timeout=timeout,
                max_tries=max_tries,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                sleep=sleep,
                stream=True,
                allowed_bases=[base_url],
                accept_statuses=(416,),
            )
            with resp:
                if resp.status_code == 416 or (have and resp.status_code == 200):
                    part.unlink(missing_ok=True)  # server ignored or refused the range: restart
                    if resp.status_code == 416:
                        failures += 1
                        if failures >= max_tries:
                            raise NetworkError(f"GET {url}: range requests keep failing (HTTP 416)")
                        continue
                    have = 0
                total = _total_size(resp, have)
                etag = resp.headers.get("ETag") or etag
                meta.write_text(json.dumps({"etag": etag, "url": url}), encoding="utf-8")
                bar.reset(total=total)
                bar.update(have)
                got_before = have
                try:
                    with open(part, "ab" if have else "wb") as fh:
                        for block in resp.iter_content(chunk_size):
                            fh.write(block)
                            bar.update(len(block))
                            if on_bytes is not None:
                                on_bytes(len(block))
                except requests.exceptions.RequestException as exc:  # cut, reset, read timeout
                    now = part.stat().st_size if part.exists() else 0
                    failures = 0 if now > got_before else failures + 1
                    if failures >= max_tries:
                        raise NetworkError(f"GET {url}: download keeps breaking off ({exc})") from None
                    sleep(min(backoff_cap, backoff_base * 2 ** max(0, failures - 1)))
                    continue
            size = part.stat().st_size
            if total is not None and size != total:
                failures += 1
                if size > total or failures >= max_tries:
                    part.unlink(missing_ok=True)
                    raise NetworkError(f"GET {url}: got {size} bytes, expected {total}")
                continue
            break
        if expected is not None:
            size, digest = part.stat().st_size, sha256_file(part)
            if size != expected["size"] or digest != expected["sha256"]:
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                raise NetworkError(
                    f"GET {url}: downloaded file (size {size}, sha256 {digest[:12]}...) does not match "
                    f"the lock file (size {expected['size']}, sha256 {expected['sha256'][:12]}...); the "
                    "server copy changed or is corrupt — remove its lock entry to accept the new version"
                )
        if verify is not None:
            try:
                verify(part)
            except Exception:  # a bad file; an interrupt keeps the complete part for the next run
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                raise
        os.replace(part, path)
        meta.unlink(missing_ok=True)
    finally:
        bar.close()


def _total_size(resp: requests.Response, have: int) -> int | None:
    """Full file size from ``Content-Range`` (206) or ``have + Content-Length``."""
    rng = resp.headers.get("Content-Range")
    if resp.status_code == 206 and rng and "/" in rng:
        total = rng.rsplit("/", 1)[1]
        start = rng.split()[-1].split("-")[0] if " " in rng else ""
        if start.isdigit() and int(start) != have:
            raise NetworkError(f"{resp.url}: server resumed at byte {start}, asked for {have}")
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None
