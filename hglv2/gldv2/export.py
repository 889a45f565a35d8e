"""The GLDv2 joins of the export: the release's files -> one table per split, hierarchy joined.

Splits (one row per image, :data:`hglv2.schema.SPLIT_SCHEMA`; ``query``:
:data:`hglv2.schema.QUERY_SCHEMA`, which adds ``usage`` and ``recognition_landmark_id``):

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

**Hierarchy join.** :class:`HierarchyIndex` joins the hierarchy rows of one numbering (a combined
table: :func:`hglv2.splits.combine_hierarchies`). Coarse level ids are dense in the sorted order of
the names over the whole combined table, both numberings together (``level1 =
rank(hierarchical_label)``, ``level2 = rank(natural_or_human_made)``): one vocabulary, so every
split shares the same integers (the authors number each file's clusters separately). ``level0`` is
the landmark id (in the split's numbering). A landmark missing from its table, or with an empty
level, keeps its rows: unknown levels are -1 and ``hierarchy_complete`` is false.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hglv2.errors import InputError
from hglv2.gldv2 import specs
from hglv2.gldv2.readers import metadata_files, read_file
from hglv2.schema import HIERARCHY_NAME_COLUMNS, NUMBERINGS, QUERY_SCHEMA, SPLIT_SCHEMA

SPLITS = ("train", "train_full", "index", "query")
#: the numbering of each split's landmark ids
SPLIT_NUMBERING = {"train": "train", "train_full": "train", "index": "index", "query": "index"}
MIXED_GROUND_TRUTH_RULES = ("error", "first")

# Which metadata files each split reads (required, optional).
SPLIT_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": ((specs.TRAIN_CLEAN,), (specs.TRAIN,)),
    "train_full": ((specs.TRAIN,), ()),
    "index": ((specs.INDEX_IMAGE_TO_LANDMARK,), (specs.INDEX,)),
    "query": (
        (specs.RETRIEVAL_SOLUTION, specs.INDEX_IMAGE_TO_LANDMARK),
        (specs.TEST, specs.INDEX, specs.RECOGNITION_SOLUTION),
    ),
}
PUBLISHED_HIERARCHY_FILES = tuple(specs.hierarchy_file(n) for n in NUMBERINGS)


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
        self.strings = {c: pa.array(table[c], pa.string(), from_pandas=True) for c in HIERARCHY_NAME_COLUMNS}

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


def train_rows(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    """``train``: (image ids, landmark ids) of ``train_clean.csv``, checked against ``train.csv``."""
    clean = read_file(files[specs.TRAIN_CLEAN])
    ids, lids = clean["id"], clean["landmark_id"].to_numpy()
    if specs.TRAIN in files:
        train = read_file(files[specs.TRAIN])
        pos = pc.index_in(ids, value_set=train["id"].combine_chunks())
        if pos.null_count:
            row = int(np.flatnonzero(pc.is_null(pos).to_numpy(zero_copy_only=False))[0])
            image = ids[row].as_py()
            line = _line_of(files[specs.TRAIN_CLEAN], image)
            raise InputError(f"{specs.TRAIN_CLEAN}:{line}: image {image} is not in {specs.TRAIN}")
        other = train["landmark_id"].to_numpy()[pos.to_numpy()]
        bad = np.flatnonzero(other != lids)
        if len(bad):
            image = ids[int(bad[0])].as_py()
            line = _line_of(files[specs.TRAIN_CLEAN], image)
            raise InputError(
                f"{specs.TRAIN_CLEAN}:{line}: image {image} has landmark {int(lids[bad[0]])} here but "
                f"{int(other[bad[0]])} in {specs.TRAIN}"
            )
    return ids, lids


def train_full_rows(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    """``train_full``: (image ids, landmark ids) of ``train.csv``."""
    train = read_file(files[specs.TRAIN])
    return train["id"], train["landmark_id"].to_numpy()


def index_rows(files: dict[str, Path]) -> tuple[pa.ChunkedArray, np.ndarray]:
    """``index``: (image ids of ``index.csv``, landmark ids from ``index_image_to_landmark.csv``,
    -1 where absent)."""
    mapping = read_file(files[specs.INDEX_IMAGE_TO_LANDMARK])
    if specs.INDEX not in files:
        return mapping["id"], mapping["landmark_id"].to_numpy()
    ids = read_file(files[specs.INDEX])["id"]
    row = _first_missing(mapping["id"], ids)
    if row is not None:
        image = mapping["id"][row].as_py()
        raise InputError(f"{specs.INDEX_IMAGE_TO_LANDMARK}:{row + 2}: image {image} is not in {specs.INDEX}")
    pos = pc.index_in(ids, value_set=mapping["id"].combine_chunks())
    lids = mapping["landmark_id"].to_numpy()
    p = pos.to_numpy(zero_copy_only=False)
    have = ~pc.is_null(pos).to_numpy(zero_copy_only=False)
    out = np.full(len(ids), -1, dtype=np.int64)
    out[have] = lids[p[have].astype(np.int64)]
    return ids, out


def _known_index_images(files: dict[str, Path], mapping: pa.Table) -> tuple[pa.ChunkedArray, str]:
    """The index images a ground truth may list: ``index.csv``, else ``index_image_to_landmark.csv``."""
    if specs.INDEX in files:
        return read_file(files[specs.INDEX])["id"], specs.INDEX
    return mapping["id"], specs.INDEX_IMAGE_TO_LANDMARK


def _retrieval_solution(files: dict[str, Path]) -> tuple[pa.Table, np.ndarray]:
    """The retrieval solution's queries with ground-truth images (checked against ``test.csv``)
    and the line of each."""
    name = specs.RETRIEVAL_SOLUTION
    sol = read_file(files[name])
    if specs.TEST in files:
        test_ids = read_file(files[specs.TEST])["id"]
        row = _first_missing(sol["id"], test_ids)
        if row is not None:
            raise InputError(f"{name}:{row + 2}: image {sol['id'][row].as_py()} is not in {specs.TEST}")
    lines = np.flatnonzero(pc.is_valid(sol["images"]).to_numpy(zero_copy_only=False)) + 2
    return sol.filter(pc.is_valid(sol["images"])), lines


def _recognition_landmarks(files: dict[str, Path], query_ids: pa.ChunkedArray) -> np.ndarray:
    """The first landmark of each query in the recognition solution (train numbering), -1 if none."""
    out = np.full(len(query_ids), -1, dtype=np.int64)
    if specs.RECOGNITION_SOLUTION not in files:
        return out
    rec = read_file(files[specs.RECOGNITION_SOLUTION])
    first = pc.list_element(
        pc.if_else(
            pc.greater(pc.list_value_length(rec["landmarks"]), 0),
            rec["landmarks"],
            pa.scalar([-1], pa.list_(pa.int64())),
        ),
        0,
    )
    rpos = pc.index_in(query_ids, value_set=rec["id"].combine_chunks())
    rhave = ~pc.is_null(rpos).to_numpy(zero_copy_only=False)
    rp = rpos.to_numpy(zero_copy_only=False)
    out[rhave] = first.to_numpy()[rp[rhave].astype(np.int64)]
    return out


def query_rows(
    files: dict[str, Path], mixed_ground_truth: str = "error"
) -> tuple[pa.ChunkedArray, np.ndarray, pa.ChunkedArray, np.ndarray, dict[str, Any]]:
    """The retrieval queries: ``(ids, landmark ids (index numbering), usage, recognition landmark
    ids (train numbering), ground-truth statistics)``; see the module docstring for the rules."""
    if mixed_ground_truth not in MIXED_GROUND_TRUTH_RULES:
        raise ValueError(f"mixed_ground_truth must be one of {MIXED_GROUND_TRUTH_RULES}")
    name = specs.RETRIEVAL_SOLUTION
    sol, lines = _retrieval_solution(files)
    mapping = read_file(files[specs.INDEX_IMAGE_TO_LANDMARK])
    known, known_name = _known_index_images(files, mapping)
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
            f"different landmarks ({', '.join(map(str, lids))} in {specs.INDEX_IMAGE_TO_LANDMARK})"
        )
    stats = {
        "queries": n,
        "rule": mixed_ground_truth,
        "queries_mixed_landmarks": len(mixed),
        "queries_without_landmark": int((out < 0).sum()),
    }
    return sol["id"], out, sol["usage"], _recognition_landmarks(files, sol["id"]), stats


def split_tables(
    files: dict[str, Path],
    chosen: Sequence[str],
    indexes: dict[str, HierarchyIndex],
    *,
    drop_incomplete: bool = False,
    mixed_ground_truth: str = "error",
) -> tuple[dict[str, pa.Table], dict[str, int], dict[str, Any] | None]:
    """Validate and join every chosen split (nothing is written): ``(tables, rows dropped per
    split, query ground-truth statistics or None)``."""
    rows = {"train": train_rows, "train_full": train_full_rows, "index": index_rows}
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, int] = {}
    query_stats: dict[str, Any] | None = None
    for s in chosen:
        index = indexes[SPLIT_NUMBERING[s]]
        if s == "query":
            ids, lids, usage, rec, query_stats = query_rows(files, mixed_ground_truth)
            t = index.join(ids, lids, usage, rec)
        else:
            ids, lids = rows[s](files)
            t = index.join(ids, lids)
        if drop_incomplete and s in ("index", "query"):
            keep = pc.and_(pc.greater_equal(t["level0"], 0), pc.greater_equal(t["level1"], 0))
            dropped[s] = t.num_rows - int(pc.sum(keep).as_py() or 0)
            t = t.filter(keep)
        tables[s] = t
    return tables, dropped, query_stats


def resolve_inputs(
    metadata: str | os.PathLike[str] | dict[str, Path], splits: Sequence[str] | None
) -> tuple[dict[str, Path], list[str]]:
    """The metadata files by name and the splits to build: ``splits`` (each needs its required
    files) or, for None, every split whose required files are present."""
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


def validate_category_files(files: dict[str, Path], chosen: Sequence[str]) -> list[str]:
    """Read (and so validate) the category files of the numberings the chosen splits use."""
    used = []
    for n in dict.fromkeys(SPLIT_NUMBERING[s] for s in chosen):
        name = specs.category_file(n)
        if name in files:
            read_file(files[name], "label_to_category")
            used.append(name)
    return used
