"""Streaming evaluator: every hglv2 metric for a set of queries against a gallery.

Queries are processed in chunks: for each chunk the (chunk, N) float32 score matrix is computed
with one torch matmul, the relevant items are ranked exactly (:func:`hglv2.metrics.ranking.rank_relevant`)
and every metric is computed from their ranks. Memory is bounded by ``memory_mb`` (about 48 bytes
per score), independent of the number of queries, so Q = 10,000 queries against N = 1,000,000
gallery items runs in a few GB.

Per-query values become means in one place, :func:`reduce_per_query`, with the policy for
undefined values (a query without positives) as a parameter: ``"skip"`` (hglv2: left out of the
mean and counted) or ``"zero"`` (the SupRank authors: scored 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hglv2.metrics import _fused
from hglv2.metrics.labels import as_label_matrix, encode_labels, match_mask, popcount, relevance_table
from hglv2.metrics.ranking import (
    _LOW32,
    _TOP_HIGH,
    SPARSE_MAX_RELEVANT,
    _nan_where,
    _rank_chunk,
    _sort_rows_inplace,
    asi_from_ranks,
    binary_metrics,
    hierarchical_ap_from_ranks,
    level_counts_from,
    ndcg_from_ranks,
)
from hglv2.relevance import RELEVANCES, level_weights

MAP_AT = 100  # GLDv2 retrieval metric
BYTES_PER_SCORE = 48  # peak working memory per (query, gallery) pair, measured
TOP_K_BYTES_PER_SCORE = 8  # top-k mode on CPU: sets the query chunk (the scores are computed in tiles)
KEY_LOW_BITS = 32  # index + match mask must fit the low half of a sort key (else: plain keys + gather)
TOP_K_TILE_BYTES = 4 << 20  # top-k mode on CPU: at most this many bytes of scores per tile
TOP_K_SLICE_BYTES = 512 << 10  # top-k mode on CPU: the gallery embeddings of one tile (matmul operand)
NAN_SCORES = "scores contain NaN (with finite embeddings: the dot products overflowed)"
NO_POSITIVE_POLICIES = ("skip", "zero")  # queries with an undefined value: left out of a mean, or scored 0


def _as_embeddings(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: embeddings must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {tuple(t.shape)}")
    t = t.to(torch.float32).contiguous()
    arr = t.numpy()
    if not np.isfinite(arr).all():  # numpy: many times faster than torch.isfinite on CPU
        row = int(np.flatnonzero(~np.isfinite(arr).all(1))[0])
        raise ValueError(f"{name}: row {row}: embedding is not finite (NaN or inf)")
    return t


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


@dataclass
class _Problem:
    """The validated inputs of :func:`evaluate`: embeddings, label codes, exact positive counts."""

    q_emb: torch.Tensor
    g_emb: torch.Tensor
    q_codes: torch.Tensor  # (Q, L) int32, from encode_labels
    g_codes_t: torch.Tensor  # (L, N) int32
    n_pos_all: np.ndarray  # (Q, L) int64: gallery items equal on column l (self excluded)
    same: bool
    n_ranked: int
    recall_at: tuple[int, ...]
    dev: torch.device | None = None  # None: the CPU engine
    backend: str = "torch"  # "numba" or "torch"

    @property
    def n_levels(self) -> int:
        return int(self.q_codes.shape[1])

    @property
    def n_q(self) -> int:
        return int(self.q_emb.shape[0])

    @property
    def n_g(self) -> int:
        return int(self.g_emb.shape[0])


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
    top_k: int | None = None,
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
        relevance: ``"pop"`` or ``"map"`` relevance for H-AP (:mod:`hglv2.relevance`).
        alpha: level weight exponent ``w(v) = v ** alpha`` or a sequence of L weights.
        reduce: True -> means over queries (floats) and query counts (ints); False -> per-query
            (Q,) float64 arrays, NaN where a metric is undefined, plus ``n_positives_level{l}``.
        ndcg_at: also report ``NDCG@{k}`` (``NDCG`` is always over the full ranking).
        memory_mb: working-memory budget that sets the query chunk size.
        chunk_size: queries per chunk (overrides ``memory_mb``).
        device: None (default): the CPU engine (numba kernels). A torch device (``"cuda"``,
            ``"cuda:1"``, ``"cpu"``): the matmul and the ranking run on that device with torch, in
            query chunks sized to its free memory (CUDA: ``torch.cuda.mem_get_info``; CPU:
            ``memory_mb``); only the ranks of the relevant items (full mode) or the (chunk, k)
            match masks (top-k mode) come back, and the metrics are computed from them by the
            same code as the CPU engine, so the numbers are identical. ``device="cpu"`` runs that
            same code on the CPU (slower than the default; it exists to test it).
        method: ranking method of :func:`~hglv2.metrics.ranking.rank_relevant` (CPU engine).
        backend: ``"numba"`` (fused one-pass kernel), ``"torch"`` (vectorised reference) or
            ``"auto"`` (numba when installed). Both give the same numbers.
        top_k: top-k mode: rank only the first ``top_k`` items of each query (a k-NN search that
            never sorts a full row) and report only the metrics they determine exactly, per level:
            ``R@k`` and ``P@k`` (every k of ``recall_at`` must be <= ``top_k``), ``mAP@100`` (when
            ``top_k >= 100`` or the gallery is no larger) and ``mAP@R``, which is NaN for a query
            with R > ``top_k`` positives (counted in ``n_truncated_level{l}``; the reduced mean runs
            over the other queries). R itself is exact (counted from the labels). ``AP``, ``H-AP``,
            ``NDCG``, ``NDCG@k`` and ``ASI`` need the whole ranking and are left out (``ndcg_at`` is
            refused). Values equal those of the full mode (same tie rule).

    Returns:
        dict with ``AP_level{l}``, ``mAP@R_level{l}``, ``mAP@100_level{l}``, ``R@{k}_level{l}``,
        ``P@{k}_level{l}``, ``H-AP``, ``NDCG``, ``ASI`` and, when reduced, ``n_queries``,
        ``n_gallery``, ``n_queries_level{l}`` / ``n_skipped_level{l}`` (queries with / without a
        positive in column l; skipped ones are left out of that level's means) and
        ``n_queries_multilevel`` / ``n_skipped_multilevel`` (the same for H-AP, NDCG, ASI: queries
        with / without any item of level >= 1). In top-k mode: the metrics listed under ``top_k``,
        ``n_queries``, ``n_gallery``, ``top_k``, ``n_queries_level{l}``, ``n_skipped_level{l}``,
        ``n_truncated_level{l}``.
    """
    p = _validate(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, recall_at, relevance, alpha
    )
    p.dev, p.backend = _torch_device(device), _pick_backend(backend)
    ctx = _context(p, ndcg_at, relevance, alpha)
    if top_k is not None:
        return _evaluate_top_k(p, int(top_k), ctx, reduce, memory_mb, chunk_size)
    acc = _full_ranking(p, ctx, method, memory_mb, chunk_size)
    return _finish(*acc, p, reduce)


