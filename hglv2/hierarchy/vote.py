"""Image-model votes for the landmarks that the rules leave without a cluster.

The recipe follows the SupRank authors' labelling code (``gldv2_labels.py``), split into a part
with no model (this module: prompts, per-image decisions, per-landmark votes, the review rows)
and the embedding of images and prompts (:mod:`hglv2.evaluation.zeroshot`, open_clip):

- **Prompts.** One text prompt ``"A picture of a {name}"`` per *clustered supercategory name*: the
  supercategory labels of the landmarks that have a cluster (a name takes the cluster most of its
  landmarks have; ties by cluster name) and the anchor labels of ``clusters.csv`` (each names its
  cluster). Each prompt stands for its cluster.
- **Per image** (``method="argmax"``, the authors' default): the cluster of the prompt with the
  highest softmax(100 v tᵀ), i.e. the highest cosine similarity. ``method="knn"``: the 5 most
  similar prompts, each weighted by exp(100 s), summed per cluster; the heaviest cluster wins.
  Where a landmark's top level is already known (a rule found one top but several clusters), only
  the prompts of clusters under that top compete, so a vote never contradicts a decided top.
  Ties go to the lower prompt / cluster index (names sorted), so the same features give the same
  votes.
- **Per landmark**: a majority vote over *all* its images. The authors voted the query images and
  the index images separately, then overwrote the index side with the query side. Here a query
  image counts for the landmark of its ground truth in each numbering (its recognition landmark in
  the train numbering, the landmark of its ground-truth index images in the index numbering),
  pooled with that landmark's own images: the query and its ground truth show the same place, so
  separate votes could only disagree by noise, and more images make a steadier majority. Whether
  the two numberings then agree is checked by :mod:`hglv2.hierarchy.consistency`, and reported
  instead of silently overwritten.

A vote is a *proposal*: :func:`votes_table` marks it ``accepted`` only when ``accept_above`` is
given and the winner's share reaches it with a strict majority over the runner-up; the other rows
are ``pending`` until a reviewer accepts or rejects them in ``data/review/vote_decisions.csv``
(:func:`load_vote_decisions`). :func:`apply_votes` then fills the clusters of accepted votes with
provenance ``vote``; labels set by a rule, a decision or an override are never changed. The vote
reads the proposals, not the review files, so editing a decision never reruns the image step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hglv2.errors import InputError
from hglv2.hierarchy.labels import sort_table
from hglv2.schema import NUMBERINGS

PROMPT = "A picture of a {}"
TEMPERATURE = 100.0
KNN_K = 5
METHODS = ("argmax", "knn")
VOTE_COLUMNS = (
    "numbering",
    "landmark_id",
    "cluster",
    "top",
    "share",
    "images",
    "runner_up",
    "runner_up_share",
    "margin",
    "status",
)
VOTE_STATUSES = ("accepted", "pending")
VOTE_DECISION_COLUMNS = ("numbering", "landmark_id", "cluster", "decision", "reason")
VOTE_DECISIONS = ("accept", "reject")
#: the vote-review file written beside the votes table: the pending rows, decision left empty
REVIEW_COLUMNS = (*VOTE_DECISION_COLUMNS[:3], "share", "images", "runner_up", "margin", "decision", "reason")


@dataclass(frozen=True)
class Prompts:
    """The text prompts: ``names[i]`` stands for cluster ``clusters[cluster_of[i]]``."""

    names: tuple[str, ...]
    clusters: tuple[str, ...]
    cluster_of: np.ndarray  # (T,) int64 index into clusters
    top_of: Mapping[str, str]

    def texts(self, template: str = PROMPT) -> list[str]:
        return [template.format(n) for n in self.names]


def build_prompts(
    table: pd.DataFrame, anchor_labels: Mapping[str, str], top_of: Mapping[str, str]
) -> Prompts:
    """The clustered supercategory names of ``table`` (a hierarchy table) and the anchor labels
    (``label -> cluster`` from ``clusters.csv``); ``top_of`` maps each cluster to its top level."""
    known = table[table["hierarchical_label"].notna() & table["supercategory"].notna()]
    votes: dict[str, dict[str, int]] = {}
    for name, cluster in zip(known["supercategory"], known["hierarchical_label"], strict=True):
        votes.setdefault(str(name).strip(), {}).setdefault(str(cluster), 0)
        votes[str(name).strip()][str(cluster)] += 1
    cluster_of_name = {n: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for n, c in votes.items()}
    for label, cluster in anchor_labels.items():
        cluster_of_name.setdefault(str(label).strip(), str(cluster))
    cluster_of_name = {n: c for n, c in cluster_of_name.items() if n and c in top_of}
    if not cluster_of_name:
        raise InputError("no clustered supercategory to build prompts from (apply the rules first)")
    names = sorted(cluster_of_name, key=lambda n: (n.casefold(), n))
    clusters = tuple(sorted(set(cluster_of_name.values())))
    idx = {c: i for i, c in enumerate(clusters)}
    return Prompts(
        names=tuple(names),
        clusters=clusters,
        cluster_of=np.array([idx[cluster_of_name[n]] for n in names], dtype=np.int64),
        top_of=dict(top_of),
    )


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def predict_images(
    image_features: np.ndarray,
    text_features: np.ndarray,
    prompts: Prompts,
    *,
    method: str = "argmax",
    tops: Sequence[str | None] | None = None,
    k: int = KNN_K,
    temperature: float = TEMPERATURE,
) -> np.ndarray:
    """The cluster index (into ``prompts.clusters``) of each image.

    ``image_features`` (N, D) and ``text_features`` (T, D) are normalised here (float64);
    ``tops[i]``, when not None, keeps only the prompts of clusters under that top for image i.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    v, t = _unit(image_features), _unit(text_features)
    if t.shape[0] != len(prompts.names):
        raise ValueError(f"{t.shape[0]} text features for {len(prompts.names)} prompts")
    sim = v @ t.T  # cosine similarities (N, T)
    if tops is not None:
        prompt_top = np.array([prompts.top_of[prompts.clusters[c]] for c in prompts.cluster_of])
        for top in {x for x in tops if x is not None}:
            rows = np.array([x == top for x in tops])
            if (prompt_top == top).any():
                sim[np.ix_(rows, prompt_top != top)] = -np.inf
    if method == "argmax":  # softmax is monotone: the argmax of 100 s is that of softmax(100 s)
        return prompts.cluster_of[np.argmax(sim, axis=1)]
    k = min(k, sim.shape[1])
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(sim, order, axis=1)
    weights = np.exp(temperature * (top_s - top_s[:, :1]))  # exp(100 s), scaled per row
    weights[~np.isfinite(top_s)] = 0.0
    scores = np.zeros((sim.shape[0], len(prompts.clusters)))
    np.add.at(
        scores, (np.repeat(np.arange(sim.shape[0]), k), prompts.cluster_of[order].ravel()), weights.ravel()
    )
    return np.argmax(scores, axis=1)


