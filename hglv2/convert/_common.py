"""Shared helpers of the dataset converters: line-numbered errors, safe image paths, level ids,
the split tables, and the one writing path (:func:`write_converted`, through
:func:`hglv2.splits.write_split_folder`) with the converted dataset's card.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hglv2 import __version__
from hglv2.errors import InputError
from hglv2.fileio import folder_transaction, sha256_file
from hglv2.splits import (
    DEFAULT_ROW_GROUP_SIZE,
    FORMAT_VERSION,
    HASHES_NOTE,
    Card,
    SplitFormat,
    write_split_folder,
)


@dataclass
class Conversion:
    """What a converter read and validated: the dataset's description (name, title, license,
    description), the level names (finest first), the split tables, the input files (under the
    dataset root) and extra manifest entries."""

    dataset: dict[str, str]
    level_names: list[str]
    tables: dict[str, pa.Table]
    inputs: list[Path]
    extra: dict[str, Any] = field(default_factory=dict)


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


def image_root_entry(root: Path, out_dir: str | os.PathLike[str]) -> str:
    """The manifest's ``image_root``: the dataset root as a POSIX path relative to the output folder
    (``../Stanford_Online_Products``), so a converted folder moved together with its dataset still
    finds the images and the manifest does not depend on where the tree lives (same bytes); the
    absolute path only where no relative one exists (another drive). Readers resolve it against the
    folder of ``manifest.json`` (``hglv2 train``'s ``data.image_root: null``, ``hglv2 evaluate``)."""
    target, base = Path(root).resolve(), Path(out_dir).resolve()
    try:
        return Path(os.path.relpath(target, base)).as_posix()
    except ValueError:  # no relative path between two drives
        return target.as_posix()


def _check_tables(conversion: Conversion, root: Path, check_images: bool) -> None:
    """Every split has rows; with ``check_images``, every image exists under ``root``."""
    for name, t in conversion.tables.items():
        if t.num_rows == 0:
            raise InputError(f"{conversion.dataset['name']}: split {name} has no images")
        if check_images:
            for image_id, rel in zip(t["id"].to_pylist(), t["path"].to_pylist(), strict=True):
                if not (root / rel).is_file():
                    raise InputError(f"{root / rel}: image {image_id} of split {name} not found")


def _level_counts(tables: dict[str, pa.Table], levels: Sequence[str]) -> dict[str, int]:
    """Distinct known values of each level over all splits."""
    counts = {}
    for lev in levels:
        values = set()
        for t in tables.values():
            if lev in t.column_names:
                values.update(v for v in t[lev].to_pylist() if v >= 0)
        counts[lev] = len(values)
    return counts


def write_converted(
    out_dir: str | os.PathLike[str],
    conversion: Conversion,
    root: Path,
    *,
    command: Sequence[str] | None = None,
    row_group_size: int | None = None,
    check_images: bool = False,
) -> dict[str, Any]:
    """Write the split folder of ``conversion`` (:func:`hglv2.splits.write_split_folder`, card
    :func:`converted_card`); returns the manifest. ``check_images``: every image must exist under
    ``root`` (one ``stat`` per image).

    Everything has been validated by the converter before this is called, so nothing is
    half-written by bad input; the folder is one commit, like ``hglv2 export``
    (:func:`hglv2.fileio.folder_transaction`, owner kind ``convert``): written beside ``out_dir``
    and swapped into place whole, so ``out_dir`` must be new, empty or an earlier conversion.
    """
    _check_tables(conversion, root, check_images)
    levels = [f"level{k}" for k in range(len(conversion.level_names))]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "hglv2_version": __version__,
        "dataset": dict(conversion.dataset),
        "levels": levels,
        "level_names": list(conversion.level_names),
        "level_counts": _level_counts(conversion.tables, levels),
        "image_root": image_root_entry(root, out_dir),
        "splits": {},
        "inputs": {
            p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(conversion.inputs)
        },
        **conversion.extra,
        "command": list(command) if command is not None else None,
    }
    fmt = SplitFormat(
        row_group_size=row_group_size or DEFAULT_ROW_GROUP_SIZE,
        levels={name: [c for c in t.column_names if c in levels] for name, t in conversion.tables.items()},
        key="level0",
    )
    with folder_transaction(out_dir, "convert") as staging:
        return write_split_folder(staging, conversion.tables, manifest, converted_card, fmt)


def converted_card(manifest: dict[str, Any]) -> Card:
    """The dataset card of a converted dataset: the source, the levels, per-split coverage and
    loading."""
    splits = manifest["splits"]
    ds = manifest["dataset"]
    levels = manifest["levels"]
    names = manifest["level_names"]
    out = [
        f"# {ds['title']}: hglv2 splits\n",
        f"Image lists of {ds['title']} with their {len(levels)}-level labels, converted from the "
        f"official files by `hglv2 convert {ds['name']}` (hglv2 {manifest['hglv2_version']}, format "
        f"{manifest['format_version']}). Images are not included: `path` is relative to the "
        "dataset's root folder. The images and annotations keep their own licence "
        f"({ds['license']}).\n",
        f"{ds['description']}\n",
        "## Levels\n",
        "| column | level | distinct values (all splits) |",
        "|---|---|---:|",
    ]
    for lev, name in zip(levels, names, strict=True):
        out.append(f"| `{lev}` | {name} | {manifest['level_counts'][lev]} |")
    out += [
        "",
        "## Splits\n",
        "| split | rows | classes | " + " | ".join(levels) + " |",
        "|---|---:|---:|" + "---:|" * len(levels),
    ]
    for s, info in splits.items():
        c = info["coverage"]
        out.append(
            f"| {s} | {info['rows']} | {info['landmarks']} | "
            + " | ".join(f"{c[lev]:.2%}" if lev in c else "-" for lev in levels)
            + " |"
        )
    out += [
        "",
        "## Columns\n",
        "`id` (the dataset's image id), `path` (relative to the dataset root), "
        + ", ".join(f"`{lev}`" for lev in levels)
        + " (int64 labels, finest first; -1 unknown), "
        + ", ".join(f"`{lev}_name`" for lev in levels)
        + " (the label as the dataset names it), `hierarchy_complete`.\n",
        "## Loading\n",
        "```python",
        "from hglv2.dataset import HGLDv2Dataset",
        f'train = HGLDv2Dataset("{next(iter(splits), "train")}.parquet", "/path/to/{ds["name"]}")',
        "```",
        *HASHES_NOTE,
    ]
    return Card(out, pretty_name=f"{ds['title']} (hglv2 splits)", license="other")
