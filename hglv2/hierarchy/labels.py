"""The hierarchy table: one row per landmark with its levels and where each label came from.

Columns are :data:`hglv2.schema.HIERARCHY_COLUMNS`. The table is read from our own Parquet/CSV
output or imported from the published GLDv2 ``*_label_to_hierarchical.csv`` files (provenance
``published``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from hglv2.errors import InputError
from hglv2.schema import HIERARCHY_COLUMNS, PUBLISHED_HIERARCHY_COLUMNS


def _read_csv_as_str(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid UTF-8 CSV file ({exc})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file") from None


def _parse_landmark_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = pd.to_numeric(df["landmark_id"].str.strip(), errors="coerce")
    bad = ids.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise InputError(
            f"{path}:{row + 2}: landmark_id {df['landmark_id'].iloc[row]!r} is not an integer"
        )
    ids = ids.astype("int64")
    dup = ids.duplicated()
    if dup.any():
        row = int(dup.to_numpy().argmax())
        raise InputError(f"{path}:{row + 2}: duplicate landmark_id {ids.iloc[row]}")
    return ids


def import_published(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a published ``*_label_to_hierarchical.csv`` into the hierarchy table.

    Empty fields become missing values; ``provenance`` is ``"published"``; ``qid``,
    ``supercategory_qid`` and ``revision`` are missing (the published files carry none).
    """
    path = Path(path)
    df = _read_csv_as_str(path)
    missing = [c for c in PUBLISHED_HIERARCHY_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    out = pd.DataFrame({"landmark_id": _parse_landmark_ids(df, path)})
    for col in HIERARCHY_COLUMNS[1:]:
        if col in PUBLISHED_HIERARCHY_COLUMNS:
            out[col] = df[col].str.strip().replace("", pd.NA).astype("string")
        else:
            out[col] = pd.Series(pd.NA, index=df.index, dtype="string")
    out["provenance"] = pd.Series("published", index=df.index, dtype="string")
    return out.sort_values("landmark_id", kind="stable").reset_index(drop=True)


def load_hierarchy_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a hierarchy table from our Parquet/CSV output or a published-format CSV.

    Returns a DataFrame with exactly :data:`HIERARCHY_COLUMNS` (``landmark_id`` int64, the rest
    nullable strings), sorted by ``landmark_id``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        df = df.astype({c: "string" for c in df.columns if c != "landmark_id"})
        df["landmark_id"] = _parse_landmark_ids(df.astype({"landmark_id": "string"}), path)
    else:
        df = _read_csv_as_str(path)
        if "provenance" not in df.columns:
            return import_published(path)
        df["landmark_id"] = _parse_landmark_ids(df, path)
        for col in df.columns:
            if col != "landmark_id":
                df[col] = df[col].str.strip().replace("", pd.NA).astype("string")
    missing = [c for c in HIERARCHY_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df[list(HIERARCHY_COLUMNS)].sort_values("landmark_id", kind="stable").reset_index(drop=True)
