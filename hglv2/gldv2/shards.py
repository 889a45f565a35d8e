"""A checked, resumable, parallel download of the GLDv2 image shards (never extracted).

The images come as tar shards under the same base URL as the metadata (GLDv2 README, "Downloading
the data" and "Checking the download"):

=====  ======  =====================================  ==========================================
split  shards  shard URL                              official md5 file
=====  ======  =====================================  ==========================================
train  500     ``train/images_000.tar`` ... ``_499``  ``md5sum/train/md5.images_000.txt`` ...
index  100     ``index/images_000.tar`` ... ``_099``  ``md5sum/index/md5.images_000.txt`` ...
test   20      ``test/images_000.tar`` ... ``_019``   ``md5sum/test/md5.images_000.txt`` ...
=====  ======  =====================================  ==========================================

An md5 file holds ``md5sum`` output: ``<32 hex digits>  images_NNN.tar``.

:func:`download_images` fetches the chosen shards of a split into ``DEST/<split>/`` with a few
threads (one ``requests`` session each), each file through the metadata downloader's resumable
fetch (:func:`hglv2.http.fetch_resumable`: HTTP ``Range`` after a cut, ``If-Range``, retries
with backoff): the complete file is checked against the official md5 *before* it is renamed into
place, so a corrupt transfer is never left behind as a shard nor recorded. Before any transfer it
asks the server for the sizes (``HEAD``) and stops if the free disk space is short, saying how much
is needed. Verified shards go into the same lock file as the metadata (``gldv2.lock.json``, key
``<split>/images_NNN.tar``: size, sha256 and the official md5); a re-run trusts a shard whose size
matches its lock entry (no re-hashing of 500 GB) unless ``verify=True``, which re-hashes every
shard on disk. :class:`hglv2.dataset.HGLDv2Dataset` reads the shards in place.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

from hglv2.errors import InputError, NetworkError
from hglv2.gldv2.downloads import LOCK_NAME, read_lock, update_lock
from hglv2.gldv2.specs import DEFAULT_BASE_URL, shard_name
from hglv2.http import Retries, fetch_resumable, make_session, request_with_retries

#: Number of tar shards of each split (GLDv2 README).
IMAGE_SHARDS = {"train": 500, "index": 100, "test": 20}
_MD5 = re.compile(r"^([0-9a-fA-F]{32})(?:\s|$)")


def shard_url(split: str, k: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base>/<split>/images_NNN.tar``."""
    return f"{base_url.rstrip('/')}/{split}/{shard_name(k)}"


def md5_url(split: str, k: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base>/md5sum/<split>/md5.images_NNN.txt`` (the official checksum of a shard)."""
    return f"{base_url.rstrip('/')}/md5sum/{split}/md5.{Path(shard_name(k)).stem}.txt"


def parse_shard_spec(spec: str, n_max: int | None = None) -> list[int]:
    """``"0-9,42"`` -> ``[0, 1, ..., 9, 42]`` (sorted, distinct); numbers must be ``< n_max`` if given."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--shards: {part!r} is not a shard number or a range like 0-9") from None
        if a < 0 or b < a:
            raise InputError(f"--shards: {part!r} is not a valid range")
        if n_max is not None and b >= n_max:
            raise InputError(f"--shards: there are shards 0..{n_max - 1}, not {b}")
        out.update(range(a, b + 1))
    return sorted(out)


def parse_shards(spec: str | None, split: str) -> list[int]:
    """The shard numbers of ``split`` named by ``spec`` (``"0-9,42"``); ``None``: all of them."""
    n = _count(split)
    if spec is None or not spec.strip():
        return list(range(n))
    return parse_shard_spec(spec, n)


def _count(split: str) -> int:
    if split not in IMAGE_SHARDS:
        raise InputError(f"unknown split {split!r} (one of {', '.join(IMAGE_SHARDS)})")
    return IMAGE_SHARDS[split]


def parse_md5_file(text: str, where: str) -> str:
    """The hex digest of an ``md5sum``-format file (first field of its first line)."""
    m = _MD5.match(text.strip())
    if m is None:
        raise NetworkError(f"{where}: not an md5sum file (starts {text.strip()[:40]!r})")
    return m.group(1).lower()


