"""Propose clusters from anchor classes, and apply the human decisions of ``data/review/*.csv``.

**Propose.** A landmark's *supercategory* is its most specific truthy P31 class: P31 classes that
are ancestors of another of its P31 classes are dropped; among the rest the first by
``(has an anchor ancestor, distance to the nearest anchor, numeric QID)`` wins (deterministic).
Its cluster (level 1) and natural-or-human-made top (level 2) come from the anchors of
``clusters.csv`` reached going up the P279 graph breadth-first: the nearest anchors win. If they
name one cluster, the rule decides both levels. If they name several clusters with one top, the
top is decided and the cluster goes to review (``tie``); several tops go to review
(``conflicting-tops``); no anchor at all goes to review (``no-anchor``), as do landmarks that were
not resolved or have no class. ``pending.csv`` lists them grouped by supercategory, sorted by the
number of images affected, with the candidate clusters and the paths that led there.

**Apply.** Priority: landmark override > supercategory decision > rule. Every row of the review
files is validated first; problems are :class:`~hglv2.errors.InputError` naming ``FILE:ROW``
(unknown landmark, malformed QID, a cluster not in ``clusters.csv``, a top that contradicts the
cluster's, conflicting duplicate rows, a missing reason) or warnings (stale decisions whose
supercategory no longer occurs, identical duplicates, a label that no longer matches Wikidata's).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import pandas as pd

from hglv2.errors import InputError
from hglv2.hierarchy.labels import sort_table
from hglv2.hierarchy.wikidata import WikidataClient, fetch_items, follow_redirects, is_qid, qid_number
from hglv2.schema import HIERARCHY_COLUMNS, NUMBERINGS

if TYPE_CHECKING:
    from hglv2.hierarchy.sources import WikidataSource

CLUSTER_COLUMNS = ("qid", "label", "cluster", "top")
DECISION_COLUMNS = ("supercategory_qid", "supercategory", "cluster", "reason")
OVERRIDE_COLUMNS = ("landmark_id", "cluster", "top", "reason", "numbering")
PENDING_COLUMNS = (
    "kind",
    "key",
    "label",
    "reason",
    "n_landmarks",
    "n_images",
    "candidates",
    "paths",
    "landmarks",
)
PROPOSAL_COLUMNS = (
    "landmark_id",
    "numbering",
    "category",
    "qid",
    "label",
    "resolution",
    "supercategory",
    "supercategory_qid",
    "cluster",
    "top",
    "status",
    "reason",
    "anchor_distance",
    "revision",
    "n_images",
)


def read_review_csv(
    path: str | os.PathLike[str], columns: Sequence[str], required: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a review CSV as strings (stripped); check its columns. Row ``i`` is line ``i + 2``."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", comment=None)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (the header line {','.join(columns)} is needed)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a valid UTF-8 CSV file ({msg})") from None
    required = columns if required is None else required
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}:1: missing column(s) {', '.join(missing)} (expected {','.join(columns)})")
    for c in columns:
        if c not in df.columns:
            df[c] = ""
    return df[list(columns)].apply(lambda s: s.str.strip())


# --------------------------------------------------------------------------------------------
# clusters.csv


@dataclass(frozen=True)
class Anchor:
    qid: str
    label: str
    cluster: str
    top: str
    row: int


@dataclass(frozen=True)
class ClusterTable:
    path: Path
    anchors: tuple[Anchor, ...]

    @property
    def by_qid(self) -> dict[str, Anchor]:
        return {a.qid: a for a in self.anchors}

    @property
    def top_of(self) -> dict[str, str]:
        return {a.cluster: a.top for a in self.anchors}

    @property
    def tops(self) -> set[str]:
        return {a.top for a in self.anchors}


def load_clusters(path: str | os.PathLike[str]) -> ClusterTable:
    """Read and validate ``clusters.csv`` (qid, label, cluster, top)."""
    path = Path(path)
    df = read_review_csv(path, CLUSTER_COLUMNS)
    anchors: list[Anchor] = []
    seen: dict[str, int] = {}
    top_of: dict[str, tuple[str, int]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        row = i + 2
        if not is_qid(r.qid):
            raise InputError(f"{path}:{row}: qid {r.qid!r} is not a Wikidata item id (Q<number>)")
        for col in ("label", "cluster", "top"):
            if not getattr(r, col):
                raise InputError(f"{path}:{row}: empty {col}")
        if r.qid in seen:
            raise InputError(f"{path}:{row}: {r.qid} already listed at row {seen[r.qid]}")
        seen[r.qid] = row
        if r.cluster in top_of and top_of[r.cluster][0] != r.top:
            prev, prow = top_of[r.cluster]
            raise InputError(
                f"{path}:{row}: cluster {r.cluster!r} has top {r.top!r} here but {prev!r} at row {prow}"
            )
        top_of.setdefault(r.cluster, (r.top, row))
        anchors.append(Anchor(r.qid, r.label, r.cluster, r.top, row))
    if not anchors:
        raise InputError(f"{path}: no anchor classes")
    return ClusterTable(path, tuple(anchors))


def validate_anchors(client: WikidataClient, table: ClusterTable) -> list[dict[str, Any]]:
    """Check each anchor QID against Wikidata's English label; return the problems found.

    Catches wrong QIDs: a problem is a dict ``{row, qid, written, wikidata, problem}``.
    """
    items = fetch_items(client, [a.qid for a in table.anchors], props="labels")
    problems = []
    for a in table.anchors:
        info = items.get(a.qid)
        base = {"row": a.row, "qid": a.qid, "written": a.label}
        if info is None:
            problems.append({**base, "wikidata": None, "problem": "no such item"})
        elif info.qid != a.qid:
            problems.append({**base, "wikidata": info.label, "problem": f"redirects to {info.qid}"})
        elif (info.label or "").casefold() != a.label.casefold():
            problems.append({**base, "wikidata": info.label, "problem": "label differs"})
    return problems


def validate_anchors_file(source: WikidataSource, clusters: str | os.PathLike[str]) -> dict[str, Any]:
    """The validate-anchors stage: :func:`validate_anchors` on ``clusters.csv`` with a client from
    ``source`` (:mod:`hglv2.hierarchy.sources`): ``{"anchors": count, "problems": [...]}``."""
    table = load_clusters(clusters)
    client = source.client()
    return {"anchors": len(table.anchors), "problems": validate_anchors(client, table)}


# --------------------------------------------------------------------------------------------
# propose


@dataclass(frozen=True)
class AnchorHit:
    distance: int | None
    anchors: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]


def nearest_anchors(g: nx.DiGraph, cls: str, anchors: Mapping[str, Anchor]) -> AnchorHit:
    """BFS up the P279 graph from ``cls``; the anchors at the smallest distance and a path to each.

    Visits each class once, so cycles cannot loop. Paths follow the first-found (sorted) parents.
    """
    if cls in anchors:
        return AnchorHit(0, (cls,), ((cls,),))
    if cls not in g:
        return AnchorHit(None, (), ())
    prev: dict[str, str | None] = {cls: None}
    frontier = [cls]
    d = 0
    while frontier:
        d += 1
        nxt = []
        for c in frontier:
            for p in sorted(g.successors(c), key=qid_number):
                if p not in prev:
                    prev[p] = c
                    nxt.append(p)
        hits = sorted((p for p in nxt if p in anchors), key=qid_number)
        if hits:
            paths = []
            for h in hits:
                path: deque[str] = deque()
                node: str | None = h
                while node is not None:
                    path.appendleft(node)
                    node = prev[node]
                paths.append(tuple(path))
            return AnchorHit(d, tuple(hits), tuple(paths))
        frontier = nxt
    return AnchorHit(None, (), ())


def _split(value: Any) -> list[str]:
    return [q for q in value.split("|") if is_qid(q)] if isinstance(value, str) and value else []


def propose(
    resolved: pd.DataFrame,
    g: nx.DiGraph,
    aliases: Mapping[str, str],
    table: ClusterTable,
    image_counts: Mapping[tuple[str, int], int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Supercategory, cluster and top per landmark; returns ``(proposals, pending)`` DataFrames.

    Rows are keyed by (numbering, landmark_id) (a row without a ``numbering`` is in the train
    numbering); ``image_counts`` is keyed the same way. Both numberings share the graph and the
    anchors, hence one cluster vocabulary."""
    classes = _ClassLookup(g, aliases, table.by_qid)
    image_counts = image_counts or {}
    rows = [_proposal_row(r, classes, image_counts) for r in resolved.to_dict("records")]
    proposals = pd.DataFrame(rows, columns=list(PROPOSAL_COLUMNS))
    proposals = proposals.astype(
        {"landmark_id": "int64", "n_images": "int64", "anchor_distance": "Int64", "revision": "Int64"}
    )
    for c in PROPOSAL_COLUMNS:
        if c not in ("landmark_id", "n_images", "anchor_distance", "revision"):
            proposals[c] = proposals[c].astype("string")
    proposals = sort_table(proposals)
    return proposals, pending_table(proposals, g, classes.anchors, classes.hits, classes.label)