# ------------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------------
def _validate(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    recall_at,
    relevance,
    alpha,
) -> _Problem:
    """Check the inputs and metric arguments of :func:`evaluate` and encode the labels (the engine
    arguments, ``device`` and ``backend``, are checked after these)."""
    if relevance not in RELEVANCES:
        raise ValueError(f"relevance must be one of {RELEVANCES}, got {relevance!r}")
    recall_at = tuple(dict.fromkeys(int(k) for k in recall_at))
    if any(k < 1 for k in recall_at):
        raise ValueError("recall_at values must be >= 1")
    q_emb, q_lab, g_emb, g_lab, same = _queries_and_gallery(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels
    )
    level_weights(q_lab.shape[1], alpha)  # validate early
    n_q, n_g = q_emb.shape[0], g_emb.shape[0]
    if n_q == 0:
        raise ValueError("query_embeddings: no queries")
    n_ranked = n_g - 1 if same else n_g
    if n_ranked < 1:
        raise ValueError("the gallery has no item to rank")
    q_codes, g_codes_t = encode_labels(q_lab, g_lab)
    n_pos_all = _positives_per_column(q_codes, g_codes_t, same)
    return _Problem(
        q_emb=q_emb,
        g_emb=g_emb,
        q_codes=q_codes,
        g_codes_t=g_codes_t,
        n_pos_all=n_pos_all,
        same=same,
        n_ranked=n_ranked,
        recall_at=recall_at,
    )


def _queries_and_gallery(query_embeddings, query_labels, gallery_embeddings, gallery_labels):
    """(q_emb, q_lab, g_emb, g_lab, same): checked tensors and label matrices; ``same`` when no
    gallery is given (the query set is the gallery)."""
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
    return q_emb, q_lab, g_emb, g_lab, same


def _positives_per_column(q_codes: torch.Tensor, g_codes_t: torch.Tensor, same: bool) -> np.ndarray:
    """(Q, L) int64: n[q, l] = number of gallery items equal to query q on column l (self excluded)."""
    n_q, n_levels = q_codes.shape
    n_pos_all = np.zeros((n_q, n_levels), dtype=np.int64)
    for col in range(n_levels):
        g_col = g_codes_t[col].numpy()
        counts = np.bincount(g_col[g_col >= 0], minlength=max(int(q_codes[:, col].max()) + 1, 0))
        q_col = q_codes[:, col].numpy()
        ok = (q_col >= 0) & (q_col < len(counts))
        n_pos_all[ok, col] = counts[q_col[ok]]
        if same:
            n_pos_all[ok, col] -= 1
    return n_pos_all


def _torch_device(device: str | torch.device | None) -> torch.device | None:
    try:
        dev = torch.device(device) if device is not None else None
    except RuntimeError as exc:
        raise ValueError(f"device {device!r}: {exc}") from None
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available")
    return dev


