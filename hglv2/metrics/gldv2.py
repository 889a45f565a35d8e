"""The official Google Landmarks v2 metrics, from the challenge's solution/submission CSV files.

Same definitions and file rules as the official metric code (``delf/python/datasets/
google_landmarks_dataset``), written independently:

**Retrieval, mAP@100.** For each query q of a subset (Public or Private) with ground-truth index
images G_q and predictions p_1..p_n (only the first 100 entries are read)::

    AP@100(q) = (1 / min(|G_q|, 100)) * sum_{i <= 100, p_i in G_q, p_i not seen before} P@i

where ``P@i`` = (number of distinct correct predictions in p_1..p_i) / i. A prediction repeated
later in the list is skipped but still occupies its position (so it lowers the precision of the
items after it). mAP@100 is the mean over *all* queries of the subset: a query without a
submission row (or with an empty one) scores 0.

**Recognition, GAP** (Global Average Precision, micro-AP): one (landmark, score) per query, all
predictions sorted by score (descending; ties by query id, then class, ascending)::

    GAP = (1 / M) * sum_i P(i) * rel(i)

with M = number of queries whose ground truth is not empty, ``P(i)`` the precision over the first
i predictions and ``rel(i)`` = 1 if prediction i is correct. Predictions for queries without
ground truth (non-landmark images) count as wrong (unless ``ignore_non_gt_test_images``).

**Files.** Solution: header then ``id,images|landmarks,Usage`` with Usage ``Public``, ``Private``
or ``Ignored`` (Ignored rows, whose ground truth is ``None`` in retrieval_solution_v2.1.csv, are
left out of the scores and their submission rows are skipped). Submission: header then
``id,images`` (space-separated ids, best first) or ``id,landmarks`` (``"<landmark> <score>"``);
empty lines are skipped, a repeated or unknown query id is an error.

**From embeddings.** :func:`retrieval_submission` writes the retrieval submission of a model
(the first 100 index images of each query) from a k-NN search in top-k mode
(:func:`hglv2.metrics.evaluate.nearest_neighbours`: exact, ties by index order, no full sort), so
the file metric reads exactly the ranking that ``evaluate(..., top_k=100)`` scores.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hglv2.errors import InputError
from hglv2.fileio import atomic_open

USAGES = ("Public", "Private", "Ignored")
MAX_PREDICTIONS = 100


def _rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a CSV file after its header (line 1)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)  # strict: an unclosed quote is an error
            header = next(reader, None)
            if header is None:
                raise InputError(f"{p}: empty file (expected a header line)")
            yield 1, [h.strip() for h in header]
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise InputError(f"{p}: malformed CSV ({exc})") from None


def _check_header(path, header: list[str], n: int, names: str) -> None:
    if len(header) < n:
        raise InputError(f"{path}:1: expected a header with columns {names}, got {','.join(header)!r}")


def detect_task(solution_path: str | os.PathLike[str]) -> str:
    """``"retrieval"`` if the solution's second column is ``images``, ``"recognition"`` if it is
    ``landmarks``."""
    for _, header in _rows(solution_path):
        col = header[1].lower() if len(header) > 1 else ""
        if col == "images":
            return "retrieval"
        if col == "landmarks":
            return "recognition"
        raise InputError(
            f"{solution_path}:1: second column must be 'images' (retrieval) or 'landmarks' "
            f"(recognition), got {col!r}"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def read_solution(path: str | os.PathLike[str], task: str) -> tuple[dict, dict, list[str]]:
    """Read a solution CSV through :func:`hglv2.gldv2.readers.read_file` (16-hex ids, unique, the
    right number of fields per line; errors name ``FILE:LINE``).

    Returns:
        ``(public, private, ignored)``: dicts query id -> list of ground-truth ids (index image ids
        for retrieval, int landmark ids for recognition; may be empty for recognition) and the list
        of ignored query ids.
    """
    if task not in ("retrieval", "recognition"):
        raise ValueError(f"unknown task {task!r}")
    from hglv2.gldv2.readers import read_file  # the one validating reader of the GLDv2 files

    name = Path(path).name
    t = read_file(path, "retrieval_solution" if task == "retrieval" else "recognition_solution")
    public: dict[str, list] = {}
    private: dict[str, list] = {}
    ignored: list[str] = []
    truths = t["images" if task == "retrieval" else "landmarks"].to_pylist()
    for row, (qid, truth, usage) in enumerate(
        zip(t["id"].to_pylist(), truths, t["usage"].to_pylist(), strict=True)
    ):
        line = row + 2
        if usage == "Ignored":
            ignored.append(qid)
            continue
        if usage not in USAGES:
            raise InputError(f"{name}:{line}: Usage {usage!r} is not one of {', '.join(USAGES)}")
        if task == "retrieval" and not truth:
            raise InputError(f"{name}:{line}: {usage} query {qid!r} has no ground-truth images")
        (public if usage == "Public" else private)[qid] = list(truth)
    return public, private, ignored


def read_submission(
    path: str | os.PathLike[str], task: str, public_ids, private_ids, ignored_ids
) -> tuple[dict, dict]:
    """Read a submission CSV for the queries of a solution.

    Returns:
        ``(public, private)`` dicts query id -> prediction: a list of index ids (retrieval) or
        ``{"class": int, "score": float}`` (recognition). Rows with an empty prediction and rows
        of ignored queries are skipped.
    """
    public_ids, private_ids, ignored_ids = set(public_ids), set(private_ids), set(ignored_ids)
    public: dict[str, Any] = {}
    private: dict[str, Any] = {}
    seen: set[str] = set()
    rows = _rows(path)
    _, header = next(rows)
    _check_header(path, header, 2, "id,images|landmarks")
    expected = "landmarks" if task == "recognition" else "images"
    if header[0].lower() != "id" or header[1].lower() != expected:
        raise InputError(f"{path}:1: expected the header id,{expected}, got {','.join(header)!r}")
    for line, row in rows:
        if not row:
            continue
        qid = row[0].strip()
        if qid in seen:
            raise InputError(f"{path}:{line}: query {qid!r} is repeated")
        seen.add(qid)
        if qid in ignored_ids:
            continue
        if len(row) < 2 or not row[1].strip():
            continue
        items = row[1].split()
        if task == "recognition":
            if len(items) != 2:
                raise InputError(f"{path}:{line}: expected '<landmark_id> <score>', got {row[1]!r}")
            try:
                pred: Any = {"class": int(items[0]), "score": float(items[1])}
            except ValueError:
                raise InputError(f"{path}:{line}: expected '<landmark_id> <score>', got {row[1]!r}") from None
            if not math.isfinite(pred["score"]):
                raise InputError(f"{path}:{line}: score {items[1]!r} is not finite")
        else:
            pred = items
        if qid in public_ids:
            public[qid] = pred
        elif qid in private_ids:
            private[qid] = pred
        else:
            raise InputError(f"{path}:{line}: query {qid!r} is not in the solution")
    return public, private


def mean_average_precision(
    predictions: dict, solution: dict, max_predictions: int = MAX_PREDICTIONS
) -> float:
    """GLDv2 retrieval mAP@k (module docstring); NaN for an empty solution."""
    if not solution:
        return math.nan
    total = 0.0
    for qid, pred in predictions.items():
        if qid not in solution:
            raise InputError(f"query {qid!r} is not part of the solution")
        truth = set(solution[qid])
        seen: set[str] = set()
        hits, ap = 0, 0.0
        for i, item in enumerate(pred[:max_predictions], 1):
            if item in seen:
                continue
            seen.add(item)
            if item in truth:
                hits += 1
                ap += hits / i
        total += ap / min(len(solution[qid]), max_predictions)
    return total / len(solution)


def mean_precisions(predictions: dict, solution: dict, max_predictions: int = MAX_PREDICTIONS) -> np.ndarray:
    """Mean over the predicted queries of P@1..P@max_predictions (duplicates skipped), as the
    official ``MeanPrecisions`` (its mean runs over the solution's size, missing rows count 0)."""
    prec = np.zeros((len(solution), max_predictions))
    for row, (qid, pred) in enumerate(predictions.items()):
        if qid not in solution:
            raise InputError(f"query {qid!r} is not part of the solution")
        truth = set(solution[qid])
        seen: set[str] = set()
        hits = 0
        for i in range(max_predictions):
            if i < len(pred) and pred[i] not in seen:
                seen.add(pred[i])
                hits += pred[i] in truth
            prec[row, i] = hits / (i + 1)
    return prec.mean(axis=0) if len(solution) else np.full(max_predictions, math.nan)


def mean_median_position(
    predictions: dict, solution: dict, max_predictions: int = MAX_PREDICTIONS
) -> tuple[float, float]:
    """Mean and median position of the first correct prediction (max_predictions + 1 if none)."""
    pos = np.full(len(solution), max_predictions + 1, dtype=np.float64)
    for row, (qid, pred) in enumerate(predictions.items()):
        if qid not in solution:
            raise InputError(f"query {qid!r} is not part of the solution")
        truth = set(solution[qid])
        for i, item in enumerate(pred[:max_predictions], 1):
            if item in truth:
                pos[row] = i
                break
    if not len(pos):
        return math.nan, math.nan
    return float(pos.mean()), float(np.median(pos))


def global_average_precision(
    predictions: dict, solution: dict, ignore_non_gt_test_images: bool = False
) -> float:
    """GAP (micro-AP) of recognition predictions; NaN if no query has ground truth."""
    n_pos = sum(1 for v in solution.values() if v)
    if n_pos == 0:
        return math.nan
    items = sorted(predictions.items(), key=lambda kv: (-kv[1]["score"], kv[0], kv[1]["class"]))
    gap, seen, correct = 0.0, 0, 0
    for qid, pred in items:
        truth = solution[qid]
        if ignore_non_gt_test_images and not truth:
            continue
        seen += 1
        if pred["class"] in truth:
            correct += 1
            gap += correct / seen
    return gap / n_pos


def top1_accuracy(predictions: dict, solution: dict) -> float:
    """Fraction of queries with ground truth whose prediction is correct (missing = wrong)."""
    with_gt = [q for q, v in solution.items() if v]
    if not with_gt:
        return math.nan
    return sum(1 for q in with_gt if q in predictions and predictions[q]["class"] in solution[q]) / len(
        with_gt
    )


def evaluate_files(
    solution_path: str | os.PathLike[str], submission_path: str | os.PathLike[str], task: str | None = None
) -> dict[str, Any]:
    """Score a submission file against a solution file, for the Public and Private subsets.

    Returns:
        ``{"task", "n_public", "n_private", "n_ignored", "public": {...}, "private": {...}}``; the
        subsets hold ``mAP@100``, ``P@1/5/10/50/100``, ``mean_position``, ``median_position``
        (retrieval) or ``GAP``, ``top1_accuracy`` (recognition).
    """
    task = task or detect_task(solution_path)
    public, private, ignored = read_solution(solution_path, task)
    pub_pred, priv_pred = read_submission(submission_path, task, public, private, ignored)
    out: dict[str, Any] = {
        "task": task,
        "n_public": len(public),
        "n_private": len(private),
        "n_ignored": len(ignored),
    }
    for name, sol, pred in (("public", public, pub_pred), ("private", private, priv_pred)):
        if task == "retrieval":
            prec = mean_precisions(pred, sol)
            mean_pos, median_pos = mean_median_position(pred, sol)
            res = {"mAP@100": mean_average_precision(pred, sol)}
            res.update({f"P@{k}": float(prec[k - 1]) for k in (1, 5, 10, 50, 100)})
            res.update({"mean_position": mean_pos, "median_position": median_pos})
        else:
            res = {"GAP": global_average_precision(pred, sol), "top1_accuracy": top1_accuracy(pred, sol)}
        out[name] = res
    return out


def retrieval_submission(
    path: str | os.PathLike[str],
    query_ids,
    query_embeddings,
    index_ids,
    index_embeddings,
    k: int = MAX_PREDICTIONS,
    *,
    device=None,
    memory_mb: int = 1024,
) -> None:
    """Write a GLDv2 retrieval submission (``id,images``; the first ``k`` index ids of each query,
    best first, space-separated) from embeddings, by top-k search (dot product; normalise the
    embeddings for cosine). Rows follow ``query_ids``. The file is written atomically."""
    from hglv2.metrics.evaluate import nearest_neighbours

    query_ids = [str(x) for x in query_ids]
    index_ids = [str(x) for x in index_ids]
    for name, ids, emb in (("query", query_ids, query_embeddings), ("index", index_ids, index_embeddings)):
        if len(ids) != len(emb):
            raise InputError(f"{len(ids)} {name} ids but {len(emb)} {name} embeddings")
        for row, x in enumerate(ids):
            if not x or any(c in x for c in ', \t\r\n"'):
                raise InputError(f"{name} id at row {row} is empty or holds a separator: {x!r}")
    try:
        top = nearest_neighbours(query_embeddings, index_embeddings, k, device=device, memory_mb=memory_mb)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with atomic_open(path, "w", newline="") as fh:
        fh.write("id,images\n")
        for qid, row in zip(query_ids, top, strict=True):
            fh.write(f"{qid},{' '.join(index_ids[j] for j in row)}\n")
