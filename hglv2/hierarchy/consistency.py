"""Cross-numbering consistency: the same place under its train id and its index id.

The GLDv2 release numbers landmarks twice (train ids, index ids; see :data:`hglv2.schema.NUMBERINGS`).
The retrieval queries link the two: ``recognition_solution_v2.1.csv`` gives a query's train
landmark, ``retrieval_solution_v2.1.csv`` its ground-truth index images, whose landmark
(``index_image_to_landmark.csv``) is the index id of the same place. :func:`query_links` reads those
links, :func:`place_pairs` counts the queries behind each (train id, index id) pair, and
:func:`compare_numberings` compares the cluster and top level the hierarchy table gives each side.

:func:`align` applies one side's labels to the other (the SupRank authors overwrote the index
cluster with the query's: ``index-to-query``; ``query-to-index`` is the reverse). Only pairs whose
winning side is labelled and whose losing landmark is linked to that one place (or to places that
all agree) change; the rest are counted as ambiguous.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hglv2.errors import InputError
from hglv2.gldv2 import specs

ALIGN_RULES = ("index-to-query", "query-to-index")
LINK_FILES = (specs.RECOGNITION_SOLUTION, specs.RETRIEVAL_SOLUTION, specs.INDEX_IMAGE_TO_LANDMARK)
PAIR_COLUMNS = ("train_landmark_id", "index_landmark_id", "queries")
STATUSES = ("agree", "cluster differs", "top differs", "one side unlabelled", "both unlabelled")
COMPARE_COLUMNS = (
    *PAIR_COLUMNS,
    "train_cluster",
    "index_cluster",
    "train_top",
    "index_top",
    "train_provenance",
    "index_provenance",
    "status",
)


def query_links(files: Mapping[str, str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per retrieval query: ``id``, ``train_landmark_id`` (its first recognition landmark),
    ``index_landmark_id`` (the landmark of its first ground-truth index image that has one); -1
    where missing. ``files`` maps the :data:`LINK_FILES` names to paths; the join is the export's
    (:func:`hglv2.gldv2.export.query_rows`)."""
    from hglv2.gldv2.export import query_rows

    missing = [n for n in LINK_FILES if n not in files]
    if missing:
        raise InputError(f"cross-numbering links need {', '.join(missing)}")
    ids, index_lids, _, train_lids, _ = query_rows({k: Path(v) for k, v in files.items()}, "first")
    return pd.DataFrame(
        {"id": ids.to_pylist(), "train_landmark_id": train_lids, "index_landmark_id": index_lids}
    ).astype({"train_landmark_id": "int64", "index_landmark_id": "int64"})


def link_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The :data:`LINK_FILES` present in a metadata folder."""
    folder = Path(folder)
    return {n: folder / n for n in LINK_FILES if (folder / n).is_file()}


def place_pairs(links: pd.DataFrame) -> pd.DataFrame:
    """(train id, index id) pairs linked by at least one query, with the number of queries."""
    both = links[(links["train_landmark_id"] >= 0) & (links["index_landmark_id"] >= 0)]
    pairs = both.groupby(["train_landmark_id", "index_landmark_id"], sort=True).size().rename("queries")
    return pairs.reset_index().astype("int64")[list(PAIR_COLUMNS)]


def _side(table: pd.DataFrame, numbering: str) -> pd.DataFrame:
    part = table[table["numbering"] == numbering]
    return pd.DataFrame(
        {
            f"{numbering}_landmark_id": part["landmark_id"].astype("int64").to_numpy(),
            f"{numbering}_cluster": part["hierarchical_label"].to_numpy(),
            f"{numbering}_top": part["natural_or_human_made"].to_numpy(),
            f"{numbering}_provenance": part["provenance"].to_numpy(),
        }
    )


def _fold(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.casefold()


def compare_numberings(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Each linked pair with both sides' cluster, top and provenance and a ``status``
    (:data:`STATUSES`; compared case-insensitively; a pair whose sides are labelled only at
    different levels counts as ``one side unlabelled``)."""
    m = pairs.merge(_side(table, "train"), on="train_landmark_id", how="left")
    m = m.merge(_side(table, "index"), on="index_landmark_id", how="left")
    tc, ic, tt, it = (_fold(m[c]) for c in ("train_cluster", "index_cluster", "train_top", "index_top"))
    has_t, has_i = (tc.notna() | tt.notna()).to_numpy(), (ic.notna() | it.notna()).to_numpy()
    cl_diff = (tc.notna() & ic.notna() & (tc != ic)).fillna(False).to_numpy()
    top_diff = (tt.notna() & it.notna() & (tt != it)).fillna(False).to_numpy()
    comparable = ((tc.notna() & ic.notna()) | (tt.notna() & it.notna())).fillna(False).to_numpy()
    status = np.select(
        [~has_t & ~has_i, top_diff, cl_diff, ~comparable],
        ["both unlabelled", "top differs", "cluster differs", "one side unlabelled"],
        default="agree",
    )
    m["status"] = status
    for c in COMPARE_COLUMNS[3:]:
        m[c] = m[c].astype("string")
    return m[list(COMPARE_COLUMNS)].reset_index(drop=True)