def _pick_backend(backend: str) -> str:
    if backend == "auto":
        backend = "numba" if _fused.HAVE_NUMBA else "torch"
    if backend not in ("numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if backend == "numba" and not _fused.HAVE_NUMBA:
        raise ValueError("backend='numba' needs the numba package")
    return backend


def _context(p: _Problem, ndcg_at: int | None, relevance: str, alpha) -> dict[str, Any]:
    """What the per-chunk metric code reads (the ranking adds each chunk's codes and self index)."""
    return {
        "n_levels": p.n_levels,
        "n_ranked": p.n_ranked,
        "recall_at": p.recall_at,
        "ndcg_at": ndcg_at,
        "relevance": relevance,
        "alpha": alpha,
        "same": p.same,
    }


# ------------------------------------------------------------------------------------------------
# chunked ranking (full mode)
# ------------------------------------------------------------------------------------------------
def _full_ranking(p: _Problem, ctx: dict[str, Any], method: str, memory_mb: int, chunk_size: int | None):
    """Rank the queries chunk by chunk and hand each chunk to the metric code of the backend;
    returns the accumulated per-query values ``(per_query, n_pos, n_rel)`` for :func:`_finish`."""
    chunk_fn = _chunk_numba if p.backend == "numba" else _chunk_torch
    if p.backend == "numba":
        ndcg_at, n_ranked = ctx["ndcg_at"], p.n_ranked
        ctx["params"] = _fused.metric_params(
            p.n_levels,
            n_ranked,
            np.asarray(p.recall_at, dtype=np.int64),
            MAP_AT,
            n_ranked if ndcg_at is None else min(int(ndcg_at), n_ranked),
            ctx["relevance"],
            level_weights(p.n_levels, ctx["alpha"]),
            _fused.tables(n_ranked),
        )
        ctx["g_codes"] = np.ascontiguousarray(p.g_codes_t.numpy().T)  # (N, L): one cache line per item
        ctx["g_codes_padded"] = _fused.padded_gallery_codes(p.g_codes_t.numpy())  # (4G, N), padded once
    names = _metric_names(p.n_levels, p.recall_at, ctx["ndcg_at"])
    per_query: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    n_pos: dict[int, list[torch.Tensor]] = {lev: [] for lev in range(p.n_levels)}
    n_rel: list[torch.Tensor] = []
    n_q = p.n_q
    if p.dev is not None:
        ranker = _DeviceRanker(p.g_emb, p.q_codes, p.g_codes_t, p.dev, p.same)
        chunk_size = ranker.chunk_size(n_q, chunk_size, memory_mb, _DeviceRanker.FULL_BYTES_PER_SCORE)
        for lo in range(0, n_q, chunk_size):
            hi = min(lo + chunk_size, n_q)
            ctx["q_codes"], ctx["self_index"] = p.q_codes[lo:hi], (torch.arange(lo, hi) if p.same else None)
            chunk_fn(ranker.rank_full(p.q_emb, lo, hi), hi - lo, ctx, per_query, n_pos, n_rel)
        return per_query, n_pos, n_rel
    if chunk_size is None:
        chunk_size = max(1, (int(memory_mb) << 20) // (max(p.n_g, 1) * BYTES_PER_SCORE))
    chunk_size = int(min(max(chunk_size, 1), max(n_q, 1)))
    # upper bound on the relevant items of each query: sum over columns of its positives
    bound = p.n_pos_all.sum(1)
    buffers = _ChunkBuffers(chunk_size, p.n_g)
    for lo in range(0, n_q, chunk_size):
        hi = min(lo + chunk_size, n_q)
        ranked = _rank_cpu_chunk(p, ctx, lo, hi, method, bound, buffers)
        chunk_fn(ranked, hi - lo, ctx, per_query, n_pos, n_rel)
    return per_query, n_pos, n_rel


class _ChunkBuffers:
    """The (chunk, N) score and key arrays of the CPU engine, allocated at the first chunk that
    needs them and reused by the next ones: a fresh array per chunk costs more to fault in than
    the kernels take to fill it. Both come from torch's allocator: numpy asks the kernel for
    transparent huge pages on large arrays, and under the kernel's default ``defrag=madvise``
    each huge page fault compacts memory first (the key buffer's first touch measured 0.25 s
    against 0.15 s, with no gain in the sort or the metric pass that read it)."""

    def __init__(self, rows: int, n: int):
        self.rows, self.n = rows, n
        self._scores: torch.Tensor | None = None
        self._keys: np.ndarray | None = None

    def scores(self, c: int) -> torch.Tensor:
        if self._scores is None:
            self._scores = torch.empty((self.rows, self.n), dtype=torch.float32)
        return self._scores[:c]

    def keys(self, c: int) -> np.ndarray:
        if self._keys is None:
            self._keys = torch.empty((self.rows, self.n), dtype=torch.int64).numpy()
        return self._keys[:c]


def _rank_cpu_chunk(
    p: _Problem, ctx: dict[str, Any], lo: int, hi: int, method: str, bound: np.ndarray, buffers: _ChunkBuffers
):
    """The ranking of queries ``lo:hi`` in the form the chunk's metric code reads (sets the chunk's
    ``q_codes`` and ``self_index`` in ``ctx``)."""
    scores = torch.matmul(p.q_emb[lo:hi], p.g_emb.T, out=buffers.scores(hi - lo))
    self_index = torch.arange(lo, hi) if p.same else None
    chunk_method = method
    if method == "auto":
        # an upper bound on the relevant items (per-column label counts) picks the ranking
        many = bool((bound[lo:hi] > SPARSE_MAX_RELEVANT).any())
        chunk_method = "sort" if many else ("search" if p.backend == "numba" else "auto")
    qc = p.q_codes[lo:hi]
    ctx["q_codes"], ctx["self_index"] = qc, self_index
    if p.backend == "numba" and chunk_method == "search":
        if torch.isnan(scores).any():
            raise ValueError(NAN_SCORES)
        return ("score_bits", scores.contiguous().view(torch.int32))
    # sort keys that carry the label match mask below the gallery index (one pass, no gather later)
    tagged = p.backend == "numba" and (max(p.n_g - 1, 1)).bit_length() + p.n_levels <= KEY_LOW_BITS
    if tagged and chunk_method == "sort":
        return _tagged_keys(scores, qc, ctx["g_codes_padded"], self_index, p.n_levels, buffers.keys(hi - lo))
    return _rank_chunk(
        scores,
        lambda qc=qc: match_mask(qc, p.g_codes_t),
        self_index,
        chunk_method,
        keys_only=p.backend == "numba",
    )


def _tagged_keys(scores: torch.Tensor, qc: torch.Tensor, g_padded: np.ndarray, self_index, n_levels, keys):
    """Row-sorted keys of :func:`hglv2.metrics._fused.build_tagged_keys` (match mask in the low
    bits), written into ``keys`` (the chunk's shape); ``g_padded``: the gallery's codes as
    :func:`hglv2.metrics._fused.padded_gallery_codes` gives them."""
    n_rows = scores.shape[0]
    bad = np.zeros(n_rows, dtype=np.uint8)
    me = np.full(n_rows, -1, dtype=np.int64) if self_index is None else self_index.numpy()
    _fused.build_tagged_keys(
        scores.contiguous().view(torch.int32).numpy(),
        _fused.padded_query_codes(qc.numpy()),
        g_padded,
        me,
        n_levels,
        keys,
        bad,
    )
    if bad.any():
        raise ValueError(NAN_SCORES)
    _sort_rows_inplace(keys)
    return ("tagged", keys, (1 << n_levels) - 1)


# ------------------------------------------------------------------------------------------------
# metric assembly
# ------------------------------------------------------------------------------------------------
def _finish(per_query, n_pos, n_rel, p: _Problem, reduce: bool) -> dict[str, Any]:
    per: dict[str, Any] = {n: torch.cat(v).numpy() for n, v in per_query.items()}
    for lev, v in n_pos.items():
        per[f"n_positives_level{lev}"] = torch.cat(v).numpy()
    per["n_relevant"] = torch.cat(n_rel).numpy()
    if not reduce:
        return per
    return {"n_queries": p.n_q, "n_gallery": p.n_ranked, **reduce_per_query(per)}


# ------------------------------------------------------------------------------------------------
# the per-query reduction
# ------------------------------------------------------------------------------------------------
def _is_count(key: str) -> bool:
    return key.startswith("n_positives_level") or key == "n_relevant"


def _check_policy(no_positive: str) -> None:
    if no_positive not in NO_POSITIVE_POLICIES:
        raise ValueError(f"no_positive must be one of {NO_POSITIVE_POLICIES}, got {no_positive!r}")


def query_mean(values, no_positive: str = "skip") -> float:
    """The mean over queries of per-query values, NaN where a value is undefined (a query without
    positives; in top-k mode also mAP@R with R > k): ``"skip"`` leaves those queries out (NaN when
    none is left), ``"zero"`` scores them 0 and keeps them."""
    _check_policy(no_positive)
    vals = np.asarray(values, dtype=np.float64)
    if no_positive == "zero":
        return float(np.nan_to_num(vals, nan=0.0).mean())
    ok = ~np.isnan(vals)
    return float(vals[ok].mean()) if ok.any() else float("nan")


def per_query_values(per: Mapping[str, Any], no_positive: str = "skip") -> dict[str, Any]:
    """The per-query output of :func:`evaluate` (``reduce=False``) under a policy of
    :func:`query_mean`: ``"zero"`` replaces undefined values by 0 (float64 arrays), ``"skip"``
    keeps them NaN; the counts ``n_positives_level{l}`` and ``n_relevant`` pass through."""
    _check_policy(no_positive)
    if no_positive == "skip":
        return dict(per)
    return {
        k: v if _is_count(k) else np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0)
        for k, v in per.items()
    }


def reduce_per_query(
    per: Mapping[str, Any],
    *,
    no_positive: str = "skip",
    rows: np.ndarray | None = None,
    truncated_at: int | None = None,
) -> dict[str, Any]:
    """Means and query counts from the per-query output of :func:`evaluate` (``reduce=False``).

    Each metric becomes its :func:`query_mean` under ``no_positive``; each count
    ``n_positives_level{l}`` gives ``n_queries_level{l}`` / ``n_skipped_level{l}`` (queries with /
    without a positive in column l) and ``n_relevant`` gives ``n_queries_multilevel`` /
    ``n_skipped_multilevel``. ``rows``: reduce over these queries only (indices, repeats allowed).
    ``truncated_at=k`` (top-k mode) adds ``n_truncated_level{l}``, the queries with R > k.
    """
    _check_policy(no_positive)
    out: dict[str, Any] = {}
    for key, v in per.items():
        if not _is_count(key):
            vals = np.asarray(v, dtype=np.float64)
            out[key] = query_mean(vals if rows is None else vals[rows], no_positive)
    for key, v in per.items():
        if _is_count(key):
            r = np.asarray(v) if rows is None else np.asarray(v)[rows]
            used = int((r > 0).sum())
            name = "multilevel" if key == "n_relevant" else f"level{key.removeprefix('n_positives_level')}"
            out[f"n_queries_{name}"], out[f"n_skipped_{name}"] = used, int(len(r) - used)
            if truncated_at is not None and key != "n_relevant":
                out[f"n_truncated_{name}"] = int((r > truncated_at).sum())
    return out


def _chunk_torch(ranked, c, ctx, per_query, n_pos, n_rel) -> None:
    """Reference path: vectorised torch metrics on the ragged list of relevant items."""
    n_levels, recall_at, ndcg_at = ctx["n_levels"], ctx["recall_at"], ctx["ndcg_at"]
    if ranked[0] == "dense":
        st = ranked[1]
        rows, p = torch.nonzero(st, as_tuple=True)
        ranks, masks = p + 1, st[rows, p].to(torch.int64)
    elif ranked[0] == "counted":  # device engine: per-query counts, int32 ranks, uint8 masks
        rows = torch.repeat_interleave(torch.arange(c), ranked[1])
        ranks, masks = ranked[2].to(torch.int64), ranked[3].to(torch.int64)
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
    nk = len(recall_at)
    per = 3 + 2 * nk
    out = np.empty((c, n_levels * per + 4), dtype=np.float64)
    counts = np.empty((c, n_levels + 1), dtype=np.int64)
    args = (ctx["params"], out, counts)
    if ranked[0] == "tagged":
        _fused.fused_metrics_tagged(ranked[1], ranked[2], *args, _fused.row_parts(c))
    elif ranked[0] == "counted":
        per_row, ranks, tags = ranked[1].numpy(), ranked[2].numpy(), ranked[3].numpy()
        offsets = np.zeros(c + 1, dtype=np.int64)
        np.cumsum(per_row, out=offsets[1:])
        _fused.fused_metrics_lists(offsets, ranks, tags, *args)
    else:
        self_index = ctx["self_index"]
        me = np.full(c, -1, dtype=np.int64) if self_index is None else self_index.numpy()
        inputs = (ranked[1].numpy(), ctx["q_codes"].numpy(), ctx["g_codes"], me, *args)
        if ranked[0] == "keys":
            _fused.fused_metrics_keys(*inputs, _fused.row_parts(c))
        else:
            _fused.fused_metrics_search(*inputs)
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


# ------------------------------------------------------------------------------------------------
# torch device engine (CUDA; the same code runs on CPU for the tests)
# ------------------------------------------------------------------------------------------------
class _DeviceRanker:
    """Score matmul and ranking of query chunks on a torch device.

    Full mode: unique int64 order keys (score image, gallery index; the excluded query item gets
    the largest key), a row sort, the match masks gathered in ranked order, and only the relevant
    items (rows, 1-based ranks, masks) go back to the host. Top-k mode: ``torch.topk`` for the k-th
    score, then an exact tie fix at that boundary (items above it, then the tied items by
    increasing gallery index) and a stable sort of the k selected items.
    """

    # peak bytes per (query, gallery) pair: scores 4, keys 8, sort values + indices + workspace 32,
    # gathered codes 5, masks 1, nonzero output 16 (worst case)
    FULL_BYTES_PER_SCORE = 80
    TOP_K_BYTES_PER_SCORE = 24  # scores 4, two boolean masks 2, topk workspace, cumsum of tied rows
    CUDA_MEMORY_FRACTION = 0.5

    def __init__(self, g_emb: torch.Tensor, q_codes: torch.Tensor, g_codes_t: torch.Tensor, dev, same: bool):
        self.dev = torch.device(dev)
        self.g = g_emb.to(self.dev)
        self.q_codes = q_codes.to(self.dev)
        self.g_codes = g_codes_t.to(self.dev)
        self.same = same
        self.n = int(g_emb.shape[0])

    def chunk_size(self, n_q: int, chunk_size: int | None, memory_mb: int, per_score: int) -> int:
        if chunk_size is None:
            if self.dev.type == "cuda":
                free, _total = torch.cuda.mem_get_info(self.dev)
                budget = int(free * self.CUDA_MEMORY_FRACTION)
            else:
                budget = int(memory_mb) << 20
            chunk_size = budget // (max(self.n, 1) * per_score)
            chunk_size = min(chunk_size, (2**31 - 1) // max(self.n, 1))  # 32-bit element counts in kernels
        return int(min(max(chunk_size, 1), max(n_q, 1)))

    def scores(self, q_emb: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        s = q_emb[lo:hi].to(self.dev) @ self.g.T
        s += 0.0  # -0.0 -> +0.0: the same score
        if bool(torch.isnan(s).any()):
            raise ValueError(NAN_SCORES)
        return s

    def _self(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(hi - lo, device=self.dev)
        return rows, rows + lo

    def _tags(self, idx: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Match masks (bit l: column l equal) of the gallery items ``idx`` (chunk, m)."""
        qc = self.q_codes[lo:hi]
        tags = torch.zeros(idx.shape, dtype=torch.uint8, device=self.dev)
        for col in range(qc.shape[1]):
            eq = (self.g_codes[col][idx] == qc[:, col : col + 1]).to(torch.uint8)
            if col:
                eq <<= col
            tags |= eq
        return tags

    def rank_full(self, q_emb: torch.Tensor, lo: int, hi: int):
        x = self.scores(q_emb, lo, hi).view(torch.int32)
        x ^= (x >> 31) & 0x7FFFFFFF  # ascending int32 order == ascending float order
        x.bitwise_not_()  # descending
        keys = x.to(torch.int64)
        del x
        keys <<= 32
        keys |= torch.arange(self.n, dtype=torch.int64, device=self.dev)
        if self.same:
            rows, me = self._self(lo, hi)
            keys[rows, me] = (_TOP_HIGH << 32) | me  # last in its row
        keys = torch.sort(keys, dim=1).values
        keys &= _LOW32
        tags = self._tags(keys, lo, hi)
        del keys
        if self.same:
            tags[:, -1] = 0  # the query itself
        rows, pos = torch.nonzero(tags, as_tuple=True)
        counts = torch.bincount(rows, minlength=hi - lo)
        vals = tags[rows, pos]
        del rows, tags
        # compact transfer: 5 bytes per relevant item (int32 rank, uint8 mask) + a count per query
        return ("counted", counts.cpu(), (pos + 1).to(torch.int32).cpu(), vals.cpu())

    def top_k_index(self, q_emb: torch.Tensor, lo: int, hi: int, k: int) -> torch.Tensor:
        """(chunk, k) int64 gallery indices of the first k items of each query, in ranking order."""
        s = self.scores(q_emb, lo, hi)
        c = hi - lo
        if self.same:
            rows, me = self._self(lo, hi)
            s[rows, me] = float("-inf")
        thr = torch.topk(s, k, dim=1, sorted=False).values.min(1, keepdim=True).values
        gt = s > thr
        eq = s == thr
        if self.same:
            gt[rows, me] = False
            eq[rows, me] = False
        need = k - gt.sum(1, keepdim=True)
        sel = gt | eq
        fix = torch.nonzero((eq.sum(1, keepdim=True) > need).squeeze(1)).squeeze(1)
        if fix.numel():  # more items tie at the k-th score than fit: keep the lowest indices
            e = eq[fix]
            sel[fix] = gt[fix] | (e & (e.cumsum(1) <= need[fix]))
        del gt, eq
        idx = torch.nonzero(sel)[:, 1].view(c, k)  # increasing gallery index within each row
        order = torch.sort(s.gather(1, idx), dim=1, descending=True, stable=True).indices
        return idx.gather(1, order)

    def rank_top_k(self, q_emb: torch.Tensor, lo: int, hi: int, k: int) -> torch.Tensor:
        """(chunk, k) uint8 match masks of the first k items of each query, in ranking order."""
        return self._tags(self.top_k_index(q_emb, lo, hi, k), lo, hi).cpu()


def _top_k_scan(q_emb, g_emb, lo, hi, k, same, q_codes, g_codes, n_levels):
    """CPU engine of the top-k mode: the first k items of queries ``lo:hi`` in ranking order as
    (index, masks), (chunk, k) each. The scores are computed a tile of gallery columns at a time
    into one reused buffer, so no (chunk, N) matrix is written and faulted in; a tile splits the
    chunk's matmul by columns only, so the scores are those of the whole matmul. A tile takes the
    gallery rows that fit in ``TOP_K_SLICE_BYTES`` (the matmul's operand stays in the L2 cache:
    1024 rows of 128 floats ran faster than 4x as many on 2 cores), fewer when the tile's scores
    would exceed ``TOP_K_TILE_BYTES``. :func:`hglv2.metrics._fused.top_k_scan` keeps each
    query's candidates across tiles and :func:`hglv2.metrics._fused.top_k_finish` sorts them."""
    c, n, d = hi - lo, int(g_emb.shape[0]), int(g_emb.shape[1])
    q = q_emb[lo:hi]
    buf = np.empty((c, 2 * k + 64), dtype=np.int64)
    cnt = np.zeros(c, dtype=np.int64)
    thr = np.full(c, np.nan, dtype=np.float32)
    bad = np.zeros(c, dtype=np.uint8)
    me = _self_rows(lo, hi, same)
    width = min(n, max(_fused.LANES, min(TOP_K_SLICE_BYTES // (4 * max(d, 1)), TOP_K_TILE_BYTES // (4 * c))))
    flat = torch.empty(c * width, dtype=torch.float32)
    for a in range(0, n, width):
        b = min(a + width, n)
        s = flat[: c * (b - a)].view(c, b - a)
        torch.matmul(q, g_emb[a:b].T, out=s)
        _fused.top_k_scan(s.numpy(), s.view(torch.int32).numpy(), a, me, k, buf, cnt, thr, bad)
    if bad.any():
        raise ValueError(NAN_SCORES)
    index = np.empty((c, k), dtype=np.int64)
    tags = np.empty((c, k), dtype=np.uint8)
    _fused.top_k_finish(buf, cnt, k, q_codes, g_codes, n_levels, index, tags)
    return index, tags


def _self_rows(lo: int, hi: int, same: bool) -> np.ndarray:
    """The gallery index each query of ``lo:hi`` excludes (itself), -1 for none."""
    return np.arange(lo, hi, dtype=np.int64) if same else np.full(hi - lo, -1, dtype=np.int64)


def nearest_neighbours(
    query_embeddings,
    gallery_embeddings=None,
    k: int = 100,
    *,
    device: str | torch.device | None = None,
    memory_mb: int = 1024,
    chunk_size: int | None = None,
) -> np.ndarray:
    """The first ``k`` gallery items of each query's ranking (exact k-NN by dot product).

    Same ranking rule as :func:`evaluate` (decreasing score, ties by increasing gallery index;
    ``gallery_embeddings=None`` ranks the query set against itself with each query excluded by
    index), without sorting a full row. Returns a (Q, min(k, ranked items)) int64 array of gallery
    indices, best first. ``device`` as in :func:`evaluate`.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_emb = _as_embeddings(query_embeddings, "query_embeddings")
    same = gallery_embeddings is None
    g_emb = q_emb if same else _as_embeddings(gallery_embeddings, "gallery_embeddings")
    if q_emb.shape[1] != g_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: queries {q_emb.shape[1]}, gallery {g_emb.shape[1]}")
    n_q, n_g = q_emb.shape[0], g_emb.shape[0]
    n_ranked = n_g - 1 if same else n_g
    if n_q == 0 or n_ranked < 1:
        raise ValueError("need at least one query and one gallery item to rank")
    k = min(int(k), n_ranked)
    no_codes_q = torch.zeros((n_q, 0), dtype=torch.int32)
    no_codes_g = torch.zeros((0, n_g), dtype=torch.int32)
    parts = []
    if device is not None or not _fused.HAVE_NUMBA:
        ranker = _DeviceRanker(g_emb, no_codes_q, no_codes_g, device if device is not None else "cpu", same)
        chunk = ranker.chunk_size(n_q, chunk_size, memory_mb, _DeviceRanker.TOP_K_BYTES_PER_SCORE)
        for lo in range(0, n_q, chunk):
            parts.append(ranker.top_k_index(q_emb, lo, min(lo + chunk, n_q), k).cpu().numpy())
    else:
        chunk = chunk_size or max(1, (int(memory_mb) << 20) // (n_g * TOP_K_BYTES_PER_SCORE))
        g_codes = np.zeros((n_g, 0), dtype=np.int32)
        for lo in range(0, n_q, chunk):
            hi = min(lo + chunk, n_q)
            parts.append(_top_k_scan(q_emb, g_emb, lo, hi, k, same, no_codes_q[lo:hi].numpy(), g_codes, 0)[0])
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------------------
# top-k mode
# ------------------------------------------------------------------------------------------------
def top_k_metrics(
    tags: torch.Tensor, n_positives: torch.Tensor, recall_at: Sequence[int], map_at: int | None = MAP_AT
) -> dict[str, torch.Tensor]:
    """Per-level metrics from the first k ranked items (formulas of :mod:`hglv2.metrics.ranking`).

    Args:
        tags: (Q, k) uint8 match masks of the first k items in ranking order (bit l: level-l positive).
        n_positives: (Q, L) int64 exact number R of positives per query and level in the gallery.
        recall_at: k values of R@k and P@k (a value above k, possible only when k is the whole
            gallery, uses all k items).
        map_at: the mAP@k cutoff (GLDv2: 100), None to skip it.

    Returns:
        (Q,) float64 tensors ``mAP@R_level{l}`` (NaN when R = 0 or R > k), ``mAP@{map_at}_level{l}``,
        ``R@{k}_level{l}``, ``P@{k}_level{l}`` (NaN when R = 0).
    """
    n_rows, k = tags.shape
    pos = torch.arange(1, k + 1, dtype=torch.int64)
    out: dict[str, torch.Tensor] = {}
    for lev in range(n_positives.shape[1]):
        hit = ((tags >> lev) & 1).bool()
        cum = hit.cumsum(1)
        prec = torch.where(hit, cum.to(torch.float64) / pos.to(torch.float64), 0.0)
        r = n_positives[:, lev]
        none = r == 0
        in_r = pos[None, :] <= r[:, None]
        mapr = torch.where(in_r, prec, 0.0).sum(1) / r.clamp_min(1).to(torch.float64)
        out[f"mAP@R_level{lev}"] = _nan_where(mapr, none | (r > k))
        if map_at is not None:
            m = min(map_at, k)
            val = prec[:, :m].sum(1) / r.clamp(1, map_at).to(torch.float64)
            out[f"mAP@{map_at}_level{lev}"] = _nan_where(val, none)
        for kk in recall_at:
            m = min(kk, k)
            out[f"R@{kk}_level{lev}"] = _nan_where(hit[:, :m].any(1).to(torch.float64), none)
            out[f"P@{kk}_level{lev}"] = _nan_where(cum[:, m - 1].to(torch.float64) / kk, none)
    return out


def _evaluate_top_k(
    p: _Problem, top_k: int, ctx: dict[str, Any], reduce: bool, memory_mb: int, chunk_size: int | None
) -> dict[str, Any]:
    n_levels, n_ranked, recall_at = p.n_levels, p.n_ranked, p.recall_at
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    too_big = [k for k in recall_at if k > top_k]
    if too_big:
        raise ValueError(
            f"recall_at value {too_big[0]} is larger than top_k={top_k} (R@k and P@k need k <= top_k)"
        )
    if ctx["ndcg_at"] is not None:
        raise ValueError("ndcg_at needs the full ranking: leave top_k unset")
    k = min(top_k, n_ranked)
    map_at = MAP_AT if (top_k >= MAP_AT or k == n_ranked) else None
    chunk_size, select = _top_k_selector(p, k, memory_mb, chunk_size)
    per_query: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, p.n_q, chunk_size):
        hi = min(lo + chunk_size, p.n_q)
        res = _top_k_chunk_metrics(select(lo, hi), p.n_pos_all[lo:hi], recall_at, map_at)
        for name, val in res.items():
            per_query.setdefault(name, []).append(val)
    per: dict[str, Any] = {n: torch.cat(v).numpy() for n, v in per_query.items()}
    for lev in range(n_levels):
        per[f"n_positives_level{lev}"] = p.n_pos_all[:, lev].copy()
    if not reduce:
        return per
    out = {"n_queries": p.n_q, "n_gallery": n_ranked, "top_k": int(top_k)}
    out.update(reduce_per_query(per, truncated_at=k))
    return out


def _top_k_selector(p: _Problem, k: int, memory_mb: int, chunk_size: int | None):
    """(chunk size, select): ``select(lo, hi)`` gives the (chunk, k) uint8 match masks of the first
    k items of queries ``lo:hi`` in ranking order (torch device ranker or the numba scan)."""
    if p.dev is not None or p.backend == "torch":
        ranker = _DeviceRanker(p.g_emb, p.q_codes, p.g_codes_t, p.dev if p.dev is not None else "cpu", p.same)
        chunk_size = ranker.chunk_size(p.n_q, chunk_size, memory_mb, _DeviceRanker.TOP_K_BYTES_PER_SCORE)

        def select(lo: int, hi: int) -> torch.Tensor:
            return ranker.rank_top_k(p.q_emb, lo, hi, k)

        return chunk_size, select
    g_codes = np.ascontiguousarray(p.g_codes_t.numpy().T)
    if chunk_size is None:
        chunk_size = max(1, (int(memory_mb) << 20) // (max(p.n_g, 1) * TOP_K_BYTES_PER_SCORE))
    chunk_size = int(min(max(chunk_size, 1), p.n_q))

    def select(lo: int, hi: int) -> torch.Tensor:
        q_codes = p.q_codes[lo:hi].numpy()
        tags = _top_k_scan(p.q_emb, p.g_emb, lo, hi, k, p.same, q_codes, g_codes, p.n_levels)[1]
        return torch.from_numpy(tags)

    return chunk_size, select


def _top_k_chunk_metrics(
    tags: torch.Tensor, n_pos: np.ndarray, recall_at: tuple[int, ...], map_at: int | None
) -> dict[str, torch.Tensor]:
    """:func:`top_k_metrics` of one chunk; the numba kernel when installed (the same function on
    every path: identical numbers)."""
    if not _fused.HAVE_NUMBA:
        return top_k_metrics(tags, torch.from_numpy(n_pos), recall_at, map_at)
    n_levels = n_pos.shape[1]
    ks = np.asarray(recall_at, dtype=np.int64)
    per = 2 + 2 * len(ks)
    vals = np.empty((tags.shape[0], n_levels * per))
    _fused.top_k_metrics(tags.numpy(), n_pos, ks, map_at or 0, vals)
    res = {}
    for lev in range(n_levels):
        res[f"mAP@R_level{lev}"] = vals[:, lev * per]
        if map_at is not None:
            res[f"mAP@{map_at}_level{lev}"] = vals[:, lev * per + 1]
        for j, kk in enumerate(recall_at):
            res[f"R@{kk}_level{lev}"] = vals[:, lev * per + 2 + j]
            res[f"P@{kk}_level{lev}"] = vals[:, lev * per + 2 + len(ks) + j]
    return {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in res.items()}
