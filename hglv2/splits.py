"""Split folders: the one writer and reader of a folder of Parquet splits, ``manifest.json`` and
the dataset card ``README.md``, used by the GLDv2 export (:func:`export`), the synthetic data
(:mod:`hglv2.synthetic`) and every converter (:mod:`hglv2.convert`).

A split folder holds ``<split>.parquet`` per split (zstd, row groups so streaming readers fetch one
group at a time, no timestamps: identical inputs give identical bytes), ``manifest.json`` and a
dataset card ``README.md`` whose YAML front matter (``configs``/``data_files``) lets
``datasets.load_dataset(<folder>)`` find the splits. The manifest always has ``format_version``
and ``splits`` (per split: file, rows, landmarks, sha256; :func:`coverage` for the export and the
converters), and ``image_root`` where the folder's images live: the synthetic data records
``images`` (its JPEGs are inside the folder), a converted dataset the dataset root relative to the
folder; an export records none (GLDv2 images are not included). :func:`manifest_image_root` reads
it. Each file is written atomically; :func:`write_split_folder` writes a whole folder.

The GLDv2 export (:func:`export`): the splits ``train``, ``train_full``, ``index`` and ``query`` of
the GLDv2 metadata with the hierarchy joined in (the joins: :mod:`hglv2.gldv2.export`). One or more
hierarchy tables (our own, keyed by ``numbering`` and ``landmark_id``, or the published
``train_``/``index_label_to_hierarchical.csv``, whose numbering comes from the file name; read by
:func:`hglv2.hierarchy.labels.load_hierarchy_table`) are combined (a (numbering, landmark) listed
twice must agree). Per split, ``coverage[level]`` is the fraction of rows whose level is known. The
export's manifest adds the input files with their sha256, the hierarchy sources and the hash of
the combined table, and the command line. Everything is validated before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hglv2 import __version__
from hglv2.errors import InputError
from hglv2.fileio import atomic_open, folder_transaction, sha256_file, write_json, write_parquet
from hglv2.gldv2 import export as gldv2_export
from hglv2.hierarchy.labels import load_hierarchy_table, sort_table
from hglv2.schema import HIERARCHY_COLUMNS, HIERARCHY_NAME_COLUMNS, LEVEL_COLUMNS, NUMBERINGS

FORMAT_VERSION = 1
DEFAULT_ROW_GROUP_SIZE = 50_000
MANIFEST = "manifest.json"
CARD = "README.md"


# ------------------------------------------------------------------------------------ hierarchy


def combine_hierarchies(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Load and concatenate hierarchy tables; a (numbering, landmark_id) in several must have equal
    rows there.

    Returns :data:`HIERARCHY_COLUMNS`, sorted by (numbering, landmark_id), one row per key.
    """
    frames = []
    for p in paths:
        df = load_hierarchy_table(p)
        df["_source"] = Path(p).name
        frames.append(df)
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "landmark_id" else "string") for c in HIERARCHY_COLUMNS}
        )
    df = pd.concat(frames, ignore_index=True)
    key = ["numbering", "landmark_id"]
    levels = list(HIERARCHY_NAME_COLUMNS)
    dup = df.duplicated(key, keep=False)
    if dup.any():
        d = df[dup]
        distinct = d.drop_duplicates([*key, *levels])
        clash = distinct.duplicated(key, keep=False)
        if clash.any():
            n, lid = distinct.loc[clash, key].iloc[0]
            same = (d["numbering"] == n) & (d["landmark_id"] == lid)
            srcs = ", ".join(sorted(set(d.loc[same, "_source"])))
            raise InputError(
                f"{srcs}: landmark_id {int(lid)} ({n} numbering) has different hierarchy rows in these tables"
            )
    df = df.drop_duplicates(key, keep="first").drop(columns="_source")
    return sort_table(df)