class _ClassLookup:
    """The class graph's answers that :func:`propose` asks for, each computed once per class."""

    def __init__(self, g: nx.DiGraph, aliases: Mapping[str, str], anchors: Mapping[str, Anchor]) -> None:
        self.g, self.aliases, self.anchors = g, aliases, anchors
        self.hits: dict[str, AnchorHit] = {}
        self._ancestors: dict[str, set[str]] = {}

    def hit(self, c: str) -> AnchorHit:
        if c not in self.hits:
            self.hits[c] = nearest_anchors(self.g, c, self.anchors)
        return self.hits[c]

    def ancestors(self, c: str) -> set[str]:
        if c not in self._ancestors:
            self._ancestors[c] = nx.descendants(self.g, c) if c in self.g else set()
        return self._ancestors[c]

    def label(self, c: str) -> str | None:
        return self.g.nodes[c].get("label") if c in self.g else None

    def supercategory(self, classes: list[str]) -> str:
        """The most specific class (not an ancestor of another), nearest to an anchor, then by QID."""
        anc = self.ancestors
        specific = [c for c in classes if not any(c in anc(o) and o not in anc(c) for o in classes if o != c)]
        specific = specific or classes
        return min(
            specific, key=lambda c: (self.hit(c).distance is None, self.hit(c).distance or 0, qid_number(c))
        )


