"""The hierarchy table: one row per landmark with its levels and where each label came from.

Columns are :data:`hglv2.schema.HIERARCHY_COLUMNS`. The table is read from our own Parquet/CSV
output or imported from the published GLDv2 ``*_label_to_hierarchical.csv`` files (provenance
``published``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hglv2.errors import InputError
from hglv2.fileio import read_parquet_checked
from hglv2.gldv2.specs import numbering_of_file
from hglv2.schema import HIERARCHY_COLUMNS, NUMBERINGS, PUBLISHED_HIERARCHY_COLUMNS


def _parse_landmark_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = pd.to_numeric(df["landmark_id"].str.strip(), errors="coerce")
    bad = ids.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise InputError(
            f"{path.name}:{row + 2}: landmark_id {df['landmark_id'].iloc[row]!r} is not an integer"
        )
    return ids.astype("int64")


def _parse_numbering(df: pd.DataFrame, path: Path) -> pd.Series:
    """The ``numbering`` column (``train``/``index``); a table without one is in the train numbering."""
    if "numbering" not in df.columns:
        return pd.Series("train", index=df.index, dtype="string")
    num = df["numbering"].astype("string").str.strip()
    bad = ~num.isin(NUMBERINGS).fillna(False).to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise InputError(
            f"{path.name}:{row + 2}: numbering {num.iloc[row]!r} is not one of {', '.join(NUMBERINGS)}"
        )
    return num


def _check_unique_keys(df: pd.DataFrame, path: Path) -> None:
    dup = df.duplicated(["numbering", "landmark_id"]).to_numpy()
    if dup.any():
        row = int(dup.argmax())
        raise InputError(
            f"{path.name}:{row + 2}: duplicate landmark_id {df['landmark_id'].iloc[row]} "
            f"({df['numbering'].iloc[row]} numbering)"
        )


def sort_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in key order: numbering (train, then index), then landmark_id."""
    order = df["numbering"].map({n: i for i, n in enumerate(NUMBERINGS)}).astype("int64")
    return (
        df.assign(_n=order)
        .sort_values(["_n", "landmark_id"], kind="stable")
        .drop(columns="_n")
        .reset_index(drop=True)
    )


def import_published(path: str | os.PathLike[str], numbering: str | None = None) -> pd.DataFrame:
    """Read a published ``*_label_to_hierarchical.csv`` into the hierarchy table.

    The file is read by :func:`hglv2.gldv2.readers.read_file` (a short row or an extra field is an
    error naming its line). ``numbering`` defaults to
    :func:`~hglv2.gldv2.specs.numbering_of_file`. Empty fields
    become missing values; ``provenance`` is ``"published"``; ``qid``, ``supercategory_qid`` and
    ``revision`` are missing (the published files carry none).
    """
    from hglv2.gldv2.readers import read_file

    path = Path(path)
    numbering = numbering or numbering_of_file(path)
    if numbering not in NUMBERINGS:
        raise InputError(f"numbering {numbering!r} is not one of {', '.join(NUMBERINGS)}")
    t = read_file(path, "label_to_hierarchical").to_pandas()
    n = len(t)
    out = pd.DataFrame({"landmark_id": t["landmark_id"].astype("int64")})
    out["numbering"] = pd.Series(numbering, index=out.index, dtype="string")
    for col in HIERARCHY_COLUMNS[2:]:
        if col in PUBLISHED_HIERARCHY_COLUMNS:
            out[col] = t[col].astype("string")
        else:
            out[col] = pd.Series([pd.NA] * n, index=out.index, dtype="string")
    out["provenance"] = pd.Series("published", index=out.index, dtype="string")
    return sort_table(out)