def table_hash(df: pd.DataFrame) -> str:
    """sha256 of the table's canonical CSV (pyarrow writer: header, quoting only where needed,
    ``\\n`` line ends, empty for null), columns and rows in their order."""
    buf = io.BytesIO()
    table = pa.Table.from_pandas(df, preserve_index=False)
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(quoting_style="needed"))
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ------------------------------------------------------------------------------------ split files


def coverage(
    table: pa.Table, levels: Sequence[str] = LEVEL_COLUMNS, key: str = "landmark_id"
) -> dict[str, Any]:
    """Per-level fraction of rows with a known level, and landmark counts (complete / not).

    ``levels``: the level columns; ``key``: the column whose distinct values are counted as
    ``landmarks`` (the finest class; converted datasets use ``level0``).
    """
    n = table.num_rows
    cov = {
        lev: (float(pc.sum(pc.greater_equal(table[lev], 0)).as_py() or 0) / n if n else 0.0) for lev in levels
    }
    lids = table[key].to_numpy()
    complete = table["hierarchy_complete"].to_numpy()
    known = lids >= 0
    return {
        "rows": n,
        "rows_hierarchy_complete": int(complete.sum()),
        "coverage": {k: round(v, 6) for k, v in cov.items()},
        "landmarks": len(pd.unique(lids[known])),
        "landmarks_hierarchy_incomplete": len(pd.unique(lids[known & ~complete])),
        "rows_without_landmark": int((~known).sum()),
    }


@dataclass(frozen=True)
class SplitFormat:
    """How a folder's Parquet files are written and described in the manifest.

    ``levels``: the level columns whose :func:`coverage` is recorded, or per split (then each
    split's entry also lists its ``levels``); ``key``: the column counted as ``landmarks``;
    ``brief``: describe each split by file, rows, landmarks and sha256 only (no coverage; the
    synthetic data); ``encode_ids``: dictionary-encode the ``id`` and ``path`` columns too.
    """

    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    levels: Sequence[str] | Mapping[str, Sequence[str]] = LEVEL_COLUMNS
    key: str = "landmark_id"
    brief: bool = False
    encode_ids: bool = False


def write_split_files(
    out_dir: str | os.PathLike[str], tables: dict[str, pa.Table], fmt: SplitFormat = SplitFormat()
) -> dict[str, Any]:
    """Write each table to ``out_dir/<split>.parquet`` (atomic, deterministic bytes) and return the
    manifest's ``splits`` section: :func:`coverage` plus file name, bytes, sha256 and columns (or
    the brief entry, :class:`SplitFormat`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_info: dict[str, Any] = {}
    for s, t in tables.items():
        path = out_dir / f"{s}.parquet"
        encoded = True if fmt.encode_ids else [c for c in t.column_names if c not in ("id", "path")]
        write_parquet(t, path, row_group_size=fmt.row_group_size, use_dictionary=encoded)
        if fmt.brief:
            split_info[s] = {
                "file": path.name,
                "rows": t.num_rows,
                "landmarks": len(pd.unique(t[fmt.key].to_numpy())),
                "sha256": sha256_file(path),
            }
            continue
        levels = fmt.levels[s] if isinstance(fmt.levels, Mapping) else fmt.levels
        info = coverage(t, levels, fmt.key)
        info.update(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "columns": t.column_names,
            }
        )
        if isinstance(fmt.levels, Mapping):
            info["levels"] = list(levels)
        split_info[s] = info
    return split_info


def write_split_folder(
    out_dir: str | os.PathLike[str],
    tables: dict[str, pa.Table],
    manifest: dict[str, Any],
    card: Callable[[dict[str, Any]], Card],
    fmt: SplitFormat = SplitFormat(),
) -> dict[str, Any]:
    """Write a split folder into ``out_dir``, file by file: the splits (:func:`write_split_files`),
    ``manifest`` with its ``splits`` section filled in (its other keys in their order) and the
    dataset card ``card(manifest)``; returns the manifest. Callers wrap this in
    :func:`hglv2.fileio.folder_transaction` so the folder appears whole."""
    out = Path(out_dir)
    manifest["splits"] = write_split_files(out, tables, fmt)
    write_json(out / MANIFEST, manifest)
    write_card(out / CARD, manifest["splits"], card(manifest))
    return manifest


# ---------------------------------------------------------------------------------------- reading


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``manifest.json`` (``{}`` when it has none); invalid JSON is an input error."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    return out if isinstance(out, dict) else {}


def manifest_image_root(folder: str | os.PathLike[str], option: str = "--image-root") -> Path:
    """The image folder a split folder's manifest records: ``image_root``, relative to ``folder``
    (an absolute path as it is). A folder whose manifest names none (an export: GLDv2 images are
    not included) or whose image folder does not exist is an input error; ``option`` names what
    the user sets instead."""
    folder = Path(folder)
    recorded = read_manifest(folder).get("image_root")
    if not isinstance(recorded, str) or not recorded:
        raise InputError(f"{folder}: the manifest names no image folder; give {option}")
    root = folder / recorded  # an absolute recorded path replaces folder
    if not root.is_dir():
        raise InputError(f"{root}: no such image folder")
    return root


# ---------------------------------------------------------------------------------- dataset card

HASHES_NOTE = ("", "File sizes and sha256 are in `manifest.json`.", "")


@dataclass(frozen=True)
class Card:
    """A dataset card: its Markdown lines after the front matter, and the front matter's names."""

    lines: list[str]
    pretty_name: str = "Hierarchical Google Landmarks v2 (H-GLDv2) splits"
    license: str = "cc-by-4.0"