def _proposal_row(
    r: dict[str, Any], classes: _ClassLookup, image_counts: Mapping[tuple[str, int], int]
) -> dict[str, Any]:
    lid = int(r["landmark_id"])
    numbering = r.get("numbering") if isinstance(r.get("numbering"), str) else "train"
    out: dict[str, Any] = dict.fromkeys(PROPOSAL_COLUMNS)
    out.update(
        landmark_id=lid,
        numbering=numbering,
        category=r.get("category"),
        qid=r.get("qid"),
        label=r.get("label"),
        resolution=r.get("resolution"),
        revision=r.get("revision"),
        n_images=int(image_counts.get((numbering, lid), 0)),
        status="pending",
    )
    p31 = dict.fromkeys(follow_redirects(classes.aliases, q) for q in _split(r.get("p31")))
    p31_classes = sorted(p31, key=qid_number)
    if not isinstance(r.get("qid"), str) or not r.get("qid"):
        out["reason"] = "unresolved:" + str(r.get("resolution"))
        return out
    if not p31_classes:
        out["reason"] = "no-class"
        return out
    sup = classes.supercategory(p31_classes)
    h = classes.hit(sup)
    anchors = classes.anchors
    out.update(
        supercategory=classes.label(sup) or (anchors[sup].label if sup in anchors else None),
        supercategory_qid=sup,
        anchor_distance=h.distance,
    )
    clusters = sorted({anchors[a].cluster for a in h.anchors})
    tops = sorted({anchors[a].top for a in h.anchors})
    if len(clusters) == 1:
        out.update(cluster=clusters[0], top=tops[0], status="rule", reason=None)
    elif not clusters:
        out["reason"] = "no-anchor"
    elif len(tops) == 1:
        out.update(top=tops[0], reason="tie")
    else:
        out["reason"] = "conflicting-tops"
    return out


def landmark_key(numbering: str, landmark_id: int) -> str:
    """How review lists name a landmark: ``123`` in the train numbering, ``index:123`` in the index
    numbering."""
    return str(int(landmark_id)) if numbering == "train" else f"{numbering}:{int(landmark_id)}"


def _parse_key(key: str) -> tuple[int, int]:
    numbering, _, lid = key.rpartition(":")
    return NUMBERINGS.index(numbering or "train"), int(lid)


