"""Exact per-query retrieval metrics computed from the positions of the relevant items.

Everything here works on a *ragged list of relevant items*: ``rows`` (query index), ``ranks``
(1-based position of the item in that query's ranking of the gallery) and, for the multi-level
metrics, ``levels`` (relevance level ``v >= 1``), sorted by ``(row, rank)``. Negatives (level 0)
never need to be listed: only how many of them precede each relevant item matters, and that is
already in its rank. This is what makes the metrics O(#relevant) after ranking.

Ranking rule (:func:`rank_relevant`): scores are sorted in decreasing order; **ties are broken by
gallery index** (the lower index comes first, a stable sort), so results are deterministic and do
not depend on the library or the hardware. ``-0.0`` and ``+0.0`` are the same score.

Notation for one query: ``R`` = number of relevant items, ``rank(k)`` = 1-based rank of the k-th
relevant item, ``P@i`` = (#relevant in the top i) / i.

=============  ===========================================================================
AP             ``(1/R) sum_k k / rank(k)``
mAP@R          ``(1/R) sum_{k: rank(k) <= R} k / rank(k)``  (pytorch-metric-learning's)
mAP@k          ``(1/min(R, k)) sum_{k': rank(k') <= k} k' / rank(k')``  (GLDv2 mAP@100)
R@k            ``1`` if ``rank(1) <= k`` else ``0``  (recall *rate*, "hit rate")
P@k            ``#{k': rank(k') <= k} / k``
H-AP           ``(1/sum_k rel(k)) sum_k H-rank(k) / rank(k)`` with
               ``H-rank(k) = rel(k) + sum_{j: rank(j) < rank(k)} min(rel(j), rel(k))``
NDCG(@K)       ``DCG / IDCG``, ``DCG = sum_{k: rank(k) <= K} (2^v(k) - 1) / log2(1 + rank(k))``,
               IDCG the same for the ideal order (levels decreasing); K = gallery size if None
ASI            ``(1/R) sum_{i=1..R} (1/i) sum_{v>=1} min(n_v(i), n*_v(i))`` with ``n_v(i)`` the
               number of level-v items in the top i and ``n*_v(i)`` the same for the ideal order;
               here R counts items with level >= 1 (DyML)
=============  ===========================================================================

A query without any relevant item has no value (NaN); callers leave it out of the mean.
H-AP is computed from *levels*: ``min(rel(j), rel(k))`` is taken per level pair, so two levels
that happen to have equal relevance values are never merged (the reference code compares
relevance values and double-counts in that case).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hglv2.metrics.labels import as_label_matrix, relevance_table

_LOW32 = (1 << 32) - 1
_TOP_HIGH = 0x7FFFFFFF  # high half above every finite (and infinite) score key
# Below this many relevant items per query, count preceding items by binary search instead of
# sorting the whole row (measured crossover on CPU, see benchmarks/metrics_speed.py).
SPARSE_MAX_RELEVANT = 256


# ---------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------
def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Unique int64 sort keys of a (Q, N) score matrix: ascending key = descending score, then
    ascending gallery index. High 32 bits: order-preserving image of the float32 score (negated);
    low 32 bits: the gallery index. Runs on the scores' device; on CPU with numba it is one
    compiled pass (:func:`hglv2.metrics._fused.build_tagged_keys` without labels), same keys."""
    n_rows, n = scores.shape
    if n >= 1 << 31:
        raise ValueError("gallery too large (>= 2^31 items)")
    s = scores.to(torch.float32)
    if s.device.type == "cpu":
        from hglv2.metrics import _fused

        if _fused.HAVE_NUMBA and n_rows and n:
            keys = torch.empty((n_rows, n), dtype=torch.int64)
            bad = np.zeros(n_rows, dtype=np.uint8)
            _fused.build_tagged_keys(
                s.contiguous().view(torch.int32).numpy(),
                np.zeros((n_rows, 0), dtype=np.int32),
                np.zeros((0, n), dtype=np.int32),
                np.full(n_rows, -1, dtype=np.int64),
                0,
                keys.numpy(),
                bad,
            )
            return keys
    s = s + 0.0  # new tensor; turns -0.0 into +0.0
    x = s.view(torch.int32)
    sign = x >> 31
    sign &= 0x7FFFFFFF
    x ^= sign  # now ascending int32 order == ascending float order
    x.bitwise_not_()  # descending
    keys = x.to(torch.int64)
    keys <<= 32
    keys |= torch.arange(n, dtype=torch.int64, device=s.device)
    return keys