def votes_table(
    image_landmarks: pd.DataFrame,
    predictions: np.ndarray,
    prompts: Prompts,
    accept_above: float | None = None,
) -> pd.DataFrame:
    """The majority vote per landmark (:data:`VOTE_COLUMNS`).

    ``image_landmarks`` has one row per (image, landmark it counts for) with ``numbering``,
    ``landmark_id`` and ``image`` (the row of ``predictions``); ``share`` is the winner's fraction
    of the landmark's images, ``margin`` its lead over the runner-up (ties go to the cluster name
    first in sorted order, with margin 0). ``status`` is ``accepted`` where ``accept_above`` is
    given, ``share >= accept_above`` and ``margin > 0``, else ``pending``.
    """
    df = image_landmarks[["numbering", "landmark_id", "image"]].copy()
    df["cluster"] = np.asarray(predictions, dtype=np.int64)[df["image"].to_numpy(dtype=np.int64)]
    counts = df.groupby(["numbering", "landmark_id", "cluster"], sort=True).size().rename("n").reset_index()
    rows = []
    for (numbering, lid), grp in counts.groupby(["numbering", "landmark_id"], sort=False):
        names = [prompts.clusters[c] for c in grp["cluster"]]
        ranked = sorted(zip(grp["n"].tolist(), names, strict=True), key=lambda t: (-t[0], t[1]))
        total = int(grp["n"].sum())
        win_n, win = ranked[0]
        run_n, run = ranked[1] if len(ranked) > 1 else (0, None)
        share, run_share = win_n / total, run_n / total
        accepted = accept_above is not None and share >= accept_above and win_n > run_n
        rows.append(
            {
                "numbering": numbering,
                "landmark_id": int(lid),
                "cluster": win,
                "top": prompts.top_of[win],
                "share": share,
                "images": total,
                "runner_up": run,
                "runner_up_share": run_share,
                "margin": share - run_share,
                "status": "accepted" if accepted else "pending",
            }
        )
    return sort_votes(pd.DataFrame(rows, columns=list(VOTE_COLUMNS)))


