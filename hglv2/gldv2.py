"""The public GLDv2 metadata files: their schemas, a checked download, and validating readers.

Files (https://github.com/cvdfoundation/google-landmark), all under one base URL, by default
``https://s3.amazonaws.com/google-landmark`` (``metadata/...`` and ``ground_truth/...``):

===================================  ==================================================  ===========
file                                 columns                                             folder
===================================  ==================================================  ===========
train.csv                            id, url, landmark_id                                metadata
train_clean.csv                      landmark_id, images (space-separated image ids)     metadata
train_label_to_category.csv          landmark_id, category                               metadata
train_label_to_hierarchical.csv      landmark_id, category, supercategory,               metadata
                                     hierarchical_label, natural_or_human_made
index.csv                            id                                                  metadata
index_image_to_landmark.csv          id, landmark_id                                     metadata
index_label_to_category.csv          landmark_id, category                               metadata
index_label_to_hierarchical.csv      (as train_label_to_hierarchical.csv)                metadata
test.csv                             id                                                  metadata
retrieval_solution_v2.1.csv          id, images (ids, or the marker ``None``), Usage     ground_truth
recognition_solution_v2.1.csv        id, landmarks (ids, or empty), Usage                ground_truth
===================================  ==================================================  ===========

**Download** (:func:`download`): serial, through :mod:`hglv2.http` (policy User-Agent, retries
with backoff and ``Retry-After``); a cut connection resumes from the bytes on disk with an HTTP
``Range`` request (guarded by ``If-Range`` with the first response's ETag); each file is checked
against its ``Content-Length`` and, from the second download on, against the size and sha256
recorded in the lock file (``gldv2.lock.json``) at the first one. ``offline=True`` downloads
nothing and checks what is on disk against the lock.

**Readers** (:func:`read_file`) read every column as a string with pyarrow's CSV reader (no type
guessing: ``"None"`` in the solution files is a marker, not a missing value; a UTF-8 BOM and CRLF
line ends are accepted; quoted fields may hold commas) and validate: required columns, image ids of
16 lowercase hex characters (which also rules out paths such as ``../x``), integer landmark ids,
no duplicate keys, no empty required fields, the right number of fields per line. The first
problem raises :class:`~hglv2.errors.InputError` ``FILE:LINE: ...`` (line 1 is the header).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import requests
from tqdm.auto import tqdm

from hglv2.errors import InputError, NetworkError
from hglv2.fileio import sha256_file, write_json
from hglv2.http import check_url, make_session, request_with_retries

DEFAULT_BASE_URL = "https://s3.amazonaws.com/google-landmark"
LOCK_NAME = "gldv2.lock.json"
LOCK_FORMAT = 1
ID_PATTERN = r"^[0-9a-f]{16}$"
INT_PATTERN = r"^[0-9]{1,18}$"


@dataclass(frozen=True)
class FileSpec:
    """One GLDv2 metadata file: where it lives and what its columns must hold."""

    name: str
    folder: str  # "metadata" or "ground_truth" under the base URL
    kind: str
    columns: tuple[str, ...]


_KIND_COLUMNS = {
    "train": ("id", "url", "landmark_id"),
    "train_clean": ("landmark_id", "images"),
    "label_to_category": ("landmark_id", "category"),
    "label_to_hierarchical": (
        "landmark_id",
        "category",
        "supercategory",
        "hierarchical_label",
        "natural_or_human_made",
    ),
    "image_list": ("id",),
    "image_to_landmark": ("id", "landmark_id"),
    "retrieval_solution": ("id", "images", "Usage"),
    "recognition_solution": ("id", "landmarks", "Usage"),
}

FILES: dict[str, FileSpec] = {
    s.name: s
    for s in (
        FileSpec("train.csv", "metadata", "train", _KIND_COLUMNS["train"]),
        FileSpec("train_clean.csv", "metadata", "train_clean", _KIND_COLUMNS["train_clean"]),
        FileSpec(
            "train_label_to_category.csv", "metadata", "label_to_category", _KIND_COLUMNS["label_to_category"]
        ),
        FileSpec(
            "train_label_to_hierarchical.csv",
            "metadata",
            "label_to_hierarchical",
            _KIND_COLUMNS["label_to_hierarchical"],
        ),
        FileSpec("index.csv", "metadata", "image_list", _KIND_COLUMNS["image_list"]),
        FileSpec(
            "index_image_to_landmark.csv", "metadata", "image_to_landmark", _KIND_COLUMNS["image_to_landmark"]
        ),
        FileSpec(
            "index_label_to_category.csv", "metadata", "label_to_category", _KIND_COLUMNS["label_to_category"]
        ),
        FileSpec(
            "index_label_to_hierarchical.csv",
            "metadata",
            "label_to_hierarchical",
            _KIND_COLUMNS["label_to_hierarchical"],
        ),
        FileSpec("test.csv", "metadata", "image_list", _KIND_COLUMNS["image_list"]),
        FileSpec(
            "retrieval_solution_v2.1.csv",
            "ground_truth",
            "retrieval_solution",
            _KIND_COLUMNS["retrieval_solution"],
        ),
        FileSpec(
            "recognition_solution_v2.1.csv",
            "ground_truth",
            "recognition_solution",
            _KIND_COLUMNS["recognition_solution"],
        ),
    )
}


def spec_for(path: str | os.PathLike[str], kind: str | None = None) -> FileSpec:
    """The spec of a file, from ``kind`` or else from its name (``*_label_to_category.csv``...)."""
    name = Path(path).name
    if kind is not None:
        if kind not in _KIND_COLUMNS:
            raise ValueError(f"unknown GLDv2 file kind {kind!r} (one of {', '.join(_KIND_COLUMNS)})")
        return FileSpec(name, "metadata", kind, _KIND_COLUMNS[kind])
    if name in FILES:
        return FILES[name]
    for suffix, k in (
        ("_label_to_category.csv", "label_to_category"),
        ("_label_to_hierarchical.csv", "label_to_hierarchical"),
        ("_image_to_landmark.csv", "image_to_landmark"),
    ):
        if name.endswith(suffix):
            return FileSpec(name, "metadata", k, _KIND_COLUMNS[k])
    for prefix, k in (
        ("retrieval_solution", "retrieval_solution"),
        ("recognition_solution", "recognition_solution"),
    ):
        if name.startswith(prefix):
            return FileSpec(name, "ground_truth", k, _KIND_COLUMNS[k])
    raise InputError(f"{name}: not a known GLDv2 file name; pass its kind explicitly")


def file_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base_url>/<metadata|ground_truth>/<name>`` for a known file name."""
    if name not in FILES:
        raise InputError(f"{name}: not a GLDv2 metadata file (known: {', '.join(FILES)})")
    return f"{base_url.rstrip('/')}/{FILES[name].folder}/{name}"


