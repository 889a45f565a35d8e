"""Brute-force oracles for the metrics tests, written straight from the definitions with loops
(imported by the other test_metrics_* files).

Nothing here is shared with the implementation: ranking is a Python sort on (-score, index),
levels are counted column by column, and every metric loops over positions.
"""

from __future__ import annotations

import math

import numpy as np


def ranking(scores_row, exclude=None):
    """Gallery indices in ranked order: decreasing score, ties by increasing index."""
    idx = [i for i in range(len(scores_row)) if i != exclude]
    return sorted(idx, key=lambda i: (-float(scores_row[i]), i))


def level(q, g):
    """Number of equal known columns."""
    return sum(1 for a, b in zip(q, g, strict=True) if a >= 0 and b >= 0 and a == b)


def ap(rel):
    """rel: list of 0/1 in ranked order."""
    r = sum(rel)
    if r == 0:
        return math.nan
    hits, s = 0, 0.0
    for i, x in enumerate(rel, 1):
        if x:
            hits += 1
            s += hits / i
    return s / r


def map_at_r(rel):
    r = sum(rel)
    if r == 0:
        return math.nan
    hits, s = 0, 0.0
    for i, x in enumerate(rel[:r], 1):
        if x:
            hits += 1
            s += hits / i
    return s / r


def map_at_k(rel, k):
    r = sum(rel)
    if r == 0:
        return math.nan
    hits, s = 0, 0.0
    for i, x in enumerate(rel[:k], 1):
        if x:
            hits += 1
            s += hits / i
    return s / min(r, k)


def recall_rate(rel, k):
    return math.nan if sum(rel) == 0 else float(any(rel[:k]))


def precision(rel, k):
    return math.nan if sum(rel) == 0 else sum(rel[:k]) / k


def relevance_values(levels, n_levels, kind="pop", alpha=1.0):
    """rel value per level 0..L for one query, from the ranked list of levels."""
    w = [0.0] + [float(v) ** alpha for v in range(1, n_levels + 1)]
    count = [sum(1 for x in levels if x == v) for v in range(n_levels + 1)]
    rel = [0.0] * (n_levels + 1)
    for v in range(1, n_levels + 1):
        if kind == "pop":
            rel[v] = w[v] / count[v] if count[v] else 0.0
        else:
            total = 0.0
            for m in range(1, v + 1):
                at_least = sum(count[m:])
                total += w[m] / at_least if at_least else 0.0
            rel[v] = total
    return rel


def hap(levels, n_levels, kind="pop", alpha=1.0):
    """H-AP from the HAPPIER formula, with per-item relevance values."""
    relv = relevance_values(levels, n_levels, kind, alpha)
    rel = [relv[v] for v in levels]
    den = sum(rel[k] for k in range(len(levels)) if levels[k] > 0)
    if not any(v > 0 for v in levels) or den <= 0:
        return math.nan
    num = 0.0
    for k in range(len(levels)):
        if levels[k] == 0:
            continue
        hrank = rel[k] + sum(min(rel[j], rel[k]) for j in range(k))
        num += hrank / (k + 1)
    return num / den


def ndcg(levels, k=None):
    if not any(v > 0 for v in levels):
        return math.nan
    k = len(levels) if k is None else min(k, len(levels))
    dcg = sum((2**v - 1) / math.log2(i + 2) for i, v in enumerate(levels[:k]))
    ideal = sorted(levels, reverse=True)
    idcg = sum((2**v - 1) / math.log2(i + 2) for i, v in enumerate(ideal[:k]))
    return dcg / idcg


def asi(levels):
    big_r = sum(1 for v in levels if v > 0)
    if big_r == 0:
        return math.nan
    ideal = sorted(levels, reverse=True)
    total = 0.0
    for i in range(1, big_r + 1):
        top, best = levels[:i], ideal[:i]
        inter = sum(min(top.count(v), best.count(v)) for v in set(best) | set(top) if v > 0)
        total += inter / i
    return total / big_r


def evaluate_oracle(
    q_emb, q_lab, g_emb=None, g_lab=None, recall_at=(1, 10, 100), kind="pop", alpha=1.0, ndcg_at=None
):
    """Per-query dict of lists, same keys as evaluate(..., reduce=False)."""
    same = g_emb is None
    if same:
        g_emb, g_lab = q_emb, q_lab
    q_emb = np.asarray(q_emb, dtype=np.float64)
    g_emb = np.asarray(g_emb, dtype=np.float64)
    q_lab = np.asarray(q_lab).reshape(len(q_lab), -1)
    g_lab = np.asarray(g_lab).reshape(len(g_lab), -1)
    n_levels = q_lab.shape[1]
    out: dict[str, list] = {}

    def put(key, value):
        out.setdefault(key, []).append(value)

    for qi in range(len(q_emb)):
        scores = [float(np.dot(q_emb[qi], g)) for g in g_emb]
        order = ranking(scores, exclude=qi if same else None)
        levels = [level(q_lab[qi], g_lab[j]) for j in order]
        for lev in range(n_levels):
            rel = [1 if (q_lab[qi, lev] >= 0 and q_lab[qi, lev] == g_lab[j, lev]) else 0 for j in order]
            put(f"AP_level{lev}", ap(rel))
            put(f"mAP@R_level{lev}", map_at_r(rel))
            put(f"mAP@100_level{lev}", map_at_k(rel, 100))
            for k in recall_at:
                put(f"R@{k}_level{lev}", recall_rate(rel, k))
                put(f"P@{k}_level{lev}", precision(rel, k))
            put(f"n_positives_level{lev}", sum(rel))
        put("H-AP", hap(levels, n_levels, kind, alpha))
        put("NDCG", ndcg(levels))
        if ndcg_at is not None:
            put(f"NDCG@{ndcg_at}", ndcg(levels, ndcg_at))
        put("ASI", asi(levels))
    return out


# --- hand-computed checks of the oracle itself --------------------------------------------------
def test_oracle_hand_cases():
    # positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert math.isclose(ap([1, 0, 1, 0]), (1 + 2 / 3) / 2)
    assert math.isclose(map_at_r([1, 0, 1, 0]), 1 / 2)
    assert math.isclose(map_at_k([0, 1, 1], 1), 0.0)
    assert math.isclose(map_at_k([0, 1, 1], 2), (1 / 2) / 2)
    assert precision([0, 1, 1], 2) == 0.5 and recall_rate([0, 1, 1], 1) == 0.0
    assert ranking([1.0, 2.0, 2.0, 0.5]) == [1, 2, 0, 3]
    assert ranking([1.0, 2.0, 2.0], exclude=1) == [2, 0]
    assert level([1, 5, 7], [1, 6, 7]) == 2 and level([-1, 5], [-1, 5]) == 1
    # NDCG: levels [1, 2] vs ideal [2, 1]
    dcg = 1 / 1 + 3 / math.log2(3)
    idcg = 3 / 1 + 1 / math.log2(3)
    assert math.isclose(ndcg([1, 2]), dcg / idcg)
    # ASI: levels [1, 2, 0] -> R = 2; SI@1 = 0, SI@2 = 2/2 -> ASI = (0 + 1) / 2
    assert math.isclose(asi([1, 2, 0]), 0.5)
    # H-AP with one level equals AP
    assert math.isclose(hap([1, 0, 1, 0], 1), ap([1, 0, 1, 0]))