def voting_images(files: Mapping[str, str | os.PathLike[str]], landmarks: pd.DataFrame) -> pd.DataFrame:
    """The images that vote for each of ``landmarks`` (``numbering``, ``landmark_id`` columns).

    ``files`` maps GLDv2 file names to paths: ``train.csv`` (train images), and
    ``index_image_to_landmark.csv`` (index images); with the solution files
    (:data:`hglv2.hierarchy.consistency.LINK_FILES`) a retrieval query image also votes for its
    recognition landmark (train) and its ground-truth landmark (index). Returns one row per (image,
    landmark): ``id``, ``numbering``, ``landmark_id``, ``source`` (``train``, ``index``, ``query``),
    sorted by numbering, landmark and id.
    """
    from hglv2.gldv2 import specs
    from hglv2.gldv2.readers import read_file
    from hglv2.hierarchy.consistency import LINK_FILES, query_links

    lids = landmarks["landmark_id"].astype("int64").to_numpy()
    wanted = {n: np.unique(lids[(landmarks["numbering"] == n).to_numpy()]) for n in NUMBERINGS}
    parts = []
    for name, numbering, kind in (
        (specs.TRAIN, "train", "train"),
        (specs.INDEX_IMAGE_TO_LANDMARK, "index", "image_to_landmark"),
    ):
        if name in files:
            t = read_file(files[name], kind)
            t = t.filter(np.isin(t["landmark_id"].to_numpy(), wanted[numbering]))
            ids, got = t["id"].to_pylist(), t["landmark_id"].to_numpy()
            parts.append(
                pd.DataFrame({"id": ids, "numbering": numbering, "landmark_id": got, "source": numbering})
            )
    if all(n in files for n in LINK_FILES):
        links = query_links(files)
        for numbering in NUMBERINGS:
            q = links[np.isin(links[f"{numbering}_landmark_id"].to_numpy(), wanted[numbering])]
            got = q[f"{numbering}_landmark_id"]
            parts.append(
                pd.DataFrame({"id": q["id"], "numbering": numbering, "landmark_id": got, "source": "query"})
            )
    if not parts:
        raise InputError("no image list: give train.csv and/or index_image_to_landmark.csv")
    df = pd.concat(parts, ignore_index=True).astype({"landmark_id": "int64"})
    df = df.drop_duplicates(["id", "numbering", "landmark_id"]).sort_values("id", kind="stable")
    return sort_table(df)


def empty_votes() -> pd.DataFrame:
    """A votes table with no rows (nothing left to vote on)."""
    return sort_votes(pd.DataFrame({c: [] for c in VOTE_COLUMNS}))


def sort_votes(df: pd.DataFrame) -> pd.DataFrame:
    """Votes in key order (train numbering first, then landmark id), with the fixed dtypes."""
    df = df.astype({"landmark_id": "int64", "images": "int64", "share": "float64", "margin": "float64"})
    df["runner_up_share"] = df["runner_up_share"].astype("float64")
    for c in ("numbering", "cluster", "top", "runner_up", "status"):
        df[c] = df[c].astype("string")
    return sort_table(df)