def front_matter(split_names: Iterable[str], pretty_name: str, license: str) -> str:
    """The Hugging Face YAML front matter: one ``configs`` entry per split file (``query`` alone)."""
    names = list(split_names)
    plain = [s for s in names if s != "query"]
    lines = [
        "---",
        f"license: {license}",
        f"pretty_name: {pretty_name}",
        "configs:",
    ]
    if plain:
        lines += ["- config_name: default", "  data_files:"]
        for s in plain:
            lines += [f"  - split: {s}", f"    path: {s}.parquet"]
    if "query" in names:  # its extra `usage` column needs its own config
        lines += ["- config_name: query", "  data_files:", "  - split: query", "    path: query.parquet"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def loading_lines(split_names: Iterable[str]) -> list[str]:
    """The card's Hugging Face loading code: the exact call for each split.

    The folder is named by its absolute path (``load_dataset(".")`` fails: the dataset name comes
    from the folder's name). ``load_dataset(folder)`` reads the ``configs`` of the front matter; the generic
    ``load_dataset("parquet", data_dir=folder)`` does not (it groups files by name, so
    ``train.parquet`` and ``train_full.parquet`` land together in one ``train`` split), hence the
    explicit ``data_files`` line.
    """
    names = list(split_names)
    plain = [s for s in names if s != "query"]
    lines = [
        "import os",
        "import datasets",
        "folder = os.getcwd()  # this folder: run from it, or put its path here",
    ]
    if plain:
        lines.append(f"splits = datasets.load_dataset(folder)  # DatasetDict: {', '.join(plain)}")
    for s in plain:
        lines.append(f'{s} = datasets.load_dataset(folder, split="{s}")')
    if "query" in names:
        lines.append('query = datasets.load_dataset(folder, "query", split="query")  # + `usage`')
    if names:
        s = "train_full" if "train_full" in names else names[0]
        lines += [
            "# the generic Parquet builder ignores this card: name the file of each split (data_dir= alone",
            '# would merge train.parquet and train_full.parquet into one "train" split)',
            f'{s}_again = datasets.load_dataset("parquet", data_files={{"{s}": f"{{folder}}/{s}.parquet"}}, '
            f'split="{s}")',
        ]
    return lines


def write_card(path: str | os.PathLike[str], split_names: Iterable[str], card: Card) -> None:
    """Write the dataset card: the front matter of ``split_names``, then ``card.lines``."""
    with atomic_open(path) as fh:
        fh.write("\n".join([front_matter(split_names, card.pretty_name, card.license), *card.lines]))


def export_card(manifest: dict[str, Any]) -> Card:
    """The export's card: provenance, coverage, the two numberings, columns and loading."""
    splits = manifest["splits"]
    first = next(iter(splits), "train")
    hier = manifest["hierarchy"]
    sources = ", ".join(f"`{x['file']}`" for x in hier["sources"]) or "none"
    out = [
        "# H-GLDv2 metadata splits\n",
        "Google Landmarks Dataset v2 image lists with the landmark hierarchy joined in, written by "
        f"`hglv2 export` (hglv2 {manifest['hglv2_version']}, format {manifest['format_version']}). "
        "Images are not included: `path` is relative to an image folder in the GLDv2 layout "
        "(`a/b/c/<id>.jpg`). GLDv2 annotations: CC BY 4.0 (Google).\n",
        "## Splits\n",
        "| split | rows | landmarks | level0 | level1 | level2 | landmarks without full hierarchy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, info in splits.items():
        c = info["coverage"]
        out.append(
            f"| {s} | {info['rows']} | {info['landmarks']} | {c['level0']:.2%} | {c['level1']:.2%} "
            f"| {c['level2']:.2%} | {info['landmarks_hierarchy_incomplete']} |"
        )
    out += [
        "",
        "Level columns give the share of rows whose level is known; unknown levels are -1 and "
        "`hierarchy_complete` is false ("
        + (
            "index and query rows whose landmark or cluster is unknown were dropped: "
            + ", ".join(f"{k} {v}" for k, v in manifest["dropped_incomplete"].items())
            if manifest.get("drop_incomplete")
            else "such rows are kept, never dropped"
        )
        + ").\n",
        "Landmark ids come in two numberings (GLDv2 README): train and train_full use the train "
        "ids, index and query the index ids; query rows take the landmark of their ground-truth "
        "index images. Level-1 and level-2 ids are one vocabulary shared by all splits.\n",
        "## Hierarchy\n",
        f"Sources: {sources}; "
        f"{hier['landmarks']} landmarks, {hier['level1_names']} level-1 and {hier['level2_names']} "
        f"level-2 names; table sha256 `{hier['table_sha256']}`.\n",
        "## Columns\n",
        "`id` (16 hex chars), `landmark_id` (int64, -1 if none), `path`, `category`, `supercategory`, "
        "`hierarchical_label`, `natural_or_human_made` (nullable strings), `level0` (= landmark_id), "
        "`level1`, `level2` (dense ids in the sorted order of the names; -1 unknown), "
        "`hierarchy_complete`; `query` adds `usage` (Public/Private) and `recognition_landmark_id` "
        "(the first landmark of the recognition solution, train numbering, -1 if none).\n",
        "## Loading\n",
        "```python",
        *loading_lines(splits),
        "```",
        "",
        "```python",
        "import duckdb",
        f"duckdb.sql(\"SELECT level1, count(*) FROM '{first}.parquet' GROUP BY level1\")",
        "from hglv2.dataset import HGLDv2Dataset",
        f'ds = HGLDv2Dataset("{first}.parquet", "/path/to/gldv2/images")',
        "```",
        *HASHES_NOTE,
    ]
    return Card(out)


# ------------------------------------------------------------------------------------ GLDv2 export


def export(
    metadata: str | os.PathLike[str] | dict[str, Path],
    out_dir: str | os.PathLike[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Write Parquet splits, ``manifest.json`` and the dataset card ``README.md`` to ``out_dir``.

    The folder is one commit (:func:`hglv2.fileio.folder_transaction`): it is written beside
    ``out_dir`` and swapped into place whole, under a lock; ``out_dir`` must be new, empty or an
    earlier export. Keyword arguments: those of :func:`export_into`.
    """
    with folder_transaction(out_dir, "export") as staging:
        return export_into(metadata, staging, **kwargs)


def export_into(
    metadata: str | os.PathLike[str] | dict[str, Path],
    out_dir: str | os.PathLike[str],
    *,
    hierarchy: Sequence[str | os.PathLike[str]] | None = None,
    splits: Sequence[str] | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    command: Sequence[str] | None = None,
    drop_incomplete: bool = False,
    mixed_ground_truth: str = "error",
) -> dict[str, Any]:
    """Write Parquet splits, ``manifest.json`` and the dataset card ``README.md`` into ``out_dir``.

    Files are written in place, one by one (:func:`export` wraps this in a folder transaction).

    Args:
        metadata: the folder holding the GLDv2 files (by their official names), or a mapping
            file name -> path.
        hierarchy: hierarchy table files (ours, with both numberings, or the published ones);
            default: the published ``train_`` and ``index_label_to_hierarchical.csv`` found among
            the metadata files (none: every hierarchy level is unknown and flagged).
        splits: which splits; default every split whose required files are present.
        row_group_size: Parquet rows per row group.
        command: the command line to record in the manifest.
        drop_incomplete: remove index and query rows whose landmark or cluster is unknown (the
            authors' evaluation set, their ``remove_nan``); default: keep them, flagged.
        mixed_ground_truth: ``"error"`` or ``"first"``: what a query whose ground-truth index
            images depict different landmarks gets (:mod:`hglv2.gldv2.export`).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    files, chosen = gldv2_export.resolve_inputs(metadata, splits)
    if hierarchy is None:
        hierarchy = [files[f] for f in gldv2_export.PUBLISHED_HIERARCHY_FILES if f in files]
    hier_paths = [Path(p) for p in hierarchy]
    table = combine_hierarchies(hier_paths)
    indexes = gldv2_export.hierarchy_indexes(table)
    category_inputs = gldv2_export.validate_category_files(files, chosen)
    tables, dropped, query_stats = gldv2_export.split_tables(
        files, chosen, indexes, drop_incomplete=drop_incomplete, mixed_ground_truth=mixed_ground_truth
    )
    used_inputs = sorted(
        {f for s in chosen for f in (*gldv2_export.SPLIT_INPUTS[s][0], *gldv2_export.SPLIT_INPUTS[s][1])}
        & set(files)
        | set(category_inputs)
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "hglv2_version": __version__,
        "splits": {},
        "inputs": {
            f: {"sha256": sha256_file(files[f]), "bytes": files[f].stat().st_size} for f in used_inputs
        },
        "hierarchy": _hierarchy_entry(hier_paths, table, indexes),
        "split_numbering": {s: gldv2_export.SPLIT_NUMBERING[s] for s in chosen},
        "drop_incomplete": drop_incomplete,
        "dropped_incomplete": dropped,
        "query_ground_truth": query_stats,
        "numberings": _numberings_entry(table, files),
        "row_group_size": row_group_size,
        "command": list(command) if command is not None else None,
    }
    return write_split_folder(
        out_dir, tables, manifest, export_card, SplitFormat(row_group_size=row_group_size)
    )


def _numberings_entry(table: pd.DataFrame, files: Mapping[str, Path]) -> dict[str, Any] | None:
    """The manifest's ``numberings``: the places with a train and an index id (linked by the
    queries) whose two numberings give different clusters or tops
    (:mod:`hglv2.hierarchy.consistency`); None without the solution files."""
    from hglv2.hierarchy.consistency import consistency_files

    found = consistency_files(table, files)
    return None if found is None else found[1]


def _hierarchy_entry(
    paths: Sequence[Path], table: pd.DataFrame, indexes: dict[str, gldv2_export.HierarchyIndex]
) -> dict[str, Any]:
    """The export manifest's ``hierarchy``: sources, table hash, landmark and name counts."""
    return {
        "sources": [{"file": p.name, "sha256": sha256_file(p)} for p in paths],
        "table_sha256": table_hash(table),
        "landmarks": int(len(table)),
        "landmarks_by_numbering": {n: int((table["numbering"] == n).sum()) for n in NUMBERINGS},
        "level1_names": len(indexes["train"].level1_names),
        "level2_names": len(indexes["train"].level2_names),
        "provenance": sorted(table["provenance"].dropna().unique().tolist()),
    }
