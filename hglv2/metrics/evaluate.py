"""Streaming evaluator: every hglv2 metric for a set of queries against a gallery.

Queries are processed in chunks: for each chunk the (chunk, N) float32 score matrix is computed
with one torch matmul, the relevant items are ranked exactly (:func:`hglv2.metrics.ranking.rank_relevant`)
and every metric is computed from their ranks. Memory is bounded by ``memory_mb`` (about 48 bytes
per score), independent of the number of queries, so Q = 10,000 queries against N = 1,000,000
gallery items runs in a few GB.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hglv2.metrics import _fused
from hglv2.metrics.ranking import (
    SPARSE_MAX_RELEVANT,
    _rank_chunk,
    asi_from_ranks,
    binary_metrics,
    hierarchical_ap_from_ranks,
    level_counts_from,
    ndcg_from_ranks,
)
from hglv2.metrics.relevance import (
    RELEVANCES,
    as_label_matrix,
    encode_labels,
    level_weights,
    match_mask,
    popcount,
    relevance_table,
)

MAP_AT = 100  # GLDv2 retrieval metric
BYTES_PER_SCORE = 48  # peak working memory per (query, gallery) pair, measured


def _as_embeddings(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: embeddings must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {tuple(t.shape)}")
    t = t.to(torch.float32)
    bad = ~torch.isfinite(t).all(1)
    if bad.any():
        raise ValueError(f"{name}: row {int(bad.nonzero()[0, 0])}: embedding is not finite (NaN or inf)")
    return t.contiguous()


def _metric_names(n_levels: int, recall_at: Sequence[int], ndcg_at: int | None) -> list[str]:
    names = []
    for lev in range(n_levels):
        names += [f"AP_level{lev}", f"mAP@R_level{lev}", f"mAP@{MAP_AT}_level{lev}"]
        names += [f"R@{k}_level{lev}" for k in recall_at]
        names += [f"P@{k}_level{lev}" for k in recall_at]
    names += ["H-AP", "NDCG", "ASI"]
    if ndcg_at is not None:
        names.append(f"NDCG@{ndcg_at}")
    return names


def _keeps_torch_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Restore torch's CPU thread count after ``fn``.

    numba's OpenMP threading layer (the fused kernels) resets the OpenMP thread count of the calling
    thread, so without this a training loop that evaluates would run its next steps with the
    machine's default thread count instead of the one it asked for.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@_keeps_torch_threads
def evaluate(
    query_embeddings,
    query_labels,
    gallery_embeddings=None,
    gallery_labels=None,
    recall_at: Sequence[int] = (1, 10, 100),
    relevance: str = "pop",
    alpha: float | Sequence[float] = 1.0,
    reduce: bool = True,
    *,
    ndcg_at: int | None = None,
    memory_mb: int = 1024,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    method: str = "auto",
    backend: str = "auto",
) -> dict[str, Any]:
    """Evaluate retrieval with binary per-level and hierarchical metrics.

    Args:
        query_embeddings: (Q, D) float array or tensor. Scores are dot products (use L2-normalised
            embeddings for cosine similarity), computed in float32.
        query_labels: (Q, L) int labels, column 0 finest; (Q,) means L = 1. Negative = unknown.
        gallery_embeddings, gallery_labels: (N, D) and (N, L); both None means the query set is
            the gallery and each query is excluded from its own ranking *by index*. When a
            gallery is given nothing is excluded (a query present in the gallery counts as its
            own positive).
        recall_at: k values for ``R@k`` (recall rate) and ``P@k``.
        relevance: ``"pop"`` or ``"map"`` relevance for H-AP (:mod:`hglv2.metrics.relevance`).
        alpha: level weight exponent ``w(v) = v ** alpha`` or a sequence of L weights.
        reduce: True -> means over queries (floats) and query counts (ints); False -> per-query
            (Q,) float64 arrays, NaN where a metric is undefined, plus ``n_positives_level{l}``.
        ndcg_at: also report ``NDCG@{k}`` (``NDCG`` is always over the full ranking).
        memory_mb: working-memory budget that sets the query chunk size.
        chunk_size: queries per chunk (overrides ``memory_mb``).
        device: where the score matmul runs (ranking runs on CPU).
        method: ranking method of :func:`~hglv2.metrics.ranking.rank_relevant`.
        backend: ``"numba"`` (fused one-pass kernel), ``"torch"`` (vectorised reference) or
            ``"auto"`` (numba when installed). Both give the same numbers.

    Returns:
        dict with ``AP_level{l}``, ``mAP@R_level{l}``, ``mAP@100_level{l}``, ``R@{k}_level{l}``,
        ``P@{k}_level{l}``, ``H-AP``, ``NDCG``, ``ASI`` and, when reduced, ``n_queries``,
        ``n_gallery``, ``n_queries_level{l}`` / ``n_skipped_level{l}`` (queries with / without a
        positive in column l; skipped ones are left out of that level's means) and
        ``n_queries_multilevel`` / ``n_skipped_multilevel`` (the same for H-AP, NDCG, ASI: queries
        with / without any item of level >= 1).
    """
    if relevance not in RELEVANCES:
        raise ValueError(f"relevance must be one of {RELEVANCES}, got {relevance!r}")
    recall_at = tuple(dict.fromkeys(int(k) for k in recall_at))
    if any(k < 1 for k in recall_at):
        raise ValueError("recall_at values must be >= 1")
    q_emb = _as_embeddings(query_embeddings, "query_embeddings")
    q_lab = as_label_matrix(query_labels, "query_labels")
    if q_lab.shape[0] != q_emb.shape[0]:
        raise ValueError(f"query_labels has {q_lab.shape[0]} rows but query_embeddings has {q_emb.shape[0]}")
    same = gallery_embeddings is None and gallery_labels is None
    if same:
        g_emb, g_lab = q_emb, q_lab
    else:
        if gallery_embeddings is None or gallery_labels is None:
            raise ValueError("give both gallery_embeddings and gallery_labels, or neither")
        g_emb = _as_embeddings(gallery_embeddings, "gallery_embeddings")
        g_lab = as_label_matrix(gallery_labels, "gallery_labels")
        if g_lab.shape[0] != g_emb.shape[0]:
            raise ValueError(
                f"gallery_labels has {g_lab.shape[0]} rows but gallery_embeddings has {g_emb.shape[0]}"
            )
    if q_emb.shape[1] != g_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: queries {q_emb.shape[1]}, gallery {g_emb.shape[1]}")
    n_levels = q_lab.shape[1]
    level_weights(n_levels, alpha)  # validate early
    n_q, n_g = q_emb.shape[0], g_emb.shape[0]
    if n_q == 0:
        raise ValueError("query_embeddings: no queries")
    n_ranked = n_g - 1 if same else n_g
    if n_ranked < 1:
        raise ValueError("the gallery has no item to rank")

    q_codes, g_codes_t = encode_labels(q_lab, g_lab)
    if chunk_size is None:
        chunk_size = max(1, (int(memory_mb) << 20) // (max(n_g, 1) * BYTES_PER_SCORE))
    chunk_size = int(min(max(chunk_size, 1), max(n_q, 1)))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    g_dev = g_emb.to(dev)

    if backend == "auto":
        backend = "numba" if _fused.HAVE_NUMBA else "torch"
    if backend not in ("numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" and not _fused.HAVE_NUMBA:
        raise ValueError("backend='numba' needs the numba package")
    chunk_fn = _chunk_numba if backend == "numba" else _chunk_torch
    ctx = {
        "n_levels": n_levels,
        "n_ranked": n_ranked,
        "recall_at": recall_at,
        "ndcg_at": ndcg_at,
        "relevance": relevance,
        "alpha": alpha,
    }
    if backend == "numba":
        ctx["tables"] = _fused.tables(n_ranked)
        ctx["w"] = level_weights(n_levels, alpha)
        ctx["g_codes"] = np.ascontiguousarray(g_codes_t.numpy().T)  # (N, L): one cache line per item
    # upper bound on the relevant items of each query: sum over columns of the gallery count of its label
    bound = np.zeros(n_q, dtype=np.int64)
    for col in range(n_levels):
        g_col = g_codes_t[col].numpy()
        counts = np.bincount(g_col[g_col >= 0], minlength=max(int(q_codes[:, col].max()) + 1, 0))
        q_col = q_codes[:, col].numpy()
        ok = (q_col >= 0) & (q_col < len(counts))
        bound[ok] += counts[q_col[ok]]

    names = _metric_names(n_levels, recall_at, ndcg_at)
    per_query: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    n_pos: dict[int, list[torch.Tensor]] = {lev: [] for lev in range(n_levels)}
    n_rel: list[torch.Tensor] = []
    for lo in range(0, n_q, chunk_size):
        hi = min(lo + chunk_size, n_q)
        scores = (q_emb[lo:hi].to(dev) @ g_dev.T).float().cpu()
        self_index = torch.arange(lo, hi) if same else None
        chunk_method = method
        if method == "auto":
            # an upper bound on the relevant items (per-column label counts) picks the ranking
            many = bool((bound[lo:hi] > SPARSE_MAX_RELEVANT).any())
            chunk_method = "sort" if many else ("search" if backend == "numba" else "auto")
        qc = q_codes[lo:hi]
        ctx["q_codes"], ctx["self_index"] = qc, self_index
        if backend == "numba" and chunk_method == "search":
            if torch.isnan(scores).any():
                raise ValueError("scores contain NaN (with finite embeddings: the dot products overflowed)")
            ranked = ("score_bits", scores.contiguous().view(torch.int32))
        else:
            ranked = _rank_chunk(
                scores,
                lambda qc=qc: match_mask(qc, g_codes_t),
                self_index,
                chunk_method,
                keys_only=backend == "numba",
            )
        del scores
        chunk_fn(ranked, hi - lo, ctx, per_query, n_pos, n_rel)

    arrays = {n: torch.cat(v).numpy() for n, v in per_query.items()}
    pos = {lev: torch.cat(v).numpy() for lev, v in n_pos.items()}
    rel_total = torch.cat(n_rel).numpy()
    if not reduce:
        out: dict[str, Any] = dict(arrays)
        for lev in range(n_levels):
            out[f"n_positives_level{lev}"] = pos[lev]
        out["n_relevant"] = rel_total
        return out
    out = {"n_queries": int(n_q), "n_gallery": int(n_ranked)}
    for name, arr in arrays.items():
        ok = ~np.isnan(arr)
        out[name] = float(arr[ok].mean()) if ok.any() else float("nan")
    for lev in range(n_levels):
        used = int((pos[lev] > 0).sum())
        out[f"n_queries_level{lev}"] = used
        out[f"n_skipped_level{lev}"] = int(n_q - used)
    used = int((rel_total > 0).sum())
    out["n_queries_multilevel"] = used
    out["n_skipped_multilevel"] = int(n_q - used)
    return out


def _chunk_torch(ranked, c, ctx, per_query, n_pos, n_rel) -> None:
    """Reference path: vectorised torch metrics on the ragged list of relevant items."""
    n_levels, recall_at, ndcg_at = ctx["n_levels"], ctx["recall_at"], ctx["ndcg_at"]
    if ranked[0] == "dense":
        st = ranked[1]
        rows, p = torch.nonzero(st, as_tuple=True)
        ranks, masks = p + 1, st[rows, p].to(torch.int64)
    else:
        rows, ranks, masks = ranked[1], ranked[2], ranked[3]
    for lev in range(n_levels):
        sel = ((masks >> lev) & 1).bool()
        res = binary_metrics(rows[sel], ranks[sel], c, recall_at, recall_at, (MAP_AT,))
        per_query[f"AP_level{lev}"].append(res["AP"])
        per_query[f"mAP@R_level{lev}"].append(res["mAP@R"])
        per_query[f"mAP@{MAP_AT}_level{lev}"].append(res[f"mAP@{MAP_AT}"])
        for k in recall_at:
            per_query[f"R@{k}_level{lev}"].append(res[f"R@{k}"])
            per_query[f"P@{k}_level{lev}"].append(res[f"P@{k}"])
        n_pos[lev].append(res["n_positives"])
    levels = popcount(masks.to(torch.uint8))
    counts = level_counts_from(rows, levels, c, n_levels, ctx["n_ranked"])
    rel = relevance_table(counts, ctx["relevance"], ctx["alpha"])
    per_query["H-AP"].append(hierarchical_ap_from_ranks(rows, ranks, levels, rel))
    per_query["NDCG"].append(ndcg_from_ranks(rows, ranks, levels, counts))
    if ndcg_at is not None:
        per_query[f"NDCG@{ndcg_at}"].append(ndcg_from_ranks(rows, ranks, levels, counts, ndcg_at))
    per_query["ASI"].append(asi_from_ranks(rows, ranks, levels, counts))
    n_rel.append(counts[:, 1:].sum(1))


def _chunk_numba(ranked, c, ctx, per_query, n_pos, n_rel) -> None:
    """Fast path: one fused numba pass per query (hglv2.metrics._fused)."""
    n_levels, recall_at, ndcg_at = ctx["n_levels"], ctx["recall_at"], ctx["ndcg_at"]
    n_ranked = ctx["n_ranked"]
    ks = np.asarray(recall_at, dtype=np.int64)
    nk = len(recall_at)
    per = 3 + 2 * nk
    out = np.empty((c, n_levels * per + 4), dtype=np.float64)
    counts = np.empty((c, n_levels + 1), dtype=np.int64)
    disc, disc_prefix, harm = ctx["tables"]
    cutoff = n_ranked if ndcg_at is None else min(int(ndcg_at), n_ranked)
    args = (
        n_levels,
        n_ranked,
        ks,
        MAP_AT,
        cutoff,
        0 if ctx["relevance"] == "pop" else 1,
        ctx["w"],
        disc,
        disc_prefix,
        harm,
        out,
        counts,
    )
    kernel = _fused.fused_metrics_keys if ranked[0] == "keys" else _fused.fused_metrics_search
    self_index = ctx["self_index"]
    me = np.full(c, -1, dtype=np.int64) if self_index is None else self_index.numpy()
    kernel(ranked[1].numpy(), ctx["q_codes"].numpy(), ctx["g_codes"], me, *args)
    out_t = torch.from_numpy(out)
    for lev in range(n_levels):
        o = lev * per
        per_query[f"AP_level{lev}"].append(out_t[:, o])
        per_query[f"mAP@R_level{lev}"].append(out_t[:, o + 1])
        per_query[f"mAP@{MAP_AT}_level{lev}"].append(out_t[:, o + 2])
        for j, k in enumerate(recall_at):
            per_query[f"R@{k}_level{lev}"].append(out_t[:, o + 3 + j])
            per_query[f"P@{k}_level{lev}"].append(out_t[:, o + 3 + nk + j])
        n_pos[lev].append(torch.from_numpy(counts[:, lev]))
    base = n_levels * per
    per_query["H-AP"].append(out_t[:, base])
    per_query["NDCG"].append(out_t[:, base + 1])
    if ndcg_at is not None:
        per_query[f"NDCG@{ndcg_at}"].append(out_t[:, base + 2])
    per_query["ASI"].append(out_t[:, base + 3])
    n_rel.append(torch.from_numpy(counts[:, n_levels]))