def _key_order(pair: tuple[str, int]) -> tuple[int, int]:
    return NUMBERINGS.index(pair[0]), int(pair[1])


def _s(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _path_text(path: Sequence[str], label) -> str:
    return " > ".join(f"{q} {label(q) or ''}".strip() for q in path)


def pending_table(
    proposals: pd.DataFrame,
    g: nx.DiGraph,
    anchors: Mapping[str, Anchor],
    hits: Mapping[str, AnchorHit],
    label,
) -> pd.DataFrame:
    """Group the pending proposals: one row per supercategory, one per unresolved landmark."""
    pend = proposals[proposals["status"] == "pending"]
    rows = []
    for sup, grp in pend[pend["supercategory_qid"].notna()].groupby("supercategory_qid", sort=True):
        h = hits.get(sup, AnchorHit(None, (), ()))
        cands = sorted({f"{anchors[a].cluster} ({anchors[a].top})" for a in h.anchors})
        lids = [
            landmark_key(n, lid)
            for n, lid in sorted(zip(grp["numbering"], grp["landmark_id"], strict=True), key=_key_order)
        ]
        rows.append(
            {
                "kind": "supercategory",
                "key": sup,
                "label": grp["supercategory"].iloc[0],
                "reason": grp["reason"].iloc[0],
                "n_landmarks": len(grp),
                "n_images": int(grp["n_images"].sum()),
                "candidates": "|".join(cands),
                "paths": " ; ".join(_path_text(p, label) for p in h.paths),
                "landmarks": " ".join(lids[:20]) + (" ..." if len(lids) > 20 else ""),
            }
        )
    for r in pend[pend["supercategory_qid"].isna()].itertuples(index=False):
        rows.append(
            {
                "kind": "landmark",
                "key": landmark_key(r.numbering, r.landmark_id),
                "label": _s(r.label) or _s(r.category),
                "reason": r.reason,
                "n_landmarks": 1,
                "n_images": int(r.n_images),
                "candidates": "",
                "paths": "",
                "landmarks": landmark_key(r.numbering, r.landmark_id),
            }
        )
    df = pd.DataFrame(rows, columns=list(PENDING_COLUMNS))
    if len(df):
        df["_k"] = [
            (-n, k, (qid_number(key), "", 0) if is_qid(key) else (0, *_parse_key(key)))
            for n, k, key in zip(df["n_images"], df["kind"], df["key"], strict=True)
        ]
        df = df.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    return df


# --------------------------------------------------------------------------------------------
# review files and apply


def load_decisions(
    path: str | os.PathLike[str], table: ClusterTable, warnings: list[str]
) -> dict[str, tuple[str, int]]:
    """``decisions.csv`` -> {supercategory_qid: (cluster, row)}; errors for bad rows."""
    path = Path(path)
    df = read_review_csv(path, DECISION_COLUMNS, required=("supercategory_qid", "cluster"))
    top_of = table.top_of
    out: dict[str, tuple[str, int]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        row = i + 2
        if not is_qid(r.supercategory_qid):
            raise InputError(
                f"{path}:{row}: supercategory_qid {r.supercategory_qid!r} is not a Wikidata "
                "item id (Q<number>)"
            )
        if r.cluster not in top_of:
            raise InputError(
                f"{path}:{row}: cluster {r.cluster!r} is not in {table.path.name} "
                f"(known: {', '.join(sorted(top_of))})"
            )
        if not str(r.reason or "").strip():
            raise InputError(f"{path}:{row}: empty reason (say why this class goes to {r.cluster!r})")
        if r.supercategory_qid in out:
            prev, prow = out[r.supercategory_qid]
            if prev != r.cluster:
                raise InputError(
                    f"{path}:{row}: {r.supercategory_qid} -> {r.cluster!r} conflicts with row "
                    f"{prow} ({prev!r})"
                )
            warnings.append(f"{path}:{row}: duplicate of row {prow}")
            continue
        out[r.supercategory_qid] = (r.cluster, row)
    return out


def load_overrides(
    path: str | os.PathLike[str], table: ClusterTable, known: set[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str | None, str | None, str, int]]:
    """``landmark_overrides.csv`` -> {(numbering, landmark_id): (cluster, top, reason, row)}; errors
    for bad rows.

    The optional ``numbering`` column says which numbering the landmark_id is in (``train`` or
    ``index``); without it, or in an empty cell, it is ``train``."""
    path = Path(path)
    df = read_review_csv(path, OVERRIDE_COLUMNS, required=OVERRIDE_COLUMNS[:4])
    top_of, tops = table.top_of, table.tops
    out: dict[int, tuple[str | None, str | None, str, int]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        row = i + 2
        if not r.landmark_id.lstrip("-").isdigit():
            raise InputError(f"{path}:{row}: landmark_id {r.landmark_id!r} is not an integer")
        numbering = r.numbering or "train"
        if numbering not in NUMBERINGS:
            raise InputError(f"{path}:{row}: numbering {numbering!r} is not one of {', '.join(NUMBERINGS)}")
        lid = int(r.landmark_id)
        key = (numbering, lid)
        if key not in known:
            where = "" if numbering == "train" else f" in the {numbering} numbering"
            raise InputError(f"{path}:{row}: unknown landmark_id {lid}{where}")
        cluster, top = r.cluster or None, r.top or None
        if cluster is None and top is None:
            raise InputError(f"{path}:{row}: give a cluster, a top or both")
        if cluster is not None and cluster not in top_of:
            raise InputError(f"{path}:{row}: cluster {cluster!r} is not in {table.path.name}")
        if top is not None and top not in tops:
            raise InputError(f"{path}:{row}: top {top!r} is not one of {', '.join(sorted(tops))}")
        if cluster is not None and top is not None and top_of[cluster] != top:
            raise InputError(
                f"{path}:{row}: cluster {cluster!r} belongs to top {top_of[cluster]!r}, not {top!r}"
            )
        if not r.reason:
            raise InputError(f"{path}:{row}: empty reason (say why this landmark is overridden)")
        top = top or top_of[cluster]
        if key in out:
            prev = out[key]
            if (prev[0], prev[1]) != (cluster, top):
                raise InputError(f"{path}:{row}: landmark {lid} conflicts with row {prev[3]}")
        out.setdefault(key, (cluster, top, r.reason, row))
    return out


def apply_reviews(
    proposals: pd.DataFrame,
    table: ClusterTable,
    decisions_path: str | os.PathLike[str],
    overrides_path: str | os.PathLike[str],
) -> tuple[pd.DataFrame, list[str]]:
    """The hierarchy table (:data:`HIERARCHY_COLUMNS`) and the warnings.

    ``provenance``: ``override`` > ``decision`` > ``rule``; missing where no level is known.
    """
    warnings: list[str] = []
    decisions = load_decisions(decisions_path, table, warnings)
    keys = zip(proposals["numbering"].fillna("train"), proposals["landmark_id"].astype(int), strict=True)
    overrides = load_overrides(overrides_path, table, set(keys))
    top_of = table.top_of
    present = set(proposals["supercategory_qid"].dropna().tolist())
    sup_label = dict(zip(proposals["supercategory_qid"], proposals["supercategory"], strict=True))
    dec_df = read_review_csv(decisions_path, DECISION_COLUMNS, required=("supercategory_qid", "cluster"))
    for qid, (_, row) in sorted(decisions.items(), key=lambda kv: kv[1][1]):
        if qid not in present:
            warnings.append(f"{decisions_path}:{row}: stale decision: supercategory {qid} no longer occurs")
            continue
        written = dec_df["supercategory"].iloc[row - 2]
        current = sup_label.get(qid)
        if written and isinstance(current, str) and written.casefold() != current.casefold():
            warnings.append(f"{decisions_path}:{row}: {qid} is labelled {current!r} now, not {written!r}")
    rows = []
    for r in proposals.to_dict("records"):
        cluster = r["cluster"] if isinstance(r["cluster"], str) else None
        top = r["top"] if isinstance(r["top"], str) else None
        prov = "rule" if (cluster or top) else None
        sup = r["supercategory_qid"] if isinstance(r["supercategory_qid"], str) else None
        if sup in decisions:
            cluster = decisions[sup][0]
            top, prov = top_of[cluster], "decision"
        key = (r["numbering"] if isinstance(r["numbering"], str) else "train", int(r["landmark_id"]))
        if key in overrides:
            o_cluster, o_top, _, _ = overrides[key]
            cluster, top, prov = o_cluster, o_top, "override"
        rev = r["revision"]
        rows.append(
            {
                "landmark_id": r["landmark_id"],
                "numbering": key[0],
                "category": r["category"],
                "qid": r["qid"],
                "supercategory": r["supercategory"],
                "supercategory_qid": sup,
                "hierarchical_label": cluster,
                "natural_or_human_made": top,
                "provenance": prov,
                "revision": None if rev is None or pd.isna(rev) else str(int(rev)),
            }
        )
    out = pd.DataFrame(rows, columns=list(HIERARCHY_COLUMNS)).astype(
        {c: "string" for c in HIERARCHY_COLUMNS if c != "landmark_id"}
    )
    out["landmark_id"] = out["landmark_id"].astype("int64")
    return sort_table(out), warnings


ImageCounts = Mapping[tuple[str, int], int]


def coverage(table: pd.DataFrame, image_counts: ImageCounts | None = None) -> dict[str, Any]:
    """Fraction of landmarks (and of images, if counts keyed by (numbering, landmark_id) are given)
    with each level known; with a ``numbering`` column, also ``by_numbering``: the same per
    numbering."""
    out = _coverage(table, image_counts)
    if "numbering" in table:
        out["by_numbering"] = {
            n: _coverage(table[table["numbering"] == n], image_counts)
            for n in NUMBERINGS
            if (table["numbering"] == n).any()
        }
    return out


def _coverage(table: pd.DataFrame, image_counts: Mapping[tuple[str, int], int] | None) -> dict[str, Any]:
    n = len(table)
    out: dict[str, Any] = {"landmarks": n}
    counts = image_counts or {}
    weights = pd.Series(
        [counts.get((k, int(x)), 0) for k, x in zip(table["numbering"], table["landmark_id"], strict=True)],
        index=table.index,
        dtype="int64",
    )
    total = int(weights.sum())
    out["images"] = total
    for col in ("qid", "supercategory", "hierarchical_label", "natural_or_human_made"):
        known = table[col].notna().to_numpy()
        out[col] = {"landmarks": int(known.sum()), "fraction": float(known.mean()) if n else 0.0}
        if total:
            out[col]["image_fraction"] = float(weights[known].sum() / total)
    both = (table["hierarchical_label"].notna() & table["natural_or_human_made"].notna()).to_numpy()
    out["complete"] = {"landmarks": int(both.sum()), "fraction": float(both.mean()) if n else 0.0}
    if "provenance" in table:
        out["provenance"] = {
            str(k): int(v)
            for k, v in table["provenance"].value_counts(dropna=False).items()
            if not pd.isna(k)
        }
    return out


# --------------------------------------------------------------------------------------------
# the propose stage on files


def image_counts(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
) -> dict[tuple[str, int], int]:
    """Images per (numbering, landmark_id) in GLDv2 image lists: ``train.csv`` (train numbering) and
    ``index_image_to_landmark.csv`` (index numbering), read by :func:`hglv2.gldv2.readers.read_file`;
    the numbering comes from the file name (:func:`~hglv2.gldv2.specs.numbering_of_file`).
    ``{}`` for None."""
    from hglv2.gldv2.readers import read_file, read_header
    from hglv2.gldv2.specs import numbering_of_file

    if paths is None:
        return {}
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: dict[tuple[str, int], int] = {}
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file (--images)")
        head = read_header(p)
        missing = [c for c in ("id", "landmark_id") if c not in head]
        if missing:  # e.g. a *_label_to_category.csv: one row per landmark, not per image
            raise InputError(
                f"{p}: missing column(s) {', '.join(missing)} (--images takes the GLDv2 train.csv: "
                f"id,url,landmark_id, or index_image_to_landmark.csv: id,landmark_id; this file has: "
                f"{', '.join(head)})"
            )
        kind = "train" if "url" in head else "image_to_landmark"
        numbering = numbering_of_file(p)
        lids = read_file(p, kind)["landmark_id"].to_numpy()
        ids, counts = np.unique(lids, return_counts=True)
        for lid, c in zip(ids.tolist(), counts.tolist(), strict=True):
            out[(numbering, lid)] = out.get((numbering, lid), 0) + c
    return out


def propose_files(
    resolved: str | os.PathLike[str],
    graph_dir: str | os.PathLike[str],
    clusters: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    out: str | os.PathLike[str],
    pending: str | os.PathLike[str],
) -> dict[str, Any]:
    """The propose stage: :func:`propose` over the resolved table and the class graph on disk.

    Writes the proposals (Parquet, ``out``) and the review list (CSV, ``pending``); ``images`` are
    optional image lists (``train.csv``, ``index_image_to_landmark.csv``) whose image counts sort
    the review list. Returns the summary:
    ``landmarks``, ``status`` (count per status), ``pending_reasons`` (count per reason),
    ``pending_rows``.
    """
    import pyarrow as pa

    from hglv2.fileio import atomic_open, commit_together, read_parquet_checked, write_parquet
    from hglv2.hierarchy.graph import load_graph
    from hglv2.hierarchy.resolve import RESOLVED_COLUMNS

    hint = "run `hglv2 hierarchy resolve` first"
    resolved_df = read_parquet_checked(resolved, RESOLVED_COLUMNS, hint).to_pandas()
    counts = image_counts(images)
    table = load_clusters(clusters)
    g, aliases = load_graph(graph_dir)
    proposals, pend = propose(resolved_df, g, aliases, table, counts)
    with commit_together():  # both outputs of the stage, or neither
        write_parquet(pa.Table.from_pandas(proposals, preserve_index=False), out)
        with atomic_open(pending) as fh:
            pend.to_csv(fh, index=False, lineterminator="\n")
    status = proposals["status"].value_counts().to_dict()
    reasons = proposals["reason"].value_counts().sort_index().to_dict()
    return {
        "landmarks": len(proposals),
        "status": {k: int(v) for k, v in sorted(status.items())},
        "pending_reasons": {k: int(v) for k, v in reasons.items()},
        "pending_rows": len(pend),
    }


# --------------------------------------------------------------------------------------------
# the review and apply stages on files


def apply_files(
    proposals: str | os.PathLike[str],
    clusters: str | os.PathLike[str],
    decisions: str | os.PathLike[str],
    overrides: str | os.PathLike[str],
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """:func:`apply_reviews` on the files: ``(proposals, hierarchy table, warnings)``."""
    from hglv2.fileio import read_parquet_checked

    hint = "run `hglv2 hierarchy propose` first"
    props = read_parquet_checked(proposals, PROPOSAL_COLUMNS, hint).to_pandas()
    table, warnings = apply_reviews(props, load_clusters(clusters), decisions, overrides)
    return props, table, warnings


def proposal_image_counts(proposals: pd.DataFrame) -> dict[tuple[str, int], int]:
    """``(numbering, landmark_id) -> n_images`` of the proposals table (the weights of
    :func:`coverage`)."""
    keys = zip(proposals["numbering"], proposals["landmark_id"].astype(int), strict=True)
    return dict(zip(keys, proposals["n_images"].astype(int), strict=True))


def open_groups(proposals: pd.DataFrame, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The landmarks still without a cluster after the reviews, and their groups.

    Returns ``(open landmarks, groups)``: a group per supercategory QID (or per landmark when it has
    none) with ``key``, ``label``, ``reason``, ``n_landmarks``, ``n_images``, sorted by images
    (largest first), then key.
    """
    cols = ["numbering", "landmark_id", "hierarchical_label", "provenance"]
    open_ = proposals.merge(table[cols], on=["numbering", "landmark_id"])
    open_ = open_[open_["hierarchical_label"].isna()]
    names = pd.Series(
        [landmark_key(n, lid) for n, lid in zip(open_["numbering"], open_["landmark_id"], strict=True)],
        index=open_.index,
        dtype="string",
    )
    key = open_["supercategory_qid"].fillna("landmark " + names)
    shown = open_["supercategory"].fillna(open_["label"]).fillna(open_["category"])
    groups = (
        open_.assign(key=key, supercategory=shown)
        .groupby("key", sort=True)
        .agg(
            label=("supercategory", "first"),
            reason=("reason", "first"),
            n_landmarks=("landmark_id", "size"),
            n_images=("n_images", "sum"),
        )
        .reset_index()
        .sort_values(["n_images", "key"], ascending=[False, True], kind="stable")
    )
    return open_, groups
