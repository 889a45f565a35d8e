"""Evaluation conventions: hglv2's default and the SupRank authors' (``hap_convention``).

========================  =================================  =====================================
                          ``"hglv2"`` (default)              ``"reference"``
========================  =================================  =====================================
H-AP counts ``N_q(v)``    ranked gallery items only (the     the query itself is counted too, at
                          query excluded from its ranking    its own level (the number of its
                          is not counted; DESIGN,            known columns), when the query set
                          "Relevance")                       is the gallery
query without positives   left out of the metric's mean      scored 0 and kept in the mean (every
                          and counted in ``n_skipped_*``     metric: AP, mAP@R, mAP@100, R@k, P@k,
                                                             H-AP, NDCG, ASI)
========================  =================================  =====================================

The reference is the authors' SOP / iNaturalist / DyML evaluation: ``suprank/datasets/
base_dataset.py`` (``get_all_relevance``: the label matrix of a chunk of queries against the
*whole* set, the query included, gives the per-level counts), ``suprank/engine/
compute_relevance_on_the_fly.py`` (``get_relevances_pop``: ``w(v) / count(v)``; ``map``
likewise), ``suprank/engine/metrics.py`` (``hap``: H-rank from ``min(rel_k, rel_j)``, normalised
by the sum of the relevances of the ranked items, the query excluded; ``ap``: ``ap[R == 0] = 0``)
and ``suprank/engine/accuracy_calculator.py`` (means over every query). Values agree with that
code query by query except where it is fragile, which hglv2 does not reproduce: it drops the first
neighbour to exclude the query (positionally; hglv2 excludes it by index), it matches levels by
float equality of their relevance values (two levels with equal values are counted twice), a query
sharing no level with anything gives 0/0 there (0 here), and with a separate gallery (DyML) it
takes the counts from the query set (here: from the gallery).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hglv2.metrics.evaluate import (
    BYTES_PER_SCORE,
    _as_embeddings,
    evaluate,
    per_query_values,
    reduce_per_query,
)
from hglv2.metrics.labels import as_label_matrix, encode_labels, match_mask, popcount, relevance_table
from hglv2.metrics.ranking import hierarchical_ap_from_ranks, level_counts_from, rank_relevant

HAP_CONVENTIONS = ("hglv2", "reference")

__all__ = ["HAP_CONVENTIONS", "evaluate_convention", "reference_hap"]


def reference_hap(
    query_embeddings,
    query_labels,
    gallery_embeddings=None,
    gallery_labels=None,
    relevance: str = "pop",
    alpha: float | Sequence[float] = 1.0,
    memory_mb: int = 1024,
) -> np.ndarray:
    """Per-query H-AP with the query counted in its own level (module table); (Q,) float64, NaN
    where no ranked item shares a level with the query.

    ``rel_q(v) = w(v) / (N_q(v) + [v = s_q])`` for ``pop`` (``s_q`` = the number of known label
    columns of query q, its level with itself; only when the query set is the gallery), and
    ``H-AP_q = sum_k H-rank(k) / k / sum_k rel_q(k)`` over the ranked items as in the default.
    """
    q_emb = _as_embeddings(query_embeddings, "query_embeddings")
    q_lab = as_label_matrix(query_labels, "query_labels")
    same = gallery_embeddings is None and gallery_labels is None
    g_emb = q_emb if same else _as_embeddings(gallery_embeddings, "gallery_embeddings")
    g_lab = q_lab if same else as_label_matrix(gallery_labels, "gallery_labels")
    n_q, n_g, n_levels = q_emb.shape[0], g_emb.shape[0], q_lab.shape[1]
    n_ranked = n_g - 1 if same else n_g
    q_codes, g_codes_t = encode_labels(q_lab, g_lab)
    self_level = torch.from_numpy((q_lab >= 0).sum(1).astype(np.int64))
    chunk = max(1, (int(memory_mb) << 20) // (max(n_g, 1) * BYTES_PER_SCORE))
    out = []
    for lo in range(0, n_q, chunk):
        hi = min(lo + chunk, n_q)
        scores = q_emb[lo:hi] @ g_emb.T
        tags = match_mask(q_codes[lo:hi], g_codes_t)
        rows, ranks, masks = rank_relevant(scores, tags, torch.arange(lo, hi) if same else None)
        levels = popcount(masks.to(torch.uint8))
        counts = level_counts_from(rows, levels, hi - lo, n_levels, n_ranked)
        if same:
            own = self_level[lo:hi]
            idx = torch.arange(hi - lo)[own > 0]
            counts[idx, own[own > 0]] += 1
        rel = relevance_table(counts, relevance, alpha)
        out.append(hierarchical_ap_from_ranks(rows, ranks, levels, rel))
    return torch.cat(out).numpy()


def evaluate_convention(
    query_embeddings,
    query_labels,
    gallery_embeddings=None,
    gallery_labels=None,
    *,
    hap_convention: str = "hglv2",
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`hglv2.metrics.evaluate` under a convention of the module table.

    ``"hglv2"`` is exactly :func:`~hglv2.metrics.evaluate`. ``"reference"`` takes its per-query
    values, replaces H-AP by :func:`reference_hap`, scores undefined values 0 and averages over
    every query; the counts ``n_queries_level{l}`` / ``n_skipped_level{l}`` still say how many
    queries had / lacked a positive (the latter are the ones scored 0).
    """
    if hap_convention not in HAP_CONVENTIONS:
        raise ValueError(f"hap_convention must be one of {HAP_CONVENTIONS}, got {hap_convention!r}")
    if hap_convention == "hglv2":
        return evaluate(query_embeddings, query_labels, gallery_embeddings, gallery_labels, **kwargs)
    reduce = kwargs.pop("reduce", True)
    per = evaluate(query_embeddings, query_labels, gallery_embeddings, gallery_labels, reduce=False, **kwargs)
    per["H-AP"] = reference_hap(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        relevance=kwargs.get("relevance", "pop"),
        alpha=kwargs.get("alpha", 1.0),
        memory_mb=kwargs.get("memory_mb", 1024),
    )
    if not reduce:
        return per_query_values(per, "zero")
    n_gallery = (len(query_labels) - 1) if gallery_embeddings is None else len(gallery_embeddings)
    out: dict[str, Any] = {"n_queries": len(per["n_relevant"]), "n_gallery": int(n_gallery)}
    out.update(reduce_per_query(per, no_positive="zero"))
    return out