def _sort_rows_inplace(a: np.ndarray) -> None:
    """Sort each row of a 2-D array in place: numpy's (SIMD) sort, rows split over threads."""
    n_threads = max(1, min(torch.get_num_threads(), a.shape[0]))
    if n_threads == 1:
        a.sort(axis=1)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, a.shape[0], n_threads + 1).astype(int)
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(lambda i: a[bounds[i] : bounds[i + 1]].sort(axis=1), range(n_threads)))


def _rank_chunk(
    scores: torch.Tensor, tags, self_index: torch.Tensor | None, method: str, keys_only: bool = False
):
    """Rank one chunk. Returns ``("dense", sorted_tags)`` (row-sorted tags, (Q, N) uint8),
    ``("keys", sorted_keys)`` (with ``keys_only``: the sorted order keys, tags not needed) or
    ``("lists", rows, ranks, values)`` (see :func:`rank_relevant`). ``tags`` may be a callable
    returning the tag tensor, so it is only built when needed."""
    n_rows, n = scores.shape
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN (with finite embeddings: the dot products overflowed)")
    keys = order_keys(scores)
    if self_index is not None:
        keys[torch.arange(n_rows), self_index] = (_TOP_HIGH << 32) | self_index
    if method == "sort" and keys_only:
        _sort_rows_inplace(keys.numpy())
        return ("keys", keys)
    if callable(tags):
        tags = tags()
    if tags.shape != scores.shape:
        raise ValueError(f"tags shape {tuple(tags.shape)} != scores shape {tuple(scores.shape)}")
    if self_index is not None:
        tags[torch.arange(n_rows), self_index] = 0
    rows = cols = None
    if method == "auto":
        rows, cols = torch.nonzero(tags, as_tuple=True)
        p_max = int(torch.bincount(rows, minlength=n_rows).max()) if rows.numel() else 0
        method = "search" if p_max <= SPARSE_MAX_RELEVANT else "sort"
    if method == "sort":
        sk = torch.sort(keys, dim=1).values
        sk &= _LOW32
        return ("dense", torch.gather(tags, 1, sk))
    if method != "search":
        raise ValueError(f"unknown method {method!r}")
    if rows is None:
        rows, cols = torch.nonzero(tags, as_tuple=True)
    counts = torch.bincount(rows, minlength=n_rows)
    p_max = int(counts.max()) if rows.numel() else 0
    if p_max == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return ("lists", empty, empty, empty)
    start = counts.cumsum(0) - counts
    within = torch.arange(rows.numel()) - start[rows]
    pad = torch.full((n_rows, p_max), torch.iinfo(torch.int64).max, dtype=torch.int64)
    pad[rows, within] = keys[rows, cols]
    vals = torch.zeros((n_rows, p_max), dtype=torch.int64)
    vals[rows, within] = tags[rows, cols].to(torch.int64)
    pad, order = torch.sort(pad, dim=1)
    vals = torch.gather(vals, 1, order)
    # b[q, i] = number of relevant keys smaller than item i's key; an item with b <= k precedes
    # (or is) the k-th relevant item, so rank(k) = #{i : b[q, i] <= k}.
    b = torch.searchsorted(pad, keys)
    b += (torch.arange(n_rows) * (p_max + 1))[:, None]
    hist = torch.bincount(b.view(-1), minlength=n_rows * (p_max + 1)).view(n_rows, p_max + 1)
    cum = hist.cumsum(1)
    valid = torch.arange(p_max)[None, :] < counts[:, None]
    r, k = torch.nonzero(valid, as_tuple=True)
    return ("lists", r, cum[r, k], vals[r, k])