def load_hierarchy_table(path: str | os.PathLike[str], numbering: str | None = None) -> pd.DataFrame:
    """Load a hierarchy table from our Parquet/CSV output or a published-format CSV.

    Returns a DataFrame with exactly :data:`HIERARCHY_COLUMNS` (``landmark_id`` int64, the rest
    nullable strings), sorted by (numbering, landmark_id). A table without a ``numbering``
    column is in the train numbering. ``numbering`` keeps only that numbering's rows.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, expected a hierarchy table (.parquet or .csv)")
    if path.suffix == ".parquet":
        # a table without a numbering column is in the train numbering
        required = [c for c in HIERARCHY_COLUMNS if c != "numbering"]
        df = read_parquet_checked(path, required).to_pandas()
        df = df.astype({c: "string" for c in df.columns if c != "landmark_id"})
        df["landmark_id"] = _parse_landmark_ids(df.astype({"landmark_id": "string"}), path)
    else:
        from hglv2.gldv2.readers import read_csv_strings, read_header

        if "provenance" in read_header(path):  # ours; same validating CSV reader as the GLDv2 files
            df = read_csv_strings(path, ["landmark_id"]).to_pandas()
        else:
            df = pd.DataFrame()
        if "provenance" not in df.columns:
            table = import_published(path)
            return (
                table if numbering is None else table[table["numbering"] == numbering].reset_index(drop=True)
            )
        if "landmark_id" not in df.columns:
            raise InputError(f"{path.name}:1: missing column(s) landmark_id")
        df["landmark_id"] = _parse_landmark_ids(df, path)
        for col in df.columns:
            if col != "landmark_id":
                df[col] = df[col].str.strip().replace("", pd.NA).astype("string")
    df["numbering"] = _parse_numbering(df, path)
    missing = [c for c in HIERARCHY_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path.name}: missing column(s) {', '.join(missing)}")
    _check_unique_keys(df, path)
    df = sort_table(df[list(HIERARCHY_COLUMNS)])
    if numbering is not None:
        df = df[df["numbering"] == numbering].reset_index(drop=True)
    return df


# --------------------------------------------------------------------------------------------
# writing, diffing

KEY = ("numbering", "landmark_id")
DIFF_LEVELS = ("supercategory", "hierarchical_label", "natural_or_human_made")
DISAGREEMENT_COLUMNS = (
    "numbering",
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
    df = sort_table(df[list(HIERARCHY_COLUMNS)])
    if path.suffix == ".parquet":
        write_parquet(hierarchy_arrow_table(df), path)
    elif path.suffix == ".csv":
        with atomic_open(path) as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
    else:
        raise InputError(f"{path}: write .parquet or .csv")


def write_hierarchy_tables(
    df: pd.DataFrame, path: str | os.PathLike[str], csv_path: str | os.PathLike[str] | None = None
) -> None:
    """:func:`write_hierarchy_table` to ``path`` and, when given, to ``csv_path``: both files new, or
    both old after a failure."""
    from hglv2.fileio import commit_together

    with commit_together():
        write_hierarchy_table(df, path)
        if csv_path is not None:
            write_hierarchy_table(df, csv_path)


def _norm(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.casefold()


def diff_tables(a: pd.DataFrame, b: pd.DataFrame, levels: tuple[str, ...] = DIFF_LEVELS) -> dict:
    """Compare two hierarchy tables landmark by landmark (rows matched on numbering and landmark_id).

    For each level: ``both`` (landmarks labelled in A and B), ``agree`` (same value, compared
    case-insensitively), ``agreement = agree / both``, ``only_a``/``only_b`` (labelled on one side).
    Returns ``{"landmarks": ..., "levels": ..., "confusion": DataFrame (case-folded clusters of A x
    those of B, "(none)" for missing), "disagreements": DataFrame (DISAGREEMENT_COLUMNS)}``.
    """
    m = a.merge(b, on=list(KEY), how="outer", suffixes=("_a", "_b"), indicator=True)
    m = sort_table(m)
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
                    "numbering": bad["numbering"],
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
    num = {n: i for i, n in enumerate(NUMBERINGS)}
    dis = dis.assign(_o=dis["level"].map(order), _n=dis["numbering"].map(num)).sort_values(
        ["_n", "landmark_id", "_o"], kind="stable"
    )
    res["disagreements"] = dis.drop(columns=["_o", "_n"]).reset_index(drop=True)[list(DISAGREEMENT_COLUMNS)]
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
    m = a.merge(b, on=list(KEY), suffixes=("_a", "_b"))
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
    disagreements and the non-zero cells of the confusion table (and the same per numbering when
    :func:`diff_files` compared several numberings)."""
    conf = res["confusion"]
    out = {
        "landmarks": res["landmarks"],
        "levels": res["levels"],
        "disagreements": len(res["disagreements"]),
        "confusion": {
            str(r): {str(c): int(conf.loc[r, c]) for c in conf.columns if conf.loc[r, c]} for r in conf.index
        },
    }
    if "by_numbering" in res:
        out["by_numbering"] = {n: diff_summary(r) for n, r in res["by_numbering"].items()}
    return out


def diff_files(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    out_csv: str | os.PathLike[str] | None = None,
    seed_decisions_csv: str | os.PathLike[str] | None = None,
    confusion_csv: str | os.PathLike[str] | None = None,
) -> dict:
    """The diff stage: :func:`diff_tables` of the table in file ``a`` against the table(s) ``b``.

    ``b`` is one file or several (typically the published ``train_label_to_hierarchical.csv`` and
    ``index_label_to_hierarchical.csv``, each in its own numbering). A is compared only in the
    numberings B has, so each numbering is compared with its own published file; the result also
    holds ``by_numbering`` (one :func:`diff_tables` result per numbering present in B).

    Optionally writes the disagreements (``out_csv``), the :func:`seed_decisions` rows
    (``seed_decisions_csv``) and the confusion table (``confusion_csv``). Returns the result of
    :func:`diff_tables` over all compared numberings.
    """
    from hglv2.fileio import atomic_open, commit_together

    paths = [b] if isinstance(b, (str, os.PathLike)) else list(b)
    if not paths:
        raise InputError("diff: give at least one table B")
    parts = [load_hierarchy_table(p) for p in paths]
    table_b = pd.concat(parts, ignore_index=True)
    dup = table_b.duplicated(list(KEY)).to_numpy()
    if dup.any():
        r = table_b.iloc[int(dup.argmax())]
        raise InputError(
            f"{', '.join(Path(p).name for p in paths)}: landmark_id {r['landmark_id']} "
            f"({r['numbering']} numbering) is in more than one of these tables"
        )
    table_b = sort_table(table_b)
    numberings = [n for n in NUMBERINGS if (table_b["numbering"] == n).any()]
    table_a = load_hierarchy_table(a)
    table_a = table_a[table_a["numbering"].isin(numberings)].reset_index(drop=True)
    res = diff_tables(table_a, table_b)
    res["by_numbering"] = {
        n: diff_tables(
            table_a[table_a["numbering"] == n].reset_index(drop=True),
            table_b[table_b["numbering"] == n].reset_index(drop=True),
        )
        for n in numberings
    }
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
