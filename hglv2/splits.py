"""Export validated GLDv2 metadata as Parquet splits with the hierarchy joined in.

Splits (one row per image, columns :data:`hglv2.schema.SPLIT_COLUMNS`, ``query`` adds ``usage``
and ``recognition_landmark_id``):

==========  ==================================================================================
split       rows
==========  ==================================================================================
train       ``train_clean.csv`` exploded to one row per image (checked against ``train.csv``
            when present: every image listed there, with the same landmark); train numbering
train_full  ``train.csv``; train numbering
index       ``index.csv`` with landmarks from ``index_image_to_landmark.csv`` (-1 if absent);
            index numbering
query       test images with a retrieval solution (``images`` not ``None``); ``landmark_id`` is
            the landmark of its ground-truth index images (index numbering, as the authors label
            queries: SupRank ``suprank/datasets/gldv2.py``); ``usage`` is the solution's
            Public/Private column; ``recognition_landmark_id`` the first landmark of
            ``recognition_solution_v2.1.csv`` (train numbering, -1 if none), for recognition/GAP
==========  ==================================================================================

**Two numberings.** Train ids and index ids are different numberings whose integer ranges overlap
("the integer landmark id's mentioned here are different from the ones in the train set", GLDv2
README). Each split is joined to the hierarchy rows of its own numbering: train and train_full to
the train rows, index and query to the index rows; a landmark id is never joined across them.

**Query labels.** The retrieval solution lists, per query, the index images that are relevant.
Every listed image must be in ``index.csv`` (or, without it, in ``index_image_to_landmark.csv``).
Neither the GLDv2 README nor the authors' code says that these images can depict different
landmarks: the authors take the landmark of the *first* listed image and never check the others.
Here the images with a landmark must all agree; a query whose images disagree is an input error
naming its line (``mixed_ground_truth="error"``, the default), or takes the authors' rule
(``"first"``: the landmark of the first listed image that has one), with the number of such
queries in the manifest (``query_ground_truth``). A query none of whose images has a landmark gets
-1. So each query and its ground-truth index images carry the same labels at every level.

**The authors' evaluation set.** ``drop_incomplete=True`` removes index and query rows whose
landmark or cluster (``level1``) is unknown, as the authors' ``remove_nan``
(``suprank/datasets/gldv2.py``) drops rows whose cluster is NaN; a row with a known cluster but no
``natural_or_human_made`` is kept (``hierarchy_complete`` false), as there. The counts are in the
manifest (``dropped_incomplete``). By default such rows are kept and flagged.

Hierarchy: one or more hierarchy tables (our own, keyed by ``numbering`` and ``landmark_id``, or
the published ``train_``/``index_label_to_hierarchical.csv``, whose numbering comes from the file
name; read by :func:`hglv2.hierarchy.labels.load_hierarchy_table`) are combined (a (numbering,
landmark) listed twice must agree). Coarse level ids are dense in the sorted order of the names
over the whole combined table, both numberings together (``level1 = rank(hierarchical_label)``,
``level2 = rank(natural_or_human_made)``): one vocabulary, so every split shares the same
integers (the authors number each file's clusters separately). ``level0`` is the landmark id (in
the split's numbering). A landmark missing from its table, or with an empty level, keeps its rows:
unknown levels are -1 and ``hierarchy_complete`` is false. Per split, ``coverage[level]`` is the
fraction of rows whose level is known.

Outputs in the output folder: ``<split>.parquet`` (zstd, row groups of ``row_group_size`` rows so
streaming readers fetch one group at a time, no timestamps: identical inputs give identical bytes),
``manifest.json`` (format version, per-split file, rows, bytes, sha256, coverage; input files with
their sha256; hierarchy sources and the hash of the combined table; the command line) and a
dataset card ``README.md`` whose YAML front matter (``configs``/``data_files``) lets
``datasets.load_dataset(<folder>)`` find the splits. Everything is validated before anything is
written, and each file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hglv2 import __version__
from hglv2.errors import InputError
from hglv2.fileio import atomic_open, folder_transaction, sha256_file, write_json, write_parquet
from hglv2.gldv2.readers import metadata_files, read_file
from hglv2.hierarchy.labels import load_hierarchy_table, sort_table
from hglv2.schema import HIERARCHY_COLUMNS, LEVEL_COLUMNS, NUMBERINGS, SPLIT_COLUMNS

FORMAT_VERSION = 1
SPLITS = ("train", "train_full", "index", "query")
DEFAULT_ROW_GROUP_SIZE = 50_000

SPLIT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("landmark_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("supercategory", pa.string()),
        pa.field("hierarchical_label", pa.string()),
        pa.field("natural_or_human_made", pa.string()),
        pa.field("level0", pa.int64(), nullable=False),
        pa.field("level1", pa.int64(), nullable=False),
        pa.field("level2", pa.int64(), nullable=False),
        pa.field("hierarchy_complete", pa.bool_(), nullable=False),
    ]
)
QUERY_SCHEMA = SPLIT_SCHEMA.append(pa.field("usage", pa.string(), nullable=False)).append(
    pa.field("recognition_landmark_id", pa.int64(), nullable=False)
)
#: the numbering of each split's landmark ids
SPLIT_NUMBERING = {"train": "train", "train_full": "train", "index": "index", "query": "index"}
#: the category file each numbering's hierarchy was resolved from (validated when present)
CATEGORY_FILES = {n: f"{n}_label_to_category.csv" for n in NUMBERINGS}
MIXED_GROUND_TRUTH_RULES = ("error", "first")
assert tuple(SPLIT_SCHEMA.names) == SPLIT_COLUMNS

# Which metadata files each split reads (required, optional).
SPLIT_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (("train_clean.csv",), ("train.csv",)),
    "train_full": (("train.csv",), ()),
    "index": (("index_image_to_landmark.csv",), ("index.csv",)),
    "query": (
        ("retrieval_solution_v2.1.csv", "index_image_to_landmark.csv"),
        ("test.csv", "index.csv", "recognition_solution_v2.1.csv"),
    ),
}
PUBLISHED_HIERARCHY_FILES = ("train_label_to_hierarchical.csv", "index_label_to_hierarchical.csv")


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
    levels = ["category", "supercategory", "hierarchical_label", "natural_or_human_made"]
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


def _dense_ids(values: pd.Series, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Dense integer id per value in the sorted order of the distinct names (or of ``names``, the
    shared vocabulary); -1 for missing."""
    names = sorted(values.dropna().unique().tolist()) if names is None else list(names)
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    return codes, names


