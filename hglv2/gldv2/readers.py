"""The validating readers of the GLDv2 files (no network).

:func:`read_file` reads every column as a string with pyarrow's CSV reader (no type guessing:
``"None"`` in the solution files is a marker, not a missing value; a UTF-8 BOM and CRLF line ends
are accepted; quoted fields may hold commas) and validates: required columns, image ids of 16
lowercase hex characters (which also rules out paths such as ``../x``), integer landmark ids, no
duplicate keys, no empty required fields, the right number of fields per line. The first problem
raises :class:`~hglv2.errors.InputError` ``FILE:LINE: ...`` (line 1 is the header).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hglv2.errors import InputError
from hglv2.gldv2.specs import FILES, spec_for

ID_PATTERN = r"^[0-9a-f]{16}$"
INT_PATTERN = r"^[0-9]{1,18}$"


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


def read_header(path: str | os.PathLike[str]) -> list[str]:
    """The column names on line 1 of a CSV file (BOM and surrounding spaces removed)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return _header(path)


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


def _string_chunks(col: pa.ChunkedArray | pa.Array):
    """(offsets, bytes) numpy views of each chunk of a string column without nulls, or None
    (another type, or nulls present): the fast checks below read the buffers directly."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = []
    for arr in chunks:
        if not pa.types.is_string(arr.type) or arr.null_count:
            return None
        n = len(arr)
        if n == 0:
            continue
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        data = arr.buffers()[2]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        out.append((offsets, data))
    return out


_HEX_DIGIT = np.zeros(256, dtype=bool)
_HEX_DIGIT[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = True
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x21:0x7F] = True  # ASCII without space and control characters


def _all_hex_ids(col: pa.ChunkedArray | pa.Array) -> bool:
    """True when every value is 16 lowercase hex characters (:data:`ID_PATTERN`), checked on the
    string buffers; False means: look with the regex."""
    chunks = _string_chunks(col)
    if chunks is None:
        return False
    for offsets, data in chunks:
        n = len(offsets) - 1
        if offsets[-1] - offsets[0] != 16 * n or not (np.diff(offsets) == 16).all():
            return False
        if not _HEX_DIGIT[data[offsets[0] : offsets[-1]]].all():
            return False
    return True


def _check_ids(col: pa.ChunkedArray, name: str, field: str, lines: np.ndarray | None = None) -> None:
    if _all_hex_ids(col):
        return
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


def _starts_printable(col: pa.ChunkedArray) -> bool:
    """True when every value starts with a printable non-space ASCII character (so it is neither
    empty nor whitespace only), checked on the string buffers; False means: look closer."""
    chunks = _string_chunks(col)
    if chunks is None:
        return False
    for offsets, data in chunks:
        if not (np.diff(offsets) > 0).all() or not _PRINTABLE[data[offsets[:-1]]].all():
            return False
    return True


def _check_nonempty(col: pa.ChunkedArray, name: str, field: str) -> None:
    """Empty or whitespace-only fields (no copy of the column is made)."""
    if _starts_printable(col):
        return
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