def consistency_summary(compared: pd.DataFrame) -> dict[str, Any]:
    """Counts per status, and the disagreeing pairs (cluster or top differs) as records."""
    bad = compared[compared["status"].isin(["cluster differs", "top differs"])]
    return {
        "pairs": len(compared),
        "queries": int(compared["queries"].sum()),
        "status": {s: int((compared["status"] == s).sum()) for s in STATUSES},
        "disagreements": bad.astype(object).where(bad.notna(), None).to_dict("records"),
    }


def align(table: pd.DataFrame, compared: pd.DataFrame, rule: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Copy the winning side's cluster and top onto the other side of each linked pair.

    ``index-to-query``: the index landmark takes its query's train landmark labels (the authors'
    rule); ``query-to-index``: the reverse. Rows changed get provenance ``aligned``. Counts:
    ``changed`` (landmarks), ``ambiguous`` (a losing landmark linked to winners that disagree),
    ``unchanged`` (already equal or the winner unlabelled).
    """
    if rule not in ALIGN_RULES:
        raise InputError(f"--align {rule!r} is not one of {', '.join(ALIGN_RULES)}")
    win, lose = ("train", "index") if rule == "index-to-query" else ("index", "train")
    labelled = compared[compared[f"{win}_cluster"].notna() | compared[f"{win}_top"].notna()]
    targets: dict[int, set[tuple[Any, Any]]] = {}
    for r in labelled.to_dict("records"):
        targets.setdefault(int(r[f"{lose}_landmark_id"]), set()).add(
            (
                None if pd.isna(r[f"{win}_cluster"]) else r[f"{win}_cluster"],
                None if pd.isna(r[f"{win}_top"]) else r[f"{win}_top"],
            )
        )
    out = table.copy()
    row_of = {
        int(lid): i
        for i, lid in zip(out.index, out["landmark_id"], strict=True)
        if out.at[i, "numbering"] == lose
    }
    counts = {"changed": 0, "ambiguous": 0, "unchanged": 0}
    for lid, values in sorted(targets.items()):
        if len(values) > 1:
            counts["ambiguous"] += 1
            continue
        cluster, top = next(iter(values))
        i = row_of.get(lid)
        if i is None:
            counts["unchanged"] += 1
            continue
        cur = (out.at[i, "hierarchical_label"], out.at[i, "natural_or_human_made"])
        cur = tuple(None if pd.isna(v) else v for v in cur)
        if cur == (cluster, top):
            counts["unchanged"] += 1
            continue
        out.loc[i, ["hierarchical_label", "natural_or_human_made", "provenance"]] = [cluster, top, "aligned"]
        counts["changed"] += 1
    return out, counts


def consistency_files(
    table: pd.DataFrame, metadata: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]
) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """:func:`compare_numberings` of ``table`` through the queries of the GLDv2 files in
    ``metadata`` (a folder, or a mapping file name -> path); None when one of :data:`LINK_FILES`
    is missing."""
    files = link_files(metadata) if isinstance(metadata, (str, os.PathLike)) else dict(metadata)
    if any(n not in files for n in LINK_FILES):
        return None
    compared = compare_numberings(table, place_pairs(query_links(files)))
    return compared, consistency_summary(compared)


def summary_lines(summary: dict[str, Any], limit: int = 10) -> list[str]:
    """The printed report: counts per status, then the disagreeing pairs."""
    st = summary["status"]
    lines = [
        f"cross-numbering: {summary['pairs']} places with a train and an index id ({summary['queries']} "
        f"queries): {st['agree']} agree, {st['cluster differs']} cluster differs, {st['top differs']} top "
        f"differs, {st['one side unlabelled']} one side unlabelled, {st['both unlabelled']} both unlabelled"
    ]
    for d in summary["disagreements"][:limit]:
        lines.append(
            f"  train {d['train_landmark_id']} {d['train_cluster']} ({d['train_top']}) <> index "
            f"{d['index_landmark_id']} {d['index_cluster']} ({d['index_top']}): {d['status']}"
        )
    if len(summary["disagreements"]) > limit:
        lines.append(f"  ... {len(summary['disagreements']) - limit} more")
    return lines


def align_files(
    table: pd.DataFrame, metadata: str | os.PathLike[str], rule: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`align` with the pairs linked by the GLDv2 files in ``metadata``."""
    found = consistency_files(table, metadata)
    if found is None:
        missing = [n for n in LINK_FILES if n not in link_files(metadata)]
        raise InputError(
            f"--align needs {', '.join(missing)} in {metadata} (the queries link the numberings)"
        )
    return align(table, found[0], rule)