class HierarchyIndex:
    """A hierarchy table (one numbering) ready to be joined: landmark ids sorted, level ids
    precomputed. ``level1_names``/``level2_names`` fix the vocabulary (default: the table's own
    names), so the tables of both numberings can share one."""

    def __init__(
        self,
        table: pd.DataFrame,
        level1_names: Sequence[str] | None = None,
        level2_names: Sequence[str] | None = None,
    ) -> None:
        table = table.sort_values("landmark_id", kind="stable").reset_index(drop=True)
        self.table = table
        self.landmarks = table["landmark_id"].to_numpy(dtype=np.int64)
        self.level1, self.level1_names = _dense_ids(table["hierarchical_label"], level1_names)
        self.level2, self.level2_names = _dense_ids(table["natural_or_human_made"], level2_names)
        self.strings = {
            c: pa.array(table[c].astype(object).where(table[c].notna(), None).tolist(), pa.string())
            for c in ("category", "supercategory", "hierarchical_label", "natural_or_human_made")
        }

    def _positions(self, landmark_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each landmark in the table (0 where absent) and whether it is present."""
        if len(self.landmarks) == 0:
            return np.zeros(len(landmark_ids), dtype=np.int64), np.zeros(len(landmark_ids), dtype=bool)
        top = int(self.landmarks[-1])
        if top < 4 * (len(landmark_ids) + len(self.landmarks)) + 1_000_000:  # dense ids: a lookup table
            lut = np.full(top + 1, -1, dtype=np.int64)
            lut[self.landmarks] = np.arange(len(self.landmarks))
            inside = (landmark_ids >= 0) & (landmark_ids <= top)
            pos = np.where(inside, lut[np.clip(landmark_ids, 0, top)], -1)
            return np.maximum(pos, 0), pos >= 0
        pos = np.minimum(np.searchsorted(self.landmarks, landmark_ids), len(self.landmarks) - 1)
        return pos, (landmark_ids >= 0) & (self.landmarks[pos] == landmark_ids)

    def join(
        self,
        ids: pa.Array | pa.ChunkedArray,
        landmark_ids: np.ndarray,
        usage: pa.Array | pa.ChunkedArray | None = None,
        recognition: np.ndarray | None = None,
    ) -> pa.Table:
        """Rows (id, landmark_id) in their order -> a split table (:data:`SPLIT_SCHEMA`)."""
        landmark_ids = np.asarray(landmark_ids, dtype=np.int64)
        n = len(landmark_ids)
        pos_c, found = self._positions(landmark_ids)
        take = pa.array(np.where(found, pos_c, 0), pa.int64())
        mask = pa.array(~found)
        cols: dict[str, Any] = {"id": ids, "landmark_id": pa.array(landmark_ids, pa.int64())}
        cols["path"] = image_paths(ids)
        for c, arr in self.strings.items():
            cols[c] = (
                pc.if_else(mask, pa.scalar(None, pa.string()), arr.take(take))
                if len(arr)
                else pa.nulls(n, pa.string())
            )
        lev1 = np.where(found, self.level1[pos_c] if len(self.level1) else -1, -1)
        lev2 = np.where(found, self.level2[pos_c] if len(self.level2) else -1, -1)
        lev0 = np.where(landmark_ids >= 0, landmark_ids, -1)
        cols["level0"] = pa.array(lev0, pa.int64())
        cols["level1"] = pa.array(lev1, pa.int64())
        cols["level2"] = pa.array(lev2, pa.int64())
        cols["hierarchy_complete"] = pa.array((lev0 >= 0) & (lev1 >= 0) & (lev2 >= 0))
        schema = SPLIT_SCHEMA
        if usage is not None:
            cols["usage"] = usage
            n_rec = np.full(n, -1, dtype=np.int64) if recognition is None else recognition
            cols["recognition_landmark_id"] = pa.array(n_rec, pa.int64())
            schema = QUERY_SCHEMA
        return pa.table(cols).cast(schema)


def hierarchy_indexes(table: pd.DataFrame) -> dict[str, HierarchyIndex]:
    """One :class:`HierarchyIndex` per numbering over one shared vocabulary: level-1 and level-2
    names are ranked over the whole table, so the integer ids mean the same in every split."""
    l1 = sorted(table["hierarchical_label"].dropna().unique().tolist())
    l2 = sorted(table["natural_or_human_made"].dropna().unique().tolist())
    return {n: HierarchyIndex(table[table["numbering"] == n], l1, l2) for n in NUMBERINGS}


def image_paths(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``a/b/c/<id>.jpg`` for each id, vectorised (see :func:`hglv2.schema.image_relpath`).

    GLDv2 ids (16 ASCII characters) are laid out as one fixed-width byte matrix with numpy; other
    ids go through pyarrow string kernels.
    """
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    arr = arr.cast(pa.string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1] if n else None
    if n and arr.null_count == 0 and offsets[-1] - offsets[0] == 16 * n and (np.diff(offsets) == 16).all():
        raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(n, 16)
        out = np.empty((n, 26), dtype=np.uint8)  # a/b/c/ + id + .jpg
        out[:, 0:6:2] = raw[:, :3]
        out[:, 1:6:2] = ord("/")
        out[:, 6:22] = raw
        out[:, 22:26] = np.frombuffer(b".jpg", dtype=np.uint8)
        if raw.max(initial=0) < 128:  # ASCII: one byte per character
            offs = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * 26).tobytes())
            return pa.StringArray.from_buffers(n, offs, pa.py_buffer(out.tobytes()))
    parts = [pc.utf8_slice_codeunits(arr, k, k + 1) for k in range(3)]
    return pc.binary_join_element_wise(*parts, pc.binary_join_element_wise(arr, ".jpg", ""), "/")


