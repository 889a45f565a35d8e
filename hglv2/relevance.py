r"""The relevance convention shared by the losses and the metrics (levels, weights, pop/map).

Labels are integer arrays of shape ``(N, L)``; column 0 is the finest level (landmark), higher
columns are coarser. A negative label means "unknown" and never matches anything (not even another
negative label).

**Relevance level.** The level of a (query, item) pair is the number of equal known columns,
``v = sum_l [q_l == g_l >= 0]`` in ``0..L`` (for a tree: the depth of the deepest shared ancestor,
so ``v = L`` means same landmark and ``v = 0`` means nothing shared).

**Relevance values for H-AP** (``N_q(v)`` = number of items at level exactly ``v`` for query ``q``;
``w(v) = v ** alpha`` for a float ``alpha``, or ``w(v) = alpha[v - 1]`` for a sequence of ``L``
weights):

* ``pop`` (default, HAPPIER): ``rel(v) = w(v) / N_q(v)``, ``rel(0) = 0``.
* ``map``: ``rel(v) = sum_{m=1..v} w(m) / N_q(>= m)``; H-AP then equals the weighted mean
  ``sum_m w(m) AP_{>=m} / sum_m w(m)`` of the binary APs where "positive" means level ``>= m``
  (levels ``m`` without any such item are left out).

Levels without items get relevance 0. The SupRank/HAPPIER code writes ``w(v) = (v / (L - 1)) **
alpha``; the constant factor cancels in H-AP. Which items ``N_q`` counts is the caller's choice: the
metrics count the ranked gallery only, the training losses count the query as its own item.

The formulas use only arithmetic operators, so they run unchanged on numpy arrays and torch
tensors (on any device, in the caller's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hglv2.errors import InputError

__all__ = ["RELEVANCES", "check_relevance", "level_weights", "pair_levels", "relevance_columns"]

RELEVANCES = ("pop", "map")


def check_relevance(relevance: str) -> str:
    """``relevance`` if it is ``"pop"`` or ``"map"``; :class:`InputError` otherwise."""
    if relevance not in RELEVANCES:
        raise InputError(f"relevance: expected 'pop' or 'map', got {relevance!r}")
    return relevance


def level_weights(n_levels: int, alpha: float | Sequence[float] = 1.0) -> np.ndarray:
    """Weights ``w(1..L)`` as float64: ``v ** alpha`` for a float, or the given sequence of L weights.

    Raises:
        InputError: a sequence of the wrong length, or weights not finite, negative or all zero.
    """
    if isinstance(alpha, (int, float, np.floating, np.integer)):
        w = np.array([float(v) ** float(alpha) for v in range(1, n_levels + 1)], dtype=np.float64)
    else:
        w = np.asarray(list(alpha), dtype=np.float64)
        if w.shape != (n_levels,):
            raise InputError(f"alpha: expected a float or {n_levels} per-level weights, got {list(alpha)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise InputError("alpha: level weights must be finite, >= 0 and not all zero")
    return w


def pair_levels(query_labels: Any, ref_labels: Any, out: Any) -> Any:
    """Add the relevance level of every (query, item) pair to ``out`` and return it.

    Args:
        query_labels: (Q, L) integer labels (numpy array or torch tensor).
        ref_labels: (N, L) integer labels of the same kind.
        out: (Q, N) integer zeros of the same kind (its dtype is the result's).
    """
    for c in range(query_labels.shape[1]):
        q = query_labels[:, c, None]
        out += (q == ref_labels[None, :, c]) & (q >= 0)
    return out


def relevance_columns(counts: Sequence[Any], weights: Sequence[float], relevance: str = "pop") -> list[Any]:
    """Relevance of each level per query, one column per level.

    Args:
        counts: ``L + 1`` float arrays (numpy or torch, one value per query): ``counts[v]`` is
            ``N_q(v)``, the number of items at level exactly ``v``.
        weights: ``w(1..L)`` (:func:`level_weights`).
        relevance: ``"pop"`` or ``"map"`` (module docstring).

    Returns:
        ``L + 1`` arrays like ``counts[0]``: ``rel_q(v)`` for ``v = 0..L`` (column 0 is 0).
    """
    check_relevance(relevance)
    n_levels = len(counts) - 1
    if relevance == "pop":
        per_level = counts[1:]
    else:
        per_level = [counts[n_levels]]  # N_q(>= m), from the coarsest level down
        for m in range(n_levels - 1, 0, -1):
            per_level.insert(0, per_level[0] + counts[m])
    cols = [counts[0] * 0.0]
    for w, c in zip(weights, per_level, strict=True):
        # w / max(c, 1) where c > 0, else 0 (arithmetic only: numpy and torch alike)
        step = w / (c + (c == 0)) * (c > 0)
        cols.append(step if relevance == "pop" or len(cols) == 1 else cols[-1] + step)
    return cols