def hash_file(path: Path, chunk: int = 1 << 22) -> tuple[str, str]:
    """``(md5, sha256)`` hex digests of a file, in one read."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


@dataclass
class ShardRecord:
    """What :func:`download_images` did for one shard."""

    key: str  # <split>/images_NNN.tar
    path: str
    size: int = 0
    md5: str = ""
    status: str = ""  # downloaded | verified | checked (re-hashed) | recorded | failed
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "md5": self.md5,
            "status": self.status,
            **({"error": self.error} if self.error else {}),
        }


class _Shared:
    """The lock file and the byte counter, shared by the download threads."""

    def __init__(self, lock_path: Path, bar: tqdm):
        self.lock_path = lock_path
        self.files = read_lock(lock_path)
        self.bar = bar
        self._mutex = threading.Lock()

    def record(self, key: str, size: int, sha256: str, md5: str) -> None:
        with self._mutex:  # update_lock re-reads the file: other writers' entries are kept
            self.files = update_lock(self.lock_path, key, {"size": size, "sha256": sha256, "md5": md5})

    def forget(self, key: str) -> None:
        with self._mutex:
            if key in self.files:
                self.files = update_lock(self.lock_path, key, None)

    def entry(self, key: str) -> dict[str, Any] | None:
        with self._mutex:
            return self.files.get(key)

    def add_bytes(self, n: int) -> None:
        with self._mutex:
            self.bar.update(n)


def download_images(
    split: str,
    dest: str | os.PathLike[str],
    *,
    shards: Sequence[int] | None = None,
    jobs: int = 4,
    verify: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    lock_path: str | os.PathLike[str] | None = None,
    contact: str = "anonymous",
    retries: Retries | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    free_bytes: Callable[[Path], int] | None = None,
    raise_on_error: bool = True,
) -> list[ShardRecord]:
    """Fetch and md5-check the image shards of ``split`` into ``dest/<split>/``.

    Args:
        split: ``train``, ``index`` or ``test``.
        dest: the download folder (the metadata's, so the lock file is shared).
        shards: shard numbers (default: all of the split).
        jobs: files transferred at once (threads).
        verify: re-hash every shard already on disk against its lock entry (default: trust a
            shard whose size matches the lock).
        lock_path: default ``dest/gldv2.lock.json``.
        retries: timeout and backoff of each request (default :class:`hglv2.http.Retries`).
        free_bytes: free space of a folder (tests); default :func:`shutil.disk_usage`.
        raise_on_error: after all shards are done, raise :class:`NetworkError` naming every failed
            shard (else return their records with ``status="failed"``).

    Returns one :class:`ShardRecord` per shard, in shard order.
    """
    numbers = list(range(_count(split))) if shards is None else sorted(set(shards))
    for k in numbers:
        if not 0 <= k < _count(split):
            raise InputError(f"{split} has shards 0..{_count(split) - 1}, not {k}")
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, not {jobs}")
    dest = Path(dest)
    folder = dest / split
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = Path(lock_path) if lock_path is not None else dest / LOCK_NAME
    bar = tqdm(total=0, unit="B", unit_scale=True, desc=f"{split} images", disable=None if progress else True)
    run = _Run(split, folder, base_url, contact, retries or Retries(), chunk_size, _Shared(lock_path, bar))
    records = {k: ShardRecord(f"{split}/{shard_name(k)}", str(folder / shard_name(k))) for k in numbers}
    todo = [k for k in numbers if not run.trusted(k, records[k], verify)]
    try:
        run.check_space(todo, records, free_bytes or (lambda p: shutil.disk_usage(p).free))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda k: run.work(k, records[k]), todo))
    finally:
        bar.close()
    out = [records[k] for k in numbers]
    failed = [r for r in out if r.status == "failed"]
    if failed and raise_on_error:
        raise NetworkError(failure_summary(failed))
    return out


class _Run:
    """One :func:`download_images` call: its settings, and a ``requests`` session per thread."""

    def __init__(
        self,
        split: str,
        folder: Path,
        base_url: str,
        contact: str,
        retries: Retries,
        chunk_size: int,
        shared: _Shared,
    ) -> None:
        self.split, self.folder, self.base_url, self.contact = split, folder, base_url, contact
        self.retries, self.chunk_size, self.shared = retries, chunk_size, shared
        self._local = threading.local()

    def session(self) -> requests.Session:
        if getattr(self._local, "session", None) is None:
            self._local.session = make_session(self.contact)
        return self._local.session

    def trusted(self, k: int, rec: ShardRecord, verify: bool) -> bool:
        """Whether shard ``k`` is on disk with the size of its lock entry (and ``verify`` is off);
        a shard on disk is otherwise decided once its official md5 is known."""
        path = self.folder / shard_name(k)
        entry = self.shared.entry(rec.key)
        if not path.exists() or entry is None or entry["size"] != path.stat().st_size or verify:
            return False
        rec.size, rec.md5, rec.status = path.stat().st_size, entry.get("md5", ""), "verified"
        return True

    def check_space(
        self, todo: Sequence[int], records: dict[int, ShardRecord], free_bytes: Callable[[Path], int]
    ) -> None:
        """Ask the sizes of the missing shards (``HEAD``) and stop if the disk cannot hold them."""
        sizes: dict[int, int | None] = {}
        missing = [k for k in todo if not (self.folder / shard_name(k)).exists()]
        for k in missing:
            try:
                sizes[k] = _remote_size(self.session(), shard_url(self.split, k, self.base_url), self)
            except NetworkError as exc:
                records[k].status, records[k].error = "failed", _short(exc)
        partial = {k: _part_size(self.folder / shard_name(k)) for k in missing}
        need = sum(max(0, (sizes.get(k) or 0) - partial[k]) for k in missing if records[k].status != "failed")
        free = free_bytes(self.folder)
        if need > free:
            raise InputError(
                f"{self.folder}: {len(missing)} shard(s) need {_gb(need)} of free disk space, only "
                f"{_gb(free)} is free; free some space or pick fewer --shards"
            )
        self.shared.bar.reset(total=need)

    def work(self, k: int, rec: ShardRecord) -> None:
        """Transfer and check shard ``k`` (a thread of the pool); a failure goes into ``rec``."""
        if rec.status == "failed":
            return
        try:
            _one_shard(k, rec, self)
        except (NetworkError, InputError, OSError) as exc:
            rec.status, rec.error = "failed", _short(exc)


def failure_summary(failed: Sequence[ShardRecord]) -> str:
    """One line naming every failed shard and why."""
    shown = "; ".join(f"{r.key}: {r.error}" for r in failed[:5])
    more = f"; ... ({len(failed) - 5} more)" if len(failed) > 5 else ""
    return f"{len(failed)} shard(s) failed: {shown}{more}"


def _one_shard(k: int, rec: ShardRecord, run: _Run) -> None:
    path = run.folder / shard_name(k)
    session, shared = run.session(), run.shared
    official = _official_md5(session, run.split, k, run)
    if path.exists():  # no lock entry, a size that differs from it, or --verify: hash it
        md5, sha = hash_file(path)
        entry = shared.entry(rec.key)
        if md5 == official:
            rec.size, rec.md5 = path.stat().st_size, md5
            rec.status = "checked" if entry is not None else "recorded"
            shared.record(rec.key, rec.size, sha, md5)
            return
        shared.forget(rec.key)
        path.unlink()  # corrupt: fetched again below
    digests: dict[str, str] = {}

    def check(part: Path) -> None:
        md5, sha = hash_file(part)
        if md5 != official:
            raise NetworkError(f"md5 {md5} does not match the official {official}; the transfer is corrupt")
        digests.update(md5=md5, sha256=sha)

    fetch_resumable(
        session,
        shard_url(run.split, k, run.base_url),
        path,
        retries=run.retries,
        chunk_size=run.chunk_size,
        progress=False,
        base_url=run.base_url,
        verify=check,
        on_bytes=shared.add_bytes,
    )
    rec.size, rec.md5, rec.status = path.stat().st_size, digests["md5"], "downloaded"
    shared.record(rec.key, rec.size, digests["sha256"], rec.md5)


def _official_md5(session: requests.Session, split: str, k: int, run: _Run) -> str:
    url = md5_url(split, k, run.base_url)
    resp = request_with_retries(session, "GET", url, allowed_bases=[run.base_url], **run.retries.as_kwargs())
    return parse_md5_file(resp.text, url)


def _remote_size(session: requests.Session, url: str, run: _Run) -> int | None:
    resp = request_with_retries(session, "HEAD", url, allowed_bases=[run.base_url], **run.retries.as_kwargs())
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _part_size(path: Path) -> int:
    part = path.with_name(f".{path.name}.part")
    return part.stat().st_size if part.exists() else 0


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e7 else f"{n:,d} bytes"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())
