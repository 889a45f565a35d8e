"""Label matrices for the metrics: validation, dense codes, match masks and relevance tables.

The relevance convention (levels, weights, ``pop``/``map``) is :mod:`hglv2.relevance`; this module
applies it to the metrics' tensors. Labels are integer arrays of shape ``(N, L)``; column 0 is the
finest level.

**Match mask.** For a (query, gallery item) pair, bit ``l`` of the mask is set when column ``l`` is
equal (and known). The binary metrics of level ``l`` treat the pair as positive iff bit ``l`` is set;
the number of set bits is the pair's relevance level.

In the metrics, ``N_q(v)`` counts the ranked gallery items only (the query itself is not counted
when it is excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from hglv2 import relevance as _relevance


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
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query labels have {q.shape[1]} columns, gallery labels {g.shape[1]}")
    return _relevance.pair_levels(q, g, np.zeros((q.shape[0], g.shape[0]), dtype=np.int64))


def relevance_table(
    level_counts: torch.Tensor, relevance: str = "pop", alpha: float | Sequence[float] = 1.0
) -> torch.Tensor:
    """Relevance value of each level per query (:mod:`hglv2.relevance`).

    Args:
        level_counts: (Q, L+1) counts ``N_q(v)`` of gallery items at level exactly ``v``.
        relevance: ``"pop"`` or ``"map"``.
        alpha: exponent of ``w(v) = v ** alpha`` or a sequence of L weights.

    Returns:
        (Q, L+1) float64 tensor ``rel[q, v]``; column 0 is 0; levels without items get 0.
    """
    _relevance.check_relevance(relevance)
    counts = level_counts.to(torch.float64)
    w = torch.from_numpy(_relevance.level_weights(counts.shape[1] - 1, alpha))
    return torch.stack(_relevance.relevance_columns(counts.unbind(1), w, relevance), dim=1)
