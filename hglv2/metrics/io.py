"""Embedding and label files for :func:`hglv2.metrics.evaluate` (what ``hglv2 evaluate -e/-l`` reads).

* Embeddings: ``.npy`` (N, D) numbers, or Parquet with an ``embedding`` list column; returned as
  float32, every row finite.
* Labels: ``.npy`` (N,) or (N, L) integers (floats holding integers are accepted), or Parquet
  ``level0, level1, ...`` columns (or the columns named); nulls become -1 (unknown).

A Parquet embeddings file may hold the labels too. Every problem is an
:class:`~hglv2.errors.InputError` naming the file (and the row where there is one); ``option`` is
the name of the command-line option the file came from, shown in those messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hglv2.errors import InputError

MAX_SCORE = 1e30  # largest |score| bound accepted (float32 max is 3.4e38)
SUFFIXES = (".npy", ".parquet", ".pq")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def _check_file(path: Path, option: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such file ({option})")
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type {path.suffix!r} ({option}: use .npy or .parquet)")
    return path


def _parquet_embeddings(path: Path) -> np.ndarray:
    """The ``embedding`` list column of a Parquet file as an (N, D) array (rows of equal length)."""
    import pyarrow as pa

    table = _read_parquet(path)
    if "embedding" not in table.column_names:
        raise InputError(f"{path}: no 'embedding' column (columns: {', '.join(table.column_names)})")
    col = table.column("embedding").combine_chunks()
    if not (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        raise InputError(f"{path}: column 'embedding' must be a list of floats, got {col.type}")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: row {row}: embedding is null")
    lengths = np.asarray(col.value_lengths()) if not pa.types.is_fixed_size_list(col.type) else None
    if lengths is not None and len(lengths) and np.any(lengths != lengths[0]):
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise InputError(f"{path}: row {row}: embedding has {lengths[row]} values, row 0 has {lengths[0]}")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if lengths is None:
        dim = col.type.list_size
    else:
        dim = int(lengths[0]) if len(lengths) else 0
    return flat.reshape(len(col), dim) if len(col) else np.zeros((0, 0))


def load_embeddings(path: Path, option: str = "--embeddings") -> np.ndarray:
    """(N, D) float32 embeddings from .npy or a Parquet ``embedding`` list column."""
    _check_file(path, option)
    arr = _load_npy(path) if path.suffix.lower() == ".npy" else _parquet_embeddings(path)
    if arr.ndim != 2:
        raise InputError(f"{path}: embeddings must be a 2-D (N, D) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: embeddings must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: row {int(np.flatnonzero(bad)[0])}: embedding is not finite (NaN or inf)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{path}: no embeddings (shape {arr.shape})")
    return arr


def _npy_labels(path: Path) -> np.ndarray:
    arr = _load_npy(path)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{path}: labels must be (N,) or (N, L), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise InputError(f"{path}: row {row}: label is not an integer")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{path}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _parquet_labels(path: Path, columns: list[str] | None) -> np.ndarray:
    from hglv2.schema import present_level_columns

    table = _read_parquet(path)
    names = table.column_names
    if columns is None:
        columns = present_level_columns(names)
        if not columns:
            raise InputError(f"{path}: no level0, level1, ... columns; name them with --label-columns")
    out = []
    for name in columns:
        if name not in names:
            raise InputError(f"{path}: no column {name!r} (columns: {', '.join(names)})")
        values = table.column(name).to_pandas()
        if (
            values.dtype.kind == "O"
            or values.dtype.kind == "f"
            and not values.dropna().eq(values.dropna().round()).all()
        ):
            raise InputError(f"{path}: column {name!r} must hold integers")
        out.append(values.fillna(-1).to_numpy().astype(np.int64))
    return np.stack(out, 1)


def load_labels(path: Path, columns: list[str] | None = None, option: str = "--labels") -> np.ndarray:
    """(N, L) int64 labels from .npy or Parquet level columns (nulls become -1 = unknown)."""
    _check_file(path, option)
    if path.suffix.lower() == ".npy":
        return _npy_labels(path)
    return _parquet_labels(path, columns)


def _same_rows(emb: np.ndarray, lab: np.ndarray, emb_path: Path, lab_path: Path) -> None:
    if emb.shape[0] != lab.shape[0]:
        raise InputError(f"{lab_path}: {lab.shape[0]} rows but {emb_path} has {emb.shape[0]} embeddings")


def check_scale(q_emb: np.ndarray, g_emb: np.ndarray | None, q_path: Path, g_path: Path | None) -> None:
    """Refuse embeddings whose float32 dot products can overflow (or lose all precision).

    The scores are float32 dot products; |<q, g>| <= |q| |g|, so norms whose product passes
    ``MAX_SCORE`` could give inf/NaN scores and rankings that change with the scale.
    """
    qn = float(np.linalg.norm(q_emb.astype(np.float64), axis=1).max())
    gn = qn if g_emb is None else float(np.linalg.norm(g_emb.astype(np.float64), axis=1).max())
    if qn * gn > MAX_SCORE:
        where = q_path if g_emb is None or qn >= gn else g_path
        raise InputError(
            f"{where}: embedding norms up to {max(qn, gn):.3g} make float32 similarity scores "
            "overflow; pass --normalize (cosine similarity) or rescale the embeddings"
        )


def l2_normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


@dataclass
class RetrievalFiles:
    """Queries (and a gallery) read by :func:`load_retrieval_files`, with the label files used."""

    query_embeddings: np.ndarray
    query_labels: np.ndarray
    gallery_embeddings: np.ndarray | None
    gallery_labels: np.ndarray | None
    labels_path: Path
    gallery_labels_path: Path | None


def _labelled(emb_path: Path, lab_path: Path | None, columns, emb_option: str, lab_option: str, what: str):
    """(embeddings, labels, label file) of one side; without a label file, the Parquet embeddings
    file holds the labels."""
    emb = load_embeddings(emb_path, emb_option)
    if lab_path is None:
        if emb_path.suffix.lower() == ".npy":
            raise InputError(f"{lab_option} is required with a .npy {what} file")
        lab_path = emb_path
    lab = load_labels(lab_path, columns, lab_option)
    _same_rows(emb, lab, emb_path, lab_path)
    return emb, lab, lab_path


def load_retrieval_files(
    embeddings: Path,
    labels: Path | None = None,
    gallery_embeddings: Path | None = None,
    gallery_labels: Path | None = None,
    columns: list[str] | None = None,
    normalize: bool = False,
) -> RetrievalFiles:
    """Read and check the query files and the optional gallery files (same label columns, same
    embedding size). ``normalize``: L2-normalise the embeddings; without it, embeddings whose
    scores could overflow float32 are refused (:func:`check_scale`)."""
    q_emb, q_lab, labels = _labelled(embeddings, labels, columns, "--embeddings", "--labels", "embeddings")
    g_emb = g_lab = None
    if gallery_embeddings is not None or gallery_labels is not None:
        if gallery_embeddings is None:
            raise InputError("--gallery-labels needs --gallery-embeddings")
        g_emb, g_lab, gallery_labels = _labelled(
            gallery_embeddings,
            gallery_labels,
            columns,
            "--gallery-embeddings",
            "--gallery-labels",
            "gallery embeddings",
        )
        if g_lab.shape[1] != q_lab.shape[1]:
            raise InputError(
                f"{gallery_labels}: {g_lab.shape[1]} label columns but {labels} has {q_lab.shape[1]}"
            )
        if g_emb.shape[1] != q_emb.shape[1]:
            raise InputError(
                f"{gallery_embeddings}: embeddings of size {g_emb.shape[1]} but "
                f"{embeddings} has {q_emb.shape[1]}"
            )
    if not normalize:
        check_scale(q_emb, g_emb, embeddings, gallery_embeddings)
    else:
        q_emb = l2_normalize(q_emb)
        if g_emb is not None:
            g_emb = l2_normalize(g_emb)
    return RetrievalFiles(q_emb, q_lab, g_emb, g_lab, labels, gallery_labels if g_emb is not None else None)