def vote_summary(votes: pd.DataFrame, open_landmarks: int | None = None) -> dict[str, Any]:
    """Counts for the command's report: votes per numbering and status, shares, clusters."""
    out: dict[str, Any] = {"votes": len(votes)}
    if open_landmarks is not None:
        out["open_landmarks"] = int(open_landmarks)
    out["status"] = {s: int((votes["status"] == s).sum()) for s in VOTE_STATUSES}
    out["by_numbering"] = {
        n: {s: int(((votes["numbering"] == n) & (votes["status"] == s)).sum()) for s in VOTE_STATUSES}
        for n in NUMBERINGS
        if (votes["numbering"] == n).any()
    }
    shares = votes["share"].to_numpy(dtype=np.float64)
    out["share"] = (
        {
            "mean": float(shares.mean()),
            "median": float(np.median(shares)),
            "min": float(shares.min()),
            "max": float(shares.max()),
        }
        if len(shares)
        else None
    )
    out["images"] = int(votes["images"].sum())
    out["clusters"] = {str(k): int(v) for k, v in votes["cluster"].value_counts().sort_index().items()}
    return out


# --------------------------------------------------------------------------------------------
# the review loop


def review_rows(votes: pd.DataFrame) -> pd.DataFrame:
    """The pending votes as rows of a ``vote_decisions.csv`` to fill in (:data:`REVIEW_COLUMNS`):
    the reviewer writes ``accept`` or ``reject`` and a reason, and keeps the rows decided."""
    pend = votes[votes["status"] == "pending"]
    out = pd.DataFrame(
        {
            "numbering": pend["numbering"],
            "landmark_id": pend["landmark_id"],
            "cluster": pend["cluster"],
            "share": pend["share"].round(4),
            "images": pend["images"],
            "runner_up": pend["runner_up"],
            "margin": pend["margin"].round(4),
            "decision": "",
            "reason": "",
        }
    )
    return out[list(REVIEW_COLUMNS)].reset_index(drop=True)


def load_vote_decisions(
    path: str | os.PathLike[str], votes: pd.DataFrame, warnings: list[str]
) -> dict[tuple[str, int], tuple[str, int]]:
    """``vote_decisions.csv`` -> ``{(numbering, landmark_id): (decision, row)}``.

    Errors name ``FILE:ROW``: a bad numbering, id or decision, a missing reason, a cluster other
    than the vote's (write a landmark override to set another cluster), conflicting duplicates.
    Rows for landmarks without a vote are warnings (stale), as are identical duplicates.
    """
    from hglv2.hierarchy.clusters import read_review_csv

    path = Path(path)
    df = read_review_csv(path, VOTE_DECISION_COLUMNS)
    voted = {
        (str(n), int(lid)): str(c)
        for n, lid, c in zip(votes["numbering"], votes["landmark_id"], votes["cluster"], strict=True)
    }
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for i, r in enumerate(df.itertuples(index=False)):
        row = i + 2
        numbering = r.numbering or "train"
        if numbering not in NUMBERINGS:
            raise InputError(f"{path}:{row}: numbering {numbering!r} is not one of {', '.join(NUMBERINGS)}")
        if not r.landmark_id.lstrip("-").isdigit():
            raise InputError(f"{path}:{row}: landmark_id {r.landmark_id!r} is not an integer")
        if r.decision not in VOTE_DECISIONS:
            raise InputError(
                f"{path}:{row}: decision {r.decision!r} is not one of {', '.join(VOTE_DECISIONS)}"
            )
        if not r.reason:
            raise InputError(f"{path}:{row}: empty reason (say why the vote is {r.decision}ed)")
        key = (numbering, int(r.landmark_id))
        if key not in voted:
            warnings.append(f"{path}:{row}: stale: landmark {r.landmark_id} ({numbering}) has no vote")
            continue
        if r.cluster != voted[key]:
            raise InputError(
                f"{path}:{row}: cluster {r.cluster!r} is not the vote's ({voted[key]!r}); "
                "to set another cluster write a landmark override"
            )
        if key in out:
            if out[key][0] != r.decision:
                raise InputError(f"{path}:{row}: conflicts with row {out[key][1]}")
            warnings.append(f"{path}:{row}: duplicate of row {out[key][1]}")
            continue
        out[key] = (r.decision, row)
    return out


