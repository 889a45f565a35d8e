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
        raise InputError(f"{path}:{row + 2}: landmark_id {df['landmark_id'].iloc[row]!r} is not an integer")
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


# --------------------------------------------------------------------------------------------
# writing, diffing

DIFF_LEVELS = ("supercategory", "hierarchical_label", "natural_or_human_made")
DISAGREEMENT_COLUMNS = (
    "landmark_id",
    "category",
    "supercategory_qid",
    "supercategory",
    "level",
    "value_a",
    "value_b",
    "provenance_a",
    "provenance_b",
)


def hierarchy_arrow_table(df: pd.DataFrame):
    """The hierarchy table as a pyarrow Table with the fixed schema (int64 id, string columns)."""
    import pyarrow as pa

    cols = {"landmark_id": pa.array(df["landmark_id"].astype("int64").to_numpy(), pa.int64())}
    for c in HIERARCHY_COLUMNS[1:]:
        cols[c] = pa.array([None if pd.isna(v) else str(v) for v in df[c]], pa.string())
    return pa.table(cols)


def write_hierarchy_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write the table to ``.parquet`` or ``.csv`` (by suffix), atomically and deterministically."""
    from hglv2.fileio import atomic_open, write_parquet

    path = Path(path)
    df = df[list(HIERARCHY_COLUMNS)].sort_values("landmark_id", kind="stable").reset_index(drop=True)
    if path.suffix == ".parquet":
        write_parquet(hierarchy_arrow_table(df), path)
    elif path.suffix == ".csv":
        with atomic_open(path) as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
    else:
        raise InputError(f"{path}: write .parquet or .csv")


def _norm(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.casefold()


def diff_tables(a: pd.DataFrame, b: pd.DataFrame, levels: tuple[str, ...] = DIFF_LEVELS) -> dict:
    """Compare two hierarchy tables landmark by landmark.

    For each level: ``both`` (landmarks labelled in A and B), ``agree`` (same value, compared
    case-insensitively), ``agreement = agree / both``, ``only_a``/``only_b`` (labelled on one side).
    Returns ``{"landmarks": ..., "levels": ..., "confusion": DataFrame (case-folded clusters of A x
    those of B, "(none)" for missing), "disagreements": DataFrame (DISAGREEMENT_COLUMNS)}``.
    """
    m = a.merge(b, on="landmark_id", how="outer", suffixes=("_a", "_b"), indicator=True)
    m = m.sort_values("landmark_id", kind="stable").reset_index(drop=True)
    common = m[m["_merge"] == "both"].reset_index(drop=True)
    res: dict = {
        "landmarks": {
            "a": len(a),
            "b": len(b),
            "common": len(common),
            "only_in_a": int((m["_merge"] == "left_only").sum()),
            "only_in_b": int((m["_merge"] == "right_only").sum()),
        },
        "levels": {},
    }
    parts = []
    for lev in levels:
        va, vb = _norm(common[f"{lev}_a"]), _norm(common[f"{lev}_b"])
        has_a, has_b = va.notna().to_numpy(), vb.notna().to_numpy()
        both = has_a & has_b
        agree = both & (va.fillna("") == vb.fillna("")).to_numpy()
        res["levels"][lev] = {
            "both": int(both.sum()),
            "agree": int(agree.sum()),
            "agreement": float(agree.sum() / both.sum()) if both.any() else None,
            "only_a": int((has_a & ~has_b).sum()),
            "only_b": int((~has_a & has_b).sum()),
        }
        bad = common[both & ~agree]
        parts.append(
            pd.DataFrame(
                {
                    "landmark_id": bad["landmark_id"].astype("int64"),
                    "category": bad["category_a"].fillna(bad["category_b"]),
                    "supercategory_qid": bad["supercategory_qid_a"].fillna(bad["supercategory_qid_b"]),
                    "supercategory": bad["supercategory_a"].fillna(bad["supercategory_b"]),
                    "level": lev,
                    "value_a": bad[f"{lev}_a"],
                    "value_b": bad[f"{lev}_b"],
                    "provenance_a": bad["provenance_a"],
                    "provenance_b": bad["provenance_b"],
                }
            )
        )
    dis = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    dis = dis.astype({c: "string" for c in DISAGREEMENT_COLUMNS if c != "landmark_id"})
    order = {lev: i for i, lev in enumerate(levels)}
    dis = dis.assign(_o=dis["level"].map(order)).sort_values(["landmark_id", "_o"], kind="stable")
    res["disagreements"] = dis.drop(columns="_o").reset_index(drop=True)[list(DISAGREEMENT_COLUMNS)]
    ca = _norm(common["hierarchical_label_a"]).fillna("(none)")  # compared as in the agreement
    cb = _norm(common["hierarchical_label_b"]).fillna("(none)")
    conf = pd.crosstab(ca.rename("a"), cb.rename("b")) if len(common) else pd.DataFrame()
    res["confusion"] = conf.sort_index().sort_index(axis=1)
    return res


def seed_decisions(a: pd.DataFrame, b: pd.DataFrame, min_landmarks: int = 1) -> pd.DataFrame:
    """Decision rows (``decisions.csv`` format) suggested by comparing table A (ours, with
    supercategory QIDs) with table B: for each supercategory whose landmarks labelled in B all have
    the same cluster there (at least ``min_landmarks`` of them), and where A disagrees for at least
    one of them, propose B's cluster, with the evidence in ``reason``. People vet them before use.
    """
    m = a.merge(b, on="landmark_id", suffixes=("_a", "_b"))
    m = m[m["supercategory_qid_a"].notna() & m["hierarchical_label_b"].notna()]
    rows = []
    for qid, grp in m.groupby("supercategory_qid_a", sort=True):
        values = sorted(set(grp["hierarchical_label_b"].str.casefold()))
        ours = grp["hierarchical_label_a"].astype("string").str.casefold()
        if len(values) != 1 or len(grp) < min_landmarks or (ours == values[0]).fillna(False).all():
            continue
        n_dis = int((ours != values[0]).fillna(True).sum())
        rows.append(
            {
                "supercategory_qid": qid,
                "supercategory": grp["supercategory_a"].iloc[0],
                "cluster": values[0],
                "reason": f"diff: B says {values[0]!r} for all {len(grp)} landmark(s) of this class "
                f"it labels; A disagrees on {n_dis}",
            }
        )
    return pd.DataFrame(rows, columns=["supercategory_qid", "supercategory", "cluster", "reason"])


# --------------------------------------------------------------------------------------------
# the diff stage on files


def confusion_pairs(conf: pd.DataFrame) -> list[tuple[str, str, int]]:
    """The off-diagonal cells of a :func:`diff_tables` confusion table, largest first:
    ``(cluster in A, cluster in B, landmarks)``, ties by name."""
    off = [
        (ra, cb, int(conf.loc[ra, cb]))
        for ra in conf.index
        for cb in conf.columns
        if ra != cb and conf.loc[ra, cb] > 0
    ]
    off.sort(key=lambda t: (-t[2], t[0], t[1]))
    return off


def diff_summary(res: dict) -> dict:
    """The JSON-ready summary of :func:`diff_tables`: landmarks, levels, the number of
    disagreements and the non-zero cells of the confusion table."""
    conf = res["confusion"]
    return {
        "landmarks": res["landmarks"],
        "levels": res["levels"],
        "disagreements": len(res["disagreements"]),
        "confusion": {
            str(r): {str(c): int(conf.loc[r, c]) for c in conf.columns if conf.loc[r, c]} for r in conf.index
        },
    }


def diff_files(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    out_csv: str | os.PathLike[str] | None = None,
    seed_decisions_csv: str | os.PathLike[str] | None = None,
    confusion_csv: str | os.PathLike[str] | None = None,
) -> dict:
    """The diff stage: :func:`diff_tables` of the tables in files ``a`` and ``b``.

    Optionally writes the disagreements (``out_csv``), the :func:`seed_decisions` rows
    (``seed_decisions_csv``) and the confusion table (``confusion_csv``). Returns the result of
    :func:`diff_tables`.
    """
    from hglv2.fileio import atomic_open, commit_together

    table_a, table_b = load_hierarchy_table(a), load_hierarchy_table(b)
    res = diff_tables(table_a, table_b)
    with commit_together():  # the files of the stage: all new or all old
        if out_csv is not None:
            with atomic_open(out_csv) as fh:
                res["disagreements"].to_csv(fh, index=False, lineterminator="\n")
        if seed_decisions_csv is not None:
            with atomic_open(seed_decisions_csv) as fh:
                seed_decisions(table_a, table_b).to_csv(fh, index=False, lineterminator="\n")
        if confusion_csv is not None:
            with atomic_open(confusion_csv) as fh:
                res["confusion"].to_csv(fh, lineterminator="\n")
    return res
