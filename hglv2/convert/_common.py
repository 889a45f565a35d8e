"""Shared helpers of the dataset converters: line-numbered errors, safe image paths, level ids,
the split tables and the one writing path (:func:`write_converted`, through :mod:`hglv2.splits`).

A converted split has one row per image:

=====================  ========  ==========================================================
column                 type      meaning
=====================  ========  ==========================================================
id                     string    the dataset's own image id (or its path when it has none)
path                   string    image path relative to the dataset root (validated: relative,
                                 no ``..``, no backslash or drive)
level0 .. level{L-1}   int64     labels, finest first (-1 unknown)
level{k}_name          string    the label as the dataset names it
hierarchy_complete     bool      every level known
=====================  ========  ==========================================================

Integer labels of a level are the dataset's own ids where it has integer ids (SOP class ids, DyML
ids, CUB class ids); where a level is named by strings (iNaturalist taxonomy) they are dense ids in
the sorted order of the names over all splits, so every split shares the same integers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hglv2 import __version__
from hglv2.errors import InputError
from hglv2.fileio import folder_transaction, sha256_file, write_json

FORMAT_VERSION = 1


def fail(path: str | os.PathLike[str], line: int | None, message: str) -> InputError:
    """``InputError("FILE:LINE: message")`` (``FILE: message`` without a line)."""
    name = Path(path).name
    return InputError(f"{name}:{line}: {message}" if line is not None else f"{name}: {message}")


def need_file(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected in the dataset root {root})")
    return path


def read_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, BOM dropped, line ends stripped); a bad encoding is an input error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise fail(path, line, "not valid UTF-8") from None
    return text.splitlines()


def check_relpath(path: str, where: Path, line: int | None) -> str:
    """A safe relative image path (POSIX separators): no absolute path, drive, backslash, ``..``,
    empty component or control character."""
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or ":" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or any(ord(c) < 32 for c in path)
    )
    if bad:
        raise fail(where, line, f"unsafe image path {path!r} (must be relative, without '..')")
    return path


def parse_int(text: str, where: Path, line: int, field: str, minimum: int | None = None) -> int:
    t = text.strip()
    try:
        value = int(t)
    except ValueError:
        raise fail(where, line, f"{field} {t!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise fail(where, line, f"{field} {value} must be >= {minimum}")
    return value


def dense_ids(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Dense ids in the sorted order of the distinct values (ints numerically, strings by code point)."""
    names = sorted(set(values))
    lut = {v: i for i, v in enumerate(names)}
    return np.fromiter((lut[v] for v in values), dtype=np.int64, count=len(values)), names


def split_table(
    ids: Sequence[str], paths: Sequence[str], labels: np.ndarray, names: Sequence[Sequence[Any]]
) -> pa.Table:
    """The split table (module docstring) from ids, paths, labels (N, L) and label names per level."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(ids), -1)
    cols: dict[str, Any] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "path": pa.array(list(paths), pa.string()),
    }
    n_levels = labels.shape[1]
    for k in range(n_levels):
        cols[f"level{k}"] = pa.array(labels[:, k], pa.int64())
    for k in range(n_levels):
        cols[f"level{k}_name"] = pa.array([None if v is None else str(v) for v in names[k]], pa.string())
    cols["hierarchy_complete"] = pa.array((labels >= 0).all(axis=1) if n_levels else np.ones(len(ids), bool))
    return pa.table(cols)


def check_unique_ids(ids: Sequence[str], where: Path, lines: Sequence[int] | None = None) -> None:
    seen: dict[str, int] = {}
    for k, i in enumerate(ids):
        if i in seen:
            line = lines[k] if lines is not None else None
            first = lines[seen[i]] if lines is not None else seen[i]
            raise fail(where, line, f"image id {i!r} is listed twice (first at line {first})")
        seen[i] = k


def write_converted(
    out_dir: str | os.PathLike[str],
    *,
    dataset: dict[str, str],
    level_names: Sequence[str],
    tables: dict[str, pa.Table],
    inputs: Sequence[Path],
    root: Path,
    extra: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
    row_group_size: int | None = None,
    check_images: bool = False,
) -> dict[str, Any]:
    """Write the splits (:func:`hglv2.splits.write_split_files`), ``manifest.json`` and the dataset
    card (:func:`hglv2.splits.write_converted_card`); returns the manifest. ``check_images``:
    every image must exist under ``root`` (one ``stat`` per image).

    Everything has been validated by the caller before this is called, so nothing is half-written
    by bad input; the folder is one commit, like ``hglv2 export``
    (:func:`hglv2.fileio.folder_transaction`, owner kind ``convert``): written beside ``out_dir``
    and swapped into place whole, so ``out_dir`` must be new, empty or an earlier conversion.
    """
    from hglv2.splits import DEFAULT_ROW_GROUP_SIZE, write_converted_card, write_split_files

    levels = [f"level{k}" for k in range(len(level_names))]
    for name, t in tables.items():
        if t.num_rows == 0:
            raise InputError(f"{dataset['name']}: split {name} has no images")
        if check_images:
            for image_id, rel in zip(t["id"].to_pylist(), t["path"].to_pylist(), strict=True):
                if not (root / rel).is_file():
                    raise InputError(f"{root / rel}: image {image_id} of split {name} not found")
    counts = {}
    for lev in levels:
        values = set()
        for t in tables.values():
            if lev in t.column_names:
                values.update(v for v in t[lev].to_pylist() if v >= 0)
        counts[lev] = len(values)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "hglv2_version": __version__,
        "dataset": dict(dataset),
        "levels": levels,
        "level_names": list(level_names),
        "level_counts": counts,
        "image_root": str(root.resolve()),
        "splits": {},
        "inputs": {
            p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(inputs)
        },
        **(extra or {}),
        "command": list(command) if command is not None else None,
    }
    with folder_transaction(out_dir, "convert") as staging:
        for name, t in tables.items():  # each split with its own level columns
            own = [c for c in t.column_names if c in levels]
            manifest["splits"].update(
                write_split_files(
                    staging,
                    {name: t},
                    row_group_size=row_group_size or DEFAULT_ROW_GROUP_SIZE,
                    levels=own,
                    key="level0",
                )
            )
            manifest["splits"][name]["levels"] = own
        write_json(staging / "manifest.json", manifest)
        write_converted_card(staging / "README.md", manifest)
    return manifest