def accepted_votes(votes: pd.DataFrame, decisions: Mapping[tuple[str, int], tuple[str, int]]) -> pd.DataFrame:
    """The votes that count: accepted automatically and not rejected, or accepted by a reviewer."""
    keep = []
    for n, lid, status in zip(votes["numbering"], votes["landmark_id"], votes["status"], strict=True):
        decision = decisions.get((str(n), int(lid)), (None, 0))[0]
        keep.append(decision == "accept" or (status == "accepted" and decision != "reject"))
    return votes[np.array(keep, dtype=bool)].reset_index(drop=True)


def apply_votes(table: pd.DataFrame, accepted: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Fill the cluster (and top) of the landmarks without one from the accepted votes, with
    provenance ``vote``; returns ``(table, landmarks changed)``. Known clusters never change."""
    out = table.copy()
    key = {
        (str(n), int(lid)): i
        for i, (n, lid) in enumerate(zip(out["numbering"], out["landmark_id"], strict=True))
    }
    changed = 0
    for r in accepted.itertuples(index=False):
        i = key.get((str(r.numbering), int(r.landmark_id)))
        if i is None or not pd.isna(out["hierarchical_label"].iat[i]):
            continue
        top = out["natural_or_human_made"].iat[i]
        if not pd.isna(top) and str(top) != str(r.top):
            continue  # the vote was restricted to the known top; a mismatch is a stale votes table
        out.loc[out.index[i], ["hierarchical_label", "natural_or_human_made", "provenance"]] = [
            r.cluster,
            r.top,
            "vote",
        ]
        changed += 1
    return out, changed


def open_landmarks(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a hierarchy table without a cluster (the landmarks the vote is for)."""
    return table[table["hierarchical_label"].isna()].reset_index(drop=True)


def read_votes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A votes table written by :func:`write_votes`, checked."""
    from hglv2.fileio import read_parquet_checked

    t = read_parquet_checked(path, VOTE_COLUMNS, "run `hglv2 hierarchy vote` first").to_pandas()
    return sort_votes(t[list(VOTE_COLUMNS)])


def write_votes(
    votes: pd.DataFrame, path: str | os.PathLike[str], review_csv: str | os.PathLike[str] | None
) -> None:
    """Write the votes table (Parquet) and, optionally, its review rows (CSV), both or neither."""
    import pyarrow as pa

    from hglv2.fileio import atomic_open, commit_together, write_parquet

    with commit_together():
        write_parquet(pa.Table.from_pandas(sort_votes(votes), preserve_index=False), path)
        if review_csv is not None:
            with atomic_open(review_csv) as fh:
                review_rows(votes).to_csv(fh, index=False, lineterminator="\n")


def apply_vote_files(
    table: pd.DataFrame,
    votes: str | os.PathLike[str],
    decisions: str | os.PathLike[str] | None,
) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """The apply stage's vote step on files: ``(table with accepted votes, counts, warnings)``.

    Only votes for landmarks still without a cluster count; the others are ``moot`` (a decision
    or an override labelled the landmark after the vote). Counts: ``votes``, ``moot``,
    ``accepted`` (automatically and not rejected, or by a reviewer), ``auto_accepted``,
    ``rejected``, ``pending`` (no decision yet), ``applied`` (labels changed)."""
    v = read_votes(votes)
    warnings: list[str] = []
    dec = load_vote_decisions(decisions, v, warnings) if decisions is not None else {}
    still_open = open_landmarks(table)
    open_keys = set(
        zip(still_open["numbering"].astype(str), still_open["landmark_id"].astype(int), strict=True)
    )
    keys = list(zip(v["numbering"].astype(str), v["landmark_id"].astype(int), strict=True))
    live = np.array([k in open_keys for k in keys], dtype=bool)
    acc = accepted_votes(v[live].reset_index(drop=True), dec)
    out, applied = apply_votes(table, acc)
    live_keys = [k for k, keep in zip(keys, live, strict=True) if keep]
    status = dict(zip(keys, v["status"], strict=True))
    decided = {k: d for k, (d, _) in dec.items()}
    counts = {
        "votes": len(v),
        "moot": int((~live).sum()),
        "accepted": len(acc),
        "auto_accepted": sum(1 for k in live_keys if status[k] == "accepted" and k not in decided),
        "rejected": sum(1 for k in live_keys if decided.get(k) == "reject"),
        "pending": sum(1 for k in live_keys if status[k] == "pending" and k not in decided),
        "applied": applied,
    }
    return out, counts, warnings


# --------------------------------------------------------------------------------------------
# the vote stage on files: plan (which landmarks, prompts and images), then finish (decide, write)


@dataclass
class VotePlan:
    """What the vote needs embedded: ``images`` (one row per image and landmark it votes for,
    :func:`voting_images`), the ``prompts``, the proposals as a ``table`` (hierarchy column names)
    and its ``open`` rows (no cluster)."""

    table: pd.DataFrame
    open: pd.DataFrame
    prompts: Prompts
    images: pd.DataFrame

    @property
    def image_ids(self) -> list[str]:
        return sorted(set(self.images["id"]))


def plan_vote(
    proposals: str | os.PathLike[str], clusters: str | os.PathLike[str], metadata: str | os.PathLike[str]
) -> VotePlan:
    """The landmarks the rules leave without a cluster (``proposals`` of ``hglv2 hierarchy
    propose``), the prompts (``clusters.csv`` and the rule-clustered supercategories) and the
    voting images of the GLDv2 files in ``metadata``.

    The reviews (decisions, overrides) are not read: the image step then never reruns when a
    reviewer edits them, and ``apply`` uses a vote only where the reviews left the cluster open.
    """
    from hglv2.fileio import read_parquet_checked
    from hglv2.gldv2.readers import metadata_files
    from hglv2.hierarchy.clusters import PROPOSAL_COLUMNS, load_clusters

    props = read_parquet_checked(
        proposals, PROPOSAL_COLUMNS, "run `hglv2 hierarchy propose` first"
    ).to_pandas()
    table = props.rename(columns={"cluster": "hierarchical_label", "top": "natural_or_human_made"})
    anchors = load_clusters(clusters)
    prompts = build_prompts(table, {a.label: a.cluster for a in anchors.anchors}, anchors.top_of)
    open_ = open_landmarks(table)
    return VotePlan(table, open_, prompts, voting_images(metadata_files(metadata), open_))


def _rows_with_features(plan: VotePlan, ids: Sequence[str]) -> tuple[pd.DataFrame, list[str | None]]:
    """The (image, landmark) rows whose image was embedded (``image`` = its feature row), and the
    known top of each row's landmark (None where unknown)."""
    pos = {i: k for k, i in enumerate(ids)}
    rows = plan.images[plan.images["id"].isin(pos)].reset_index(drop=True)
    rows["image"] = rows["id"].map(pos).astype("int64")
    t = plan.table
    tops = zip(t["numbering"], t["landmark_id"], t["natural_or_human_made"], strict=True)
    top = {(str(n), int(lid)): (None if pd.isna(v) else str(v)) for n, lid, v in tops}
    keys = zip(rows["numbering"], rows["landmark_id"], strict=True)
    return rows, [top.get((str(n), int(lid))) for n, lid in keys]


def finish_vote(
    plan: VotePlan,
    ids: Sequence[str],
    image_features: np.ndarray,
    text_features: np.ndarray,
    out: str | os.PathLike[str],
    review_csv: str | os.PathLike[str] | None,
    *,
    method: str = "argmax",
    accept_above: float | None = None,
) -> dict[str, Any]:
    """Decide per image, vote per landmark, write the votes (and the review rows); the summary."""
    rows, tops = _rows_with_features(plan, ids)
    if len(rows):
        feats = np.asarray(image_features)[rows["image"].to_numpy()]
        preds = predict_images(feats, text_features, plan.prompts, method=method, tops=tops)
        votes = votes_table(rows.assign(image=np.arange(len(rows))), preds, plan.prompts, accept_above)
    else:
        votes = empty_votes()
    write_votes(votes, out, review_csv)
    summary = vote_summary(votes, len(plan.open))
    summary.update(
        open_by_numbering={n: int((plan.open["numbering"] == n).sum()) for n in NUMBERINGS},
        prompts=len(plan.prompts.names),
        clusters_prompted=len(plan.prompts.clusters),
        method=method,
        accept_above=accept_above,
    )
    return summary