# ---------------------------------------------------------------------------------------- splits


def _line_of(path: Path, needle: str) -> int:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for k, line in enumerate(fh, start=1):
            if needle in line:
                return k
    return 0


def _first_missing(values: pa.ChunkedArray, value_set: pa.ChunkedArray) -> int | None:
    pos = pc.index_in(
        values, value_set=value_set.combine_chunks() if isinstance(value_set, pa.ChunkedArray) else value_set
    )
    if pos.null_count == 0:
        return None
    return int(np.flatnonzero(pc.is_null(pos).to_numpy(zero_copy_only=False))[0])


def build_train(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    clean = read_file(files["train_clean.csv"])
    ids, lids = clean["id"], clean["landmark_id"].to_numpy()
    if "train.csv" in files:
        train = read_file(files["train.csv"])
        pos = pc.index_in(ids, value_set=train["id"].combine_chunks())
        if pos.null_count:
            row = int(np.flatnonzero(pc.is_null(pos).to_numpy(zero_copy_only=False))[0])
            image = ids[row].as_py()
            line = _line_of(files["train_clean.csv"], image)
            raise InputError(f"train_clean.csv:{line}: image {image} is not in train.csv")
        other = train["landmark_id"].to_numpy()[pos.to_numpy()]
        bad = np.flatnonzero(other != lids)
        if len(bad):
            image = ids[int(bad[0])].as_py()
            line = _line_of(files["train_clean.csv"], image)
            raise InputError(
                f"train_clean.csv:{line}: image {image} has landmark {int(lids[bad[0]])} here but "
                f"{int(other[bad[0]])} in train.csv"
            )
    return ids, lids


def build_train_full(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    train = read_file(files["train.csv"])
    return train["id"], train["landmark_id"].to_numpy()


def build_index(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    mapping = read_file(files["index_image_to_landmark.csv"])
    if "index.csv" not in files:
        return mapping["id"], mapping["landmark_id"].to_numpy()
    ids = read_file(files["index.csv"])["id"]
    row = _first_missing(mapping["id"], ids)
    if row is not None:
        raise InputError(
            f"index_image_to_landmark.csv:{row + 2}: image {mapping['id'][row].as_py()} is not in index.csv"
        )
    pos = pc.index_in(ids, value_set=mapping["id"].combine_chunks())
    lids = mapping["landmark_id"].to_numpy()
    p = pos.to_numpy(zero_copy_only=False)
    have = ~pc.is_null(pos).to_numpy(zero_copy_only=False)
    out = np.full(len(ids), -1, dtype=np.int64)
    out[have] = lids[p[have].astype(np.int64)]
    return ids, out


def build_query(
    files: dict[str, Path], mixed_ground_truth: str = "error"
) -> tuple[pa.ChunkedArray, np.ndarray, pa.ChunkedArray, np.ndarray, dict[str, Any]]:
    """The retrieval queries: ``(ids, landmark ids (index numbering), usage, recognition landmark
    ids (train numbering), ground-truth statistics)``; see the module docstring for the rules."""
    if mixed_ground_truth not in MIXED_GROUND_TRUTH_RULES:
        raise ValueError(f"mixed_ground_truth must be one of {MIXED_GROUND_TRUTH_RULES}")
    name = "retrieval_solution_v2.1.csv"
    sol = read_file(files[name])
    if "test.csv" in files:
        test_ids = read_file(files["test.csv"])["id"]
        row = _first_missing(sol["id"], test_ids)
        if row is not None:
            raise InputError(f"{name}:{row + 2}: image {sol['id'][row].as_py()} is not in test.csv")
    mapping = read_file(files["index_image_to_landmark.csv"])
    if "index.csv" in files:
        known, known_name = read_file(files["index.csv"])["id"], "index.csv"
    else:
        known, known_name = mapping["id"], "index_image_to_landmark.csv"
    lines = np.flatnonzero(pc.is_valid(sol["images"]).to_numpy(zero_copy_only=False)) + 2
    sol = sol.filter(pc.is_valid(sol["images"]))
    n = sol.num_rows
    lists = sol["images"].combine_chunks() if n else pa.array([], pa.list_(pa.string()))
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy() if n else np.zeros(0, dtype=np.int64)
    j = _first_missing(pa.chunked_array([flat]), known)
    if j is not None:
        raise InputError(
            f"{name}:{int(lines[parents[j]])}: index image {flat[j].as_py()} is not in {known_name}"
        )
    pos = pc.index_in(flat, value_set=mapping["id"].combine_chunks())
    have = ~pc.is_null(pos).to_numpy(zero_copy_only=False)
    gt = np.full(len(flat), -1, dtype=np.int64)
    gt[have] = mapping["landmark_id"].to_numpy()[pos.to_numpy(zero_copy_only=False)[have].astype(np.int64)]
    out = np.full(n, -1, dtype=np.int64)
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, -1, dtype=np.int64)
    v = gt >= 0
    np.minimum.at(lo, parents[v], gt[v])
    np.maximum.at(hi, parents[v], gt[v])
    firsts, at = np.unique(parents[v], return_index=True)  # first listed image with a landmark
    out[firsts] = gt[v][at]
    mixed = np.flatnonzero((hi >= 0) & (lo != hi))
    if len(mixed) and mixed_ground_truth == "error":
        q = int(mixed[0])
        lids = sorted(set(gt[(parents == q) & v].tolist()))
        raise InputError(
            f"{name}:{int(lines[q])}: the ground-truth images of query {sol['id'][q].as_py()} depict "
            f"different landmarks ({', '.join(map(str, lids))} in index_image_to_landmark.csv)"
        )
    rec_out = np.full(n, -1, dtype=np.int64)
    if "recognition_solution_v2.1.csv" in files:
        rec = read_file(files["recognition_solution_v2.1.csv"])
        first = pc.list_element(
            pc.if_else(
                pc.greater(pc.list_value_length(rec["landmarks"]), 0),
                rec["landmarks"],
                pa.scalar([-1], pa.list_(pa.int64())),
            ),
            0,
        )
        rpos = pc.index_in(sol["id"], value_set=rec["id"].combine_chunks())
        rhave = ~pc.is_null(rpos).to_numpy(zero_copy_only=False)
        rp = rpos.to_numpy(zero_copy_only=False)
        rec_out[rhave] = first.to_numpy()[rp[rhave].astype(np.int64)]
    stats = {
        "queries": n,
        "rule": mixed_ground_truth,
        "queries_mixed_landmarks": len(mixed),
        "queries_without_landmark": int((out < 0).sum()),
    }
    return sol["id"], out, sol["usage"], rec_out, stats


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


def write_split_files(
    out_dir: str | os.PathLike[str],
    tables: dict[str, pa.Table],
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    levels: Sequence[str] = LEVEL_COLUMNS,
    key: str = "landmark_id",
) -> dict[str, Any]:
    """Write each table to ``out_dir/<split>.parquet`` (atomic, deterministic bytes) and return the
    manifest's ``splits`` section: :func:`coverage` plus file name, bytes, sha256 and columns.

    Used by the converters of :mod:`hglv2.convert` (SOP, iNaturalist, DyML, CUB).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_info: dict[str, Any] = {}
    for s, t in tables.items():
        path = out_dir / f"{s}.parquet"
        write_parquet(
            t,
            path,
            row_group_size=row_group_size,
            use_dictionary=[c for c in t.column_names if c not in ("id", "path")],
        )
        info = coverage(t, levels, key)
        info.update(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "columns": t.column_names,
            }
        )
        split_info[s] = info
    return split_info


def _resolve_inputs(
    metadata: str | os.PathLike[str] | dict[str, Path], splits: Sequence[str] | None
) -> tuple[dict[str, Path], list[str]]:
    files = dict(metadata) if isinstance(metadata, dict) else metadata_files(metadata)
    files = {k: Path(v) for k, v in files.items()}
    if splits is None:
        chosen = [s for s in SPLITS if all(f in files for f in SPLIT_INPUTS[s][0])]
        if not chosen:
            need = "; ".join(f"{s}: {', '.join(SPLIT_INPUTS[s][0])}" for s in SPLITS)
            raise InputError(f"{metadata}: no GLDv2 files for any split (need {need})")
        return files, chosen
    for s in splits:
        if s not in SPLITS:
            raise InputError(f"unknown split {s!r} (choose from {', '.join(SPLITS)})")
        missing = [f for f in SPLIT_INPUTS[s][0] if f not in files]
        if missing:
            raise InputError(f"split {s} needs {', '.join(missing)}, not found in {metadata}")
    return files, list(dict.fromkeys(splits))


def _validate_category_files(files: dict[str, Path], chosen: Sequence[str]) -> list[str]:
    """Read (and so validate) the category files of the numberings the chosen splits use."""
    used = []
    for n in dict.fromkeys(SPLIT_NUMBERING[s] for s in chosen):
        name = CATEGORY_FILES[n]
        if name in files:
            read_file(files[name], "label_to_category")
            used.append(name)
    return used


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
            images depict different landmarks gets (see the module docstring).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    files, chosen = _resolve_inputs(metadata, splits)
    if hierarchy is None:
        hierarchy = [files[f] for f in PUBLISHED_HIERARCHY_FILES if f in files]
    hier_paths = [Path(p) for p in hierarchy]
    table = combine_hierarchies(hier_paths)
    indexes = hierarchy_indexes(table)
    category_inputs = _validate_category_files(files, chosen)

    builders = {"train": build_train, "train_full": build_train_full, "index": build_index}
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, int] = {}
    query_stats: dict[str, Any] | None = None
    for s in chosen:  # validate and build everything before writing anything
        index = indexes[SPLIT_NUMBERING[s]]
        if s == "query":
            ids, lids, usage, rec, query_stats = build_query(files, mixed_ground_truth)
            t = index.join(ids, lids, usage, rec)
        else:
            ids, lids = builders[s](files)
            t = index.join(ids, lids)
        if drop_incomplete and s in ("index", "query"):
            keep = pc.and_(pc.greater_equal(t["level0"], 0), pc.greater_equal(t["level1"], 0))
            dropped[s] = t.num_rows - int(pc.sum(keep).as_py() or 0)
            t = t.filter(keep)
        tables[s] = t

    out_dir = Path(out_dir)
    split_info = write_split_files(out_dir, tables, row_group_size=row_group_size)
    used_inputs = sorted(
        {f for s in chosen for f in (*SPLIT_INPUTS[s][0], *SPLIT_INPUTS[s][1]) if f in files}
        | set(category_inputs)
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "hglv2_version": __version__,
        "splits": split_info,
        "inputs": {
            f: {"sha256": sha256_file(files[f]), "bytes": files[f].stat().st_size} for f in used_inputs
        },
        "hierarchy": {
            "sources": [{"file": p.name, "sha256": sha256_file(p)} for p in hier_paths],
            "table_sha256": table_hash(table),
            "landmarks": int(len(table)),
            "landmarks_by_numbering": {n: int((table["numbering"] == n).sum()) for n in NUMBERINGS},
            "level1_names": len(indexes["train"].level1_names),
            "level2_names": len(indexes["train"].level2_names),
            "provenance": sorted(table["provenance"].dropna().unique().tolist()),
        },
        "split_numbering": {s: SPLIT_NUMBERING[s] for s in chosen},
        "drop_incomplete": drop_incomplete,
        "dropped_incomplete": dropped,
        "query_ground_truth": query_stats,
        "row_group_size": row_group_size,
        "command": list(command) if command is not None else None,
    }
    write_json(out_dir / "manifest.json", manifest)
    write_dataset_card(out_dir / "README.md", manifest)
    return manifest


# ---------------------------------------------------------------------------------- dataset card


def _front_matter(
    split_names: Iterable[str],
    pretty_name: str = "Hierarchical Google Landmarks v2 (H-GLDv2) splits",
    license: str = "cc-by-4.0",
) -> str:
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


def _loading_lines(split_names: Iterable[str]) -> list[str]:
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


def write_dataset_card(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """The dataset card: Hugging Face YAML front matter, then provenance, columns and coverage."""
    splits = manifest["splits"]
    first = next(iter(splits), "train")
    hier = manifest["hierarchy"]
    sources = ", ".join(f"`{x['file']}`" for x in hier["sources"]) or "none"
    out = [
        _front_matter(splits),
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
        *_loading_lines(splits),
        "```",
        "",
        "```python",
        "import duckdb",
        f"duckdb.sql(\"SELECT level1, count(*) FROM '{first}.parquet' GROUP BY level1\")",
        "from hglv2.dataset import HGLDv2Dataset",
        f'ds = HGLDv2Dataset("{first}.parquet", "/path/to/gldv2/images")',
        "```",
        "",
        "File sizes and sha256 are in `manifest.json`.",
        "",
    ]
    with atomic_open(path) as fh:
        fh.write("\n".join(out))


def write_converted_card(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """The dataset card of a converted dataset (:mod:`hglv2.convert`): the same front matter as
    :func:`write_dataset_card`, then the source, the levels, per-split coverage and loading."""
    splits = manifest["splits"]
    ds = manifest["dataset"]
    levels = manifest["levels"]
    names = manifest["level_names"]
    out = [
        _front_matter(splits, pretty_name=f"{ds['title']} (hglv2 splits)", license="other"),
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
        "",
        "File sizes and sha256 are in `manifest.json`.",
        "",
    ]
    with atomic_open(path) as fh:
        fh.write("\n".join(out))