def rank_relevant(
    scores: torch.Tensor,
    tags: torch.Tensor,
    self_index: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks of the relevant items of each query.

    Args:
        scores: (Q, N) float scores (higher = more similar).
        tags: (Q, N) uint8, nonzero for relevant items (a level or a bit mask); modified in place
            when ``self_index`` is given.
        self_index: (Q,) gallery index of each query to exclude from its ranking (or None). The
            excluded item is removed from the ranking: it neither counts as relevant nor shifts
            the ranks of other items.
        method: ``"sort"`` (full row sort), ``"search"`` (sort the relevant items only and count
            the others by binary search) or ``"auto"`` (search when every query has at most
            ``SPARSE_MAX_RELEVANT`` relevant items).

    Returns:
        ``rows``, ``ranks`` (1-based), ``values`` (the tag) of the relevant items, int64 tensors
        sorted by (row, rank).
    """
    res = _rank_chunk(scores, tags, self_index, method)
    if res[0] == "lists":
        return res[1], res[2], res[3]
    st = res[1]
    r, p = torch.nonzero(st, as_tuple=True)
    return r, p + 1, st[r, p].to(torch.int64)


# ---------------------------------------------------------------------------------------------
# metrics on ragged lists of relevant items
# ---------------------------------------------------------------------------------------------
def _segments(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row counts, start offsets, and the 1-based index of each item within its row."""
    counts = torch.bincount(rows, minlength=n_rows)
    start = counts.cumsum(0) - counts
    index = torch.arange(rows.numel(), dtype=torch.int64) - start[rows] + 1
    return counts, start, index


def _row_sum(rows: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
    out = torch.zeros(n_rows, dtype=torch.float64)
    return out.index_add_(0, rows, values.to(torch.float64))


def _nan_where(values: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    return torch.where(undefined, torch.full_like(values, float("nan")), values)


def binary_metrics(
    rows: torch.Tensor,
    ranks: torch.Tensor,
    n_rows: int,
    recall_at: Sequence[int] = (1, 10, 100),
    precision_at: Sequence[int] | None = None,
    map_at: Sequence[int] = (100,),
) -> dict[str, torch.Tensor]:
    """Binary per-query metrics from the ranks of the positives (module table).

    Args:
        rows, ranks: (P,) int64, positives sorted by (row, rank), ranks 1-based.
        n_rows: number of queries.

    Returns:
        dict of (n_rows,) float64 tensors: ``AP``, ``mAP@R``, ``R@{k}``, ``P@{k}``, ``mAP@{k}``;
        NaN for queries without positives; plus ``n_positives`` (int64).
    """
    precision_at = recall_at if precision_at is None else precision_at
    counts, start, index = _segments(rows, n_rows)
    none = counts == 0
    cf = counts.to(torch.float64)
    prec = index.to(torch.float64) / ranks.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    out["AP"] = _nan_where(_row_sum(rows, prec, n_rows) / cf.clamp_min(1), none)
    at_r = ranks <= counts[rows]
    out["mAP@R"] = _nan_where(_row_sum(rows[at_r], prec[at_r], n_rows) / cf.clamp_min(1), none)
    first = torch.full((n_rows,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    if rows.numel():
        first[~none] = ranks[start[~none]]
    for k in recall_at:
        out[f"R@{k}"] = _nan_where((first <= k).to(torch.float64), none)
    for k in precision_at:
        hit = ranks <= k
        out[f"P@{k}"] = _nan_where(_row_sum(rows[hit], torch.ones_like(prec[hit]), n_rows) / k, none)
    for k in map_at:
        hit = ranks <= k
        out[f"mAP@{k}"] = _nan_where(_row_sum(rows[hit], prec[hit], n_rows) / cf.clamp(1, k), none)
    out["n_positives"] = counts
    return out


def _level_cumcounts(rows: torch.Tensor, levels: torch.Tensor, start: torch.Tensor, n_levels: int):
    """C[m][i] = number of level-m items at or before item i in its row (m = 1..L)."""
    out = {}
    for m in range(1, n_levels + 1):
        g = torch.zeros(levels.numel() + 1, dtype=torch.int64)
        torch.cumsum((levels == m).to(torch.int64), 0, out=g[1:])
        out[m] = g[1:] - g[start][rows]
    return out


def level_counts_from(
    rows: torch.Tensor, levels: torch.Tensor, n_rows: int, n_levels: int, n_gallery: torch.Tensor | int
) -> torch.Tensor:
    """(n_rows, L+1) counts of gallery items per level; column 0 = n_gallery - relevant."""
    flat = rows * (n_levels + 1) + levels
    counts = torch.bincount(flat, minlength=n_rows * (n_levels + 1)).view(n_rows, n_levels + 1).clone()
    counts[:, 0] = torch.as_tensor(n_gallery, dtype=torch.int64) - counts[:, 1:].sum(1)
    return counts


def hierarchical_ap_from_ranks(
    rows: torch.Tensor, ranks: torch.Tensor, levels: torch.Tensor, rel: torch.Tensor
) -> torch.Tensor:
    """H-AP per query (module table), computed level by level.

    Args:
        rows, ranks, levels: relevant items (level >= 1) sorted by (row, rank).
        rel: (n_rows, L+1) relevance value of each level per query (:func:`relevance_table`).
    """
    n_rows, width = rel.shape
    n_levels = width - 1
    counts, start, _ = _segments(rows, n_rows)
    cum = _level_cumcounts(rows, levels, start, n_levels)
    rel_k = rel[rows, levels]
    hrank = torch.zeros(rows.numel(), dtype=torch.float64)
    for m in range(1, n_levels + 1):
        hrank += torch.minimum(rel[rows, m], rel_k) * cum[m].to(torch.float64)
    num = _row_sum(rows, hrank / ranks.to(torch.float64), n_rows)
    den = _row_sum(rows, rel_k, n_rows)
    undefined = (counts == 0) | (den <= 0)
    return _nan_where(num / torch.where(undefined, torch.ones_like(den), den), undefined)


def _discount_prefix(n: int) -> torch.Tensor:
    """D[p] = sum_{i=1..p} 1 / log2(1 + i), D[0] = 0 (float64, length n + 1)."""
    d = torch.zeros(n + 1, dtype=torch.float64)
    if n:
        d[1:] = (1.0 / torch.log2(torch.arange(2, n + 2, dtype=torch.float64))).cumsum(0)
    return d


def _harmonic_prefix(n: int) -> torch.Tensor:
    """H[p] = sum_{i=1..p} 1 / i, H[0] = 0 (float64, length n + 1)."""
    h = torch.zeros(n + 1, dtype=torch.float64)
    if n:
        h[1:] = (1.0 / torch.arange(1, n + 1, dtype=torch.float64)).cumsum(0)
    return h


def ndcg_from_ranks(
    rows: torch.Tensor,
    ranks: torch.Tensor,
    levels: torch.Tensor,
    level_counts: torch.Tensor,
    k: int | None = None,
) -> torch.Tensor:
    """NDCG(@k) per query with gain ``2^v - 1`` and discount ``1/log2(1 + rank)``.

    Args:
        rows, ranks, levels: relevant items (level >= 1) sorted by (row, rank).
        level_counts: (n_rows, L+1) number of gallery items per level.
        k: cutoff (None = full ranking).
    """
    n_rows, width = level_counts.shape
    n_levels = width - 1
    n_gallery = int(level_counts.sum(1).max()) if n_rows else 0
    cutoff = n_gallery if k is None else min(int(k), n_gallery)
    disc = _discount_prefix(max(cutoff, 1))
    gains = 2.0 ** torch.arange(width, dtype=torch.float64) - 1.0
    keep = ranks <= cutoff
    dcg = _row_sum(rows[keep], gains[levels[keep]] / torch.log2(1.0 + ranks[keep].to(torch.float64)), n_rows)
    idcg = torch.zeros(n_rows, dtype=torch.float64)
    above = torch.zeros(n_rows, dtype=torch.int64)
    for v in range(n_levels, 0, -1):
        n_v = level_counts[:, v]
        lo = above.clamp_max(cutoff)
        hi = (above + n_v).clamp_max(cutoff)
        idcg += gains[v] * (disc[hi] - disc[lo])
        above = above + n_v
    undefined = idcg <= 0
    return _nan_where(dcg / torch.where(undefined, torch.ones_like(idcg), idcg), undefined)


def asi_from_ranks(
    rows: torch.Tensor, ranks: torch.Tensor, levels: torch.Tensor, level_counts: torch.Tensor
) -> torch.Tensor:
    """ASI per query (DyML), exactly, in O(#relevant).

    ``sum_{i<=R} min(n_v(i), n*_v(i)) / i`` is rewritten as a sum over the level-v items: the j-th
    of them (rank ``p``) counts at every position ``i >= t = max(p, A_v + j)``, where ``A_v`` is the
    number of items of level > v; so it adds ``H(R) - H(t - 1)`` (harmonic numbers) when t <= R.
    """
    n_rows, width = level_counts.shape
    n_levels = width - 1
    counts, start, _ = _segments(rows, n_rows)
    total = level_counts[:, 1:].sum(1)
    h = _harmonic_prefix(int(total.max()) if n_rows else 0)
    cum = _level_cumcounts(rows, levels, start, n_levels)
    j = torch.zeros_like(ranks)
    for m in range(1, n_levels + 1):
        j = torch.where(levels == m, cum[m], j)
    above = level_counts[:, 1:].flip(1).cumsum(1).flip(1) - level_counts[:, 1:]  # A_v, v = 1..L
    a = above[rows, levels - 1]
    t = torch.maximum(ranks, a + j)
    r_row = total[rows]
    ok = t <= r_row
    tail = h[r_row] - h[(t - 1).clamp(0, h.numel() - 1)]
    contrib = torch.where(ok, tail, torch.zeros_like(tail))
    s = _row_sum(rows, contrib, n_rows)
    undefined = total == 0
    return _nan_where(s / total.clamp_min(1).to(torch.float64), undefined)


# ---------------------------------------------------------------------------------------------
# functional API on dense (Q, N) inputs
# ---------------------------------------------------------------------------------------------
def _as_scores(scores) -> torch.Tensor:
    t = torch.as_tensor(scores).detach().cpu()
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2:
        raise ValueError(f"scores must be (Q, N), got {tuple(t.shape)}")
    return t.to(torch.float32)


def _as_tags(target, shape, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(target)).detach().cpu()
    if t.ndim == 1:
        t = t[None, :]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(t.shape)} != scores shape {tuple(shape)}")
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.is_floating_point() or (t < 0).any() or (t > 255).any():
        raise ValueError(f"{name} must be booleans or integer levels in 0..255")
    return t.to(torch.uint8)


def _binary(scores, target, **kw) -> dict[str, torch.Tensor]:
    s = _as_scores(scores)
    tags = _as_tags(target, s.shape, "target")
    rows, ranks, _ = rank_relevant(s, tags)
    return binary_metrics(rows, ranks, s.shape[0], **kw)


def average_precision(scores, target) -> np.ndarray:
    """AP per query. scores (Q, N) or (N,); target bool of the same shape. Returns (Q,) float64,
    NaN where a query has no positive. Ties: stable by gallery index."""
    return _binary(scores, target, recall_at=(), map_at=())["AP"].numpy()


def map_at_r(scores, target) -> np.ndarray:
    """mAP@R per query: ``(1/R) sum_{k: rank(k) <= R} k / rank(k)``. Shapes as :func:`average_precision`."""
    return _binary(scores, target, recall_at=(), map_at=())["mAP@R"].numpy()


def map_at_k(scores, target, k: int = 100) -> np.ndarray:
    """GLDv2 mAP@k per query: normaliser ``min(R, k)``. Shapes as :func:`average_precision`."""
    return _binary(scores, target, recall_at=(), map_at=(k,))[f"mAP@{k}"].numpy()


def recall_at_k(scores, target, k: int = 1) -> np.ndarray:
    """Recall rate R@k per query: 1 if a positive is in the top k. Shapes as :func:`average_precision`."""
    return _binary(scores, target, recall_at=(k,), precision_at=(), map_at=())[f"R@{k}"].numpy()


def precision_at_k(scores, target, k: int = 1) -> np.ndarray:
    """P@k per query: positives in the top k divided by k. Shapes as :func:`average_precision`."""
    return _binary(scores, target, recall_at=(), precision_at=(k,), map_at=())[f"P@{k}"].numpy()


def _multi(scores, levels):
    s = _as_scores(scores)
    tags = _as_tags(levels, s.shape, "levels")
    n_levels = max(int(tags.max()) if tags.numel() else 0, 1)
    rows, ranks, lv = rank_relevant(s, tags)
    counts = level_counts_from(rows, lv, s.shape[0], n_levels, s.shape[1])
    return rows, ranks, lv, counts


def hierarchical_ap(
    scores, levels, relevance: str = "pop", alpha: float | Sequence[float] = 1.0, n_levels: int | None = None
) -> np.ndarray:
    """H-AP per query. scores (Q, N); levels int (Q, N) in 0..L (0 = not relevant).

    ``n_levels`` (L) sets the weights ``w(v) = v ** alpha``; it defaults to the largest level seen.
    Returns (Q,) float64, NaN for queries without any relevant item.
    """
    rows, ranks, lv, counts = _multi(scores, levels)
    if n_levels is not None:
        if n_levels < counts.shape[1] - 1:
            raise ValueError("n_levels is smaller than the largest level")
        pad = torch.zeros((counts.shape[0], n_levels + 1 - counts.shape[1]), dtype=counts.dtype)
        counts = torch.cat([counts, pad], 1)
    rel = relevance_table(counts, relevance, alpha)
    return hierarchical_ap_from_ranks(rows, ranks, lv, rel).numpy()


def ndcg(scores, levels, k: int | None = None) -> np.ndarray:
    """NDCG(@k) per query with gain ``2^level - 1``. scores (Q, N); levels int (Q, N)."""
    rows, ranks, lv, counts = _multi(scores, levels)
    return ndcg_from_ranks(rows, ranks, lv, counts, k).numpy()


def asi(scores, levels) -> np.ndarray:
    """ASI per query (DyML). scores (Q, N); levels int (Q, N)."""
    rows, ranks, lv, counts = _multi(scores, levels)
    return asi_from_ranks(rows, ranks, lv, counts).numpy()


__all__ = [
    "as_label_matrix",
    "asi",
    "asi_from_ranks",
    "average_precision",
    "binary_metrics",
    "hierarchical_ap",
    "hierarchical_ap_from_ranks",
    "level_counts_from",
    "map_at_k",
    "map_at_r",
    "ndcg",
    "ndcg_from_ranks",
    "order_keys",
    "precision_at_k",
    "rank_relevant",
    "recall_at_k",
]