# ------------------------------------------------------------------------------------- download


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
                    lock[name] = {"size": size, "sha256": digest}
                    _write_lock(lock_path, lock)
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
            lock[name] = {"size": size, "sha256": digest}
            _write_lock(lock_path, lock)
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
) -> None:
    """Stream ``url`` into ``path`` via ``.<name>.part``, resuming with ``Range`` after a cut."""
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


# -------------------------------------------------------------------------------------- readers


def _header(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        raw = fh.readline()
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name}:1: header is not valid UTF-8") from None
    if not first.strip():
        raise InputError(f"{path.name}:1: empty file (no header)")
    return [c.strip() for c in next(csv.reader([first]))]


def _first_bad_utf8_line(path: Path) -> int:
    with open(path, "rb") as fh:
        for k, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return k
    return 0


def read_csv_strings(path: str | os.PathLike[str], required: Sequence[str]) -> pa.Table:
    """Read a CSV with every column as a non-null string; check the columns and the field counts.

    Row ``i`` (0-based) of the result is line ``i + 2`` of the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    header = _header(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(
            f"{path.name}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})"
        )
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(f"{path.name}:1: duplicate column(s) {', '.join(dup)}")
    bad: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad.append(row)
        return "skip"

    def read(threads: bool) -> pa.Table:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=threads, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=True,
            ),
        )

    try:
        table = read(True)
        if bad:  # read again on one thread: only then does pyarrow number the lines
            bad.clear()
            read(False)
            row = bad[0]
            raise InputError(
                f"{path.name}:{row.number}: expected {row.expected_columns} fields, got {row.actual_columns}"
            )
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            raise InputError(f"{path.name}:{_first_bad_utf8_line(path)}: not valid UTF-8") from None
        raise InputError(f"{path.name}: not a valid CSV file ({exc})") from None
    return table.rename_columns([c.strip() for c in table.column_names])


def _first_false(mask: pa.ChunkedArray | pa.Array) -> int | None:
    arr = mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
    if pc.all(arr).as_py() in (True, None):
        return None
    return int(np.flatnonzero(~arr.to_numpy(zero_copy_only=False))[0])


def _check_ids(col: pa.ChunkedArray, name: str, field: str, lines: np.ndarray | None = None) -> None:
    row = _first_false(pc.match_substring_regex(col, ID_PATTERN))
    if row is not None:
        line = int(lines[row]) if lines is not None else row + 2
        raise InputError(f"{name}:{line}: {field} {col[row].as_py()!r} is not a 16-character hex image id")


def _to_int(col: pa.ChunkedArray, name: str, field: str) -> pa.ChunkedArray:
    stripped = pc.utf8_trim_whitespace(col)
    row = _first_false(pc.match_substring_regex(stripped, INT_PATTERN))
    if row is not None:
        raise InputError(f"{name}:{row + 2}: {field} {col[row].as_py()!r} is not a non-negative integer")
    return pc.cast(stripped, pa.int64())


_NIBBLE = np.zeros(256, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def hex_ids_to_uint64(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """16-hex-character ids (already validated) -> uint64 values, vectorised (no Python loop)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    arr = arr.cast(pa.string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 16)
    nib = _NIBBLE[raw]
    packed = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2])  # (N, 8) bytes, big-endian
    return packed.view(">u8").ravel().astype(np.uint64)


