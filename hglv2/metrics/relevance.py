"""Relevance levels between hierarchical labels and the H-AP relevance functions.

Labels are integer arrays of shape ``(N, L)``; column 0 is the finest level (landmark), higher
columns are coarser. A negative label means "unknown" and never matches anything (not even another
negative label).

**Match mask.** For a (query, gallery item) pair, bit ``l`` of the mask is set when column ``l`` is
equal (and known). The binary metrics of level ``l`` treat the pair as positive iff bit ``l`` is set.

**Relevance level.** The level of a pair is the number of equal columns,
``v = sum_l [q_l == g_l]`` in ``0..L`` (for a tree: the depth of the deepest shared ancestor, so
``v = L`` means same landmark and ``v = 0`` means nothing shared). H-AP, NDCG and ASI use ``v``.

**Relevance values for H-AP** (``N_q(v)`` = number of ranked gallery items at level exactly ``v``
for query ``q``; the query itself is not counted when it is excluded; ``w(v) = v ** alpha`` for a
float ``alpha``, or ``w(v) = alpha[v - 1]`` for a sequence of ``L`` weights):

* ``pop`` (default, HAPPIER): ``rel(v) = w(v) / N_q(v)``, ``rel(0) = 0``.
* ``map``: ``rel(v) = sum_{m=1..v} w(m) / N_q(>= m)``; H-AP then equals the weighted mean
  ``sum_m w(m) AP_{>=m} / sum_m w(m)`` of the binary APs where "positive" means level ``>= m``
  (levels ``m`` without any such item are left out).

The SupRank/HAPPIER code writes ``w(v) = (v / (L - 1)) ** alpha``; the constant factor cancels in H-AP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

RELEVANCES = ("pop", "map")


def as_label_matrix(labels, name: str = "labels") -> np.ndarray:
    """Return labels as an int64 array of shape (N, L); a 1-D array becomes (N, 1)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape (N,) or (N, L), got {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: needs at least one label column")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name}: labels must be integers")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def encode_labels(query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each column to dense int32 codes shared by both sides; unknown (negative) labels become
    -2 on the query side and -1 on the gallery side, so they never compare equal."""
    if query_labels.shape[1] != gallery_labels.shape[1]:
        raise ValueError(
            f"query labels have {query_labels.shape[1]} columns, gallery labels {gallery_labels.shape[1]}"
        )
    n_q = query_labels.shape[0]
    qcodes = np.empty(query_labels.shape, dtype=np.int32)
    gcodes = np.empty(gallery_labels.shape, dtype=np.int32)
    for col in range(query_labels.shape[1]):
        both = np.concatenate([query_labels[:, col], gallery_labels[:, col]])
        inv = pd.factorize(both)[0].astype(np.int32)  # hashing: several times faster than np.unique
        qc, gc = inv[:n_q], inv[n_q:]
        qc[query_labels[:, col] < 0] = -2
        gc[gallery_labels[:, col] < 0] = -1
        qcodes[:, col], gcodes[:, col] = qc, gc
    return torch.from_numpy(qcodes), torch.from_numpy(np.ascontiguousarray(gcodes.T))


def match_mask(query_codes: torch.Tensor, gallery_codes_t: torch.Tensor) -> torch.Tensor:
    """Bit mask (Qc, N) uint8: bit ``l`` set iff column ``l`` is equal.

    ``query_codes`` is (Qc, L) and ``gallery_codes_t`` is (L, N) (transposed, contiguous rows), both
    from :func:`encode_labels`.
    """
    n_levels = query_codes.shape[1]
    if n_levels > 8:
        raise ValueError("at most 8 label columns are supported")
    mask = None
    for col in range(n_levels):
        eq = (query_codes[:, col : col + 1] == gallery_codes_t[col][None, :]).to(torch.uint8)
        if col:
            eq <<= col
            mask |= eq
        else:
            mask = eq
    return mask


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def popcount(mask: torch.Tensor) -> torch.Tensor:
    """Number of set bits of a uint8 tensor (= relevance level), as int64."""
    return _POPCOUNT[mask.to(torch.int64)]


def pair_levels(query_labels, gallery_labels) -> np.ndarray:
    """Dense (Q, N) int64 matrix of relevance levels (number of equal known columns)."""
    q = as_label_matrix(query_labels, "query_labels")
    g = as_label_matrix(gallery_labels, "gallery_labels")
    qc, gct = encode_labels(q, g)
    return popcount(match_mask(qc, gct)).numpy()


def level_weights(n_levels: int, alpha: float | Sequence[float] = 1.0) -> np.ndarray:
    """Weights ``w(1..L)``: ``v ** alpha`` for a float, or the given sequence of L weights."""
    if isinstance(alpha, (int, float, np.floating, np.integer)):
        w = np.arange(1, n_levels + 1, dtype=np.float64) ** float(alpha)
    else:
        w = np.asarray(list(alpha), dtype=np.float64)
        if w.shape != (n_levels,):
            raise ValueError(f"alpha: expected a float or {n_levels} per-level weights, got {list(alpha)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("alpha: level weights must be finite, >= 0 and not all zero")
    return w


def relevance_table(
    level_counts: torch.Tensor, relevance: str = "pop", alpha: float | Sequence[float] = 1.0
) -> torch.Tensor:
    """Relevance value of each level per query.

    Args:
        level_counts: (Q, L+1) counts ``N_q(v)`` of gallery items at level exactly ``v``.
        relevance: ``"pop"`` or ``"map"`` (module docstring).
        alpha: exponent of ``w(v) = v ** alpha`` or a sequence of L weights.

    Returns:
        (Q, L+1) float64 tensor ``rel[q, v]``; column 0 is 0; levels without items get 0 (pop).
    """
    counts = level_counts.to(torch.float64)
    n_levels = counts.shape[1] - 1
    w = torch.from_numpy(level_weights(n_levels, alpha))
    rel = torch.zeros_like(counts)
    if relevance == "pop":
        c = counts[:, 1:]
        rel[:, 1:] = torch.where(c > 0, w / c.clamp_min(1), torch.zeros_like(c))
    elif relevance == "map":
        at_least = counts[:, 1:].flip(1).cumsum(1).flip(1)  # N_q(>= m), m = 1..L
        step = torch.where(at_least > 0, w / at_least.clamp_min(1), torch.zeros_like(at_least))
        rel[:, 1:] = step.cumsum(1)
    else:
        raise ValueError(f"relevance must be one of {RELEVANCES}, got {relevance!r}")
    return rel