def _first_duplicate(values: np.ndarray) -> int | None:
    """Row of the first value that repeats an earlier row (smallest such row), or None."""
    order = np.argsort(values, kind="stable")
    sv = values[order]
    same = np.flatnonzero(sv[1:] == sv[:-1])
    return int(order[same + 1].min()) if len(same) else None


def _check_unique(col: pa.ChunkedArray, name: str, field: str, hex_ids: bool = False) -> None:
    if hex_ids:
        vals = hex_ids_to_uint64(col)
    elif pa.types.is_integer(col.type):
        vals = col.to_numpy()
    else:
        vals = np.asarray(col.to_pylist(), dtype=object)
    row = _first_duplicate(vals)
    if row is not None:
        raise InputError(f"{name}:{row + 2}: duplicate {field} {col[row].as_py()!r}")


def _check_nonempty(col: pa.ChunkedArray, name: str, field: str) -> None:
    """Empty or whitespace-only fields (no copy of the column is made)."""
    row = _first_false(pc.and_(pc.greater(pc.utf8_length(col), 0), pc.invert(pc.utf8_is_space(col))))
    if row is not None:
        raise InputError(f"{name}:{row + 2}: empty {field}")


def _split_list(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Space-separated lists -> (flat values, row of each value)."""
    lists = (
        pc.split_pattern(pc.utf8_trim_whitespace(col), " ").combine_chunks()
        if len(col)
        else pa.array([], pa.list_(pa.string()))
    )
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.greater(pc.utf8_length(flat), 0)  # several spaces in a row
    return flat.filter(keep), parents[keep.to_numpy(zero_copy_only=False)]


def read_file(path: str | os.PathLike[str], kind: str | None = None) -> pa.Table:
    """Read and validate one GLDv2 file; return a typed table.

    Result columns by kind:

    - ``train``: id (string), url (string), landmark_id (int64)
    - ``train_clean``: id, landmark_id — exploded, one row per image (file order)
    - ``label_to_category``: landmark_id, category
    - ``label_to_hierarchical``: landmark_id, category, supercategory, hierarchical_label,
      natural_or_human_made (empty fields -> null)
    - ``image_list``: id
    - ``image_to_landmark``: id, landmark_id
    - ``retrieval_solution``: id, images (list<string>, null for the ``None`` marker), usage
    - ``recognition_solution``: id, landmarks (list<int64>, empty for none), usage

    Raises:
        InputError: ``FILE:LINE: problem`` for the first problem found.
    """
    path = Path(path)
    spec = spec_for(path, kind)
    name = path.name
    t = read_csv_strings(path, spec.columns)
    k = spec.kind
    if k in ("train", "image_list", "image_to_landmark", "retrieval_solution", "recognition_solution"):
        _check_ids(t["id"], name, "id")
        _check_unique(t["id"], name, "id", hex_ids=True)
    if k == "train":
        _check_nonempty(t["url"], name, "url")
        return pa.table(
            {"id": t["id"], "url": t["url"], "landmark_id": _to_int(t["landmark_id"], name, "landmark_id")}
        )
    if k == "image_list":
        return pa.table({"id": t["id"]})
    if k == "image_to_landmark":
        return pa.table({"id": t["id"], "landmark_id": _to_int(t["landmark_id"], name, "landmark_id")})
    if k in ("train_clean", "label_to_category", "label_to_hierarchical"):
        lid = _to_int(t["landmark_id"], name, "landmark_id")
        _check_unique(lid, name, "landmark_id")
        if k == "label_to_category":
            _check_nonempty(t["category"], name, "category")
            return pa.table({"landmark_id": lid, "category": pc.utf8_trim_whitespace(t["category"])})
        if k == "label_to_hierarchical":
            cols = {"landmark_id": lid}
            for c in spec.columns[1:]:
                v = pc.utf8_trim_whitespace(t[c])
                cols[c] = pc.if_else(pc.equal(pc.utf8_length(v), 0), pa.scalar(None, pa.string()), v)
            return pa.table(cols)
        _check_nonempty(t["images"], name, "images")
        flat, parents = _split_list(t["images"])
        lines = parents + 2
        _check_ids(pa.chunked_array([flat]), name, "image id", lines)
        j = _first_duplicate(hex_ids_to_uint64(flat))
        if j is not None:
            raise InputError(f"{name}:{int(lines[j])}: image id {flat[j].as_py()!r} is listed twice")
        return pa.table({"id": flat, "landmark_id": lid.combine_chunks().take(pa.array(parents))})
    # solution files
    _check_nonempty(t["Usage"], name, "Usage")
    usage = pc.utf8_trim_whitespace(t["Usage"])
    if k == "retrieval_solution":
        raw = pc.utf8_trim_whitespace(t["images"])
        is_none = pc.equal(raw, "None")
        _check_nonempty(pc.if_else(is_none, "None", raw), name, "images (use None for no images)")
        flat, parents = _split_list(pc.if_else(is_none, "", raw))
        _check_ids(pa.chunked_array([flat]), name, "index image id", parents + 2)
        lists = _regroup(flat, parents, len(t))
        images = pc.if_else(is_none, pa.scalar(None, lists.type), lists)
        return pa.table({"id": t["id"], "images": images, "usage": usage})
    raw = pc.utf8_trim_whitespace(t["landmarks"])
    raw = pc.if_else(pc.equal(raw, "None"), "", raw)
    flat, parents = _split_list(raw)
    row = _first_false(pc.match_substring_regex(flat, INT_PATTERN))
    if row is not None:
        line = int(parents[row]) + 2
        raise InputError(f"{name}:{line}: landmark id {flat[row].as_py()!r} is not an integer")
    lists = _regroup(pc.cast(flat, pa.int64()), parents, len(t))
    return pa.table({"id": t["id"], "landmarks": lists, "usage": usage})


def _regroup(flat: pa.Array, parents: np.ndarray, n_rows: int) -> pa.ListArray:
    """Inverse of :func:`_split_list`: a list per row (rows with no values get an empty list)."""
    counts = np.bincount(parents, minlength=n_rows) if len(parents) else np.zeros(n_rows, dtype=np.int64)
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def metadata_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The known GLDv2 files present in ``folder`` (name -> path)."""
    folder = Path(folder)
    return {name: folder / name for name in FILES if (folder / name).is_file()}


# ------------------------------------------------------------------------------- example files


_EXAMPLE_CLUSTERS = (
    ("church", "human-made"),
    ("castle", "human-made"),
    ("bridge", "human-made"),
    ("mountain", "natural"),
    ("lake", "natural"),
    ("waterfall", "natural"),
)


def write_example(
    folder: str | os.PathLike[str],
    *,
    n_landmarks: int = 24,
    max_images: int = 6,
    n_index_landmarks: int = 12,
    complete_fraction: float = 0.75,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a small, valid set of all GLDv2 metadata files (random ids, same shapes as the real ones).

    Train landmarks have ids ``7k + 3``; index/test landmarks ``100000 + 7k``. About
    ``complete_fraction`` of the landmarks get a full hierarchy (one of six clusters, each natural or
    human-made); the others have empty hierarchy fields. Test images of index landmarks are
    retrieval queries (their ground truth lists that landmark's index images); the other test
    images are distractors (``None``). Used by the tests, the benchmarks and as a format example.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    used: set[str] = set()

    def new_ids(n: int) -> list[str]:
        out = []
        while len(out) < n:
            v = f"{int(rng.integers(0, 2**63)):016x}"
            if v not in used:
                used.add(v)
                out.append(v)
        return out

    def hier_rows(lids: Sequence[int]) -> list[list[str]]:
        rows = []
        for lid in lids:
            cat = f"http://commons.wikimedia.org/wiki/Category:Landmark_{lid}"
            if rng.random() < complete_fraction:
                name, top = _EXAMPLE_CLUSTERS[int(rng.integers(len(_EXAMPLE_CLUSTERS)))]
                rows.append([str(lid), cat, f"{name} type", name, top])
            else:
                rows.append([str(lid), cat, "", "", ""])
        return rows

    def write(name: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        with open(folder / name, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    train_lids = [7 * k + 3 for k in range(n_landmarks)]
    train_rows, clean_rows = [], []
    for lid in train_lids:
        ids = new_ids(int(rng.integers(1, max_images + 1)))
        base = "https://upload.wikimedia.org/wikipedia/commons"
        train_rows += [[i, f"{base}/{i[0]}/{i[:2]}/L{lid}_{i}.jpg", str(lid)] for i in ids]
        if len(ids) >= 2:
            clean_rows.append([str(lid), " ".join(ids[: max(2, (4 * len(ids)) // 5)])])
    order = rng.permutation(len(train_rows))
    write("train.csv", _KIND_COLUMNS["train"], [train_rows[j] for j in order])
    write("train_clean.csv", _KIND_COLUMNS["train_clean"], clean_rows)
    cats = [[str(lid), f"http://commons.wikimedia.org/wiki/Category:Landmark_{lid}"] for lid in train_lids]
    write("train_label_to_category.csv", _KIND_COLUMNS["label_to_category"], cats)
    write("train_label_to_hierarchical.csv", _KIND_COLUMNS["label_to_hierarchical"], hier_rows(train_lids))

    index_lids = [100000 + 7 * k for k in range(n_index_landmarks)]
    index_rows, by_lid = [], {}
    for lid in index_lids:
        ids = new_ids(int(rng.integers(1, max_images + 1)))
        by_lid[lid] = ids
        index_rows += [[i, str(lid)] for i in ids]
    write("index.csv", ["id"], [[r[0]] for r in index_rows])
    write("index_image_to_landmark.csv", _KIND_COLUMNS["image_to_landmark"], index_rows)
    write(
        "index_label_to_category.csv",
        _KIND_COLUMNS["label_to_category"],
        [[str(lid), f"http://commons.wikimedia.org/wiki/Category:Landmark_{lid}"] for lid in index_lids],
    )
    write("index_label_to_hierarchical.csv", _KIND_COLUMNS["label_to_hierarchical"], hier_rows(index_lids))

    test_rows, retrieval, recognition = [], [], []
    for lid in index_lids:
        for i in new_ids(int(rng.integers(1, 3))):
            usage = "Public" if rng.random() < 0.5 else "Private"
            test_rows.append(i)
            retrieval.append([i, " ".join(by_lid[lid]), usage])
            recognition.append([i, str(lid), usage])
    for i in new_ids(max(2, n_index_landmarks // 2)):  # distractors
        usage = "Public" if rng.random() < 0.5 else "Private"
        test_rows.append(i)
        retrieval.append([i, "None", usage])
        recognition.append([i, "", usage])
    write("test.csv", ["id"], [[i] for i in test_rows])
    write("retrieval_solution_v2.1.csv", _KIND_COLUMNS["retrieval_solution"], retrieval)
    write("recognition_solution_v2.1.csv", _KIND_COLUMNS["recognition_solution"], recognition)
    return metadata_files(folder)
