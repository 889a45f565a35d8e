"""Uncertainty of benchmark metrics: bootstrap intervals, paired tests, Holm's correction.

A benchmark evaluates every (loss, seed) run on the same queries, so a metric is a matrix of
per-query values ``x[s, q]`` (seeds x queries; NaN where the metric is undefined for a query,
e.g. a query without a positive at that level). Its point value is the mean over seeds of the
mean over the defined queries (:func:`point`), which is the benchmark's headline number.

- :func:`bootstrap_interval`: a percentile bootstrap interval of that value. With one seed the
  queries are resampled; with several it is a *hierarchical* bootstrap: resample the seeds, then,
  within each drawn seed, the queries (both with replacement).
- :func:`paired_test`: two losses compared on the same queries and seeds through the per-query
  differences ``d[s, q] = a[s, q] - b[s, q]``: a bootstrap interval of the mean difference (the
  same hierarchical resampling) and a two-sided sign-flip permutation p-value (under the null
  hypothesis that the two losses are exchangeable on each (seed, query), each difference's sign
  is flipped at random; p = (1 + #{|T*| >= |T|}) / (1 + B)).
- :func:`holm`: Holm's step-down adjustment of a family of p-values.

Every random draw comes from ``numpy.random.default_rng(seed)`` with a fixed seed, so a rerun
gives the same numbers (and the same report bytes). Only numpy is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "bootstrap_interval", "holm", "paired_test", "point", "resample_means"]

DEFAULT_RESAMPLES = 2000
"""Bootstrap resamples and permutations of the benchmark report."""


def _matrix(values: Any) -> np.ndarray:
    """``values`` as a float64 (seeds, queries) matrix; a 1-d array is one seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty (seeds, queries) matrix, got shape {x.shape}")
    return x


def _row_means(x: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries (NaN for a row without any)."""
    ok = np.isfinite(x)
    n = ok.sum(axis=-1)
    total = np.where(ok, x, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def point(values: Any) -> float:
    """Mean over seeds of the mean over the defined queries of a (seeds, queries) matrix."""
    return float(np.nanmean(_row_means(_matrix(values))))


def resample_means(values: Any, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` bootstrap replicates of :func:`point`.

    One seed: queries drawn with replacement. Several seeds: seeds drawn with replacement, then
    queries within each drawn seed. The draws depend only on the matrix shape and ``seed``, so
    matrices of the same shape (two losses) get the same resampled units.
    """
    x = _matrix(values)
    ok = np.isfinite(x)
    filled = np.where(ok, x, 0.0)
    out = []
    for seeds, counts in _draws(x.shape, resamples, seed):
        # sums[b, j, s]: the j-th drawn query sample of resample b applied to seed s's values
        sums = counts @ filled.T
        defined = counts @ ok.T.astype(np.float64)
        pick = (np.arange(len(seeds))[:, None], np.arange(seeds.shape[1])[None, :], seeds)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = np.where(defined[pick] > 0, sums[pick] / defined[pick], np.nan)
            out.append(np.nanmean(per_seed, axis=1))
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _draws(shape: tuple[int, int], resamples: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The resampling of :func:`resample_means` for a (seeds, queries) shape, in chunks: (drawn
    seeds (B, S'), query counts (B, S', Q)) per chunk (S' = 1 for one seed). Cached: every metric
    and loss of a benchmark shares the same draws."""
    n_seeds, n_queries = shape
    rng = np.random.default_rng(seed)
    chunks = []
    for size in _chunks(resamples, n_seeds * n_queries):
        if n_seeds == 1:
            seeds = np.zeros((size, 1), dtype=np.int64)
        else:
            seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        queries = rng.integers(0, n_queries, size=(size, seeds.shape[1], n_queries))
        slots = np.arange(size * seeds.shape[1]).reshape(size, -1, 1) * n_queries
        counts = np.bincount((slots + queries).ravel(), minlength=queries.size)
        chunks.append((seeds, counts.reshape(queries.shape).astype(np.float64)))
    return tuple(chunks)


def _chunks(total: int, per_item: int, budget: int = 1 << 22) -> list[int]:
    """Split ``total`` replicates into chunks of at most ``budget`` values (bounded memory)."""
    step = max(1, budget // max(per_item, 1))
    return [min(step, total - start) for start in range(0, total, step)]


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_interval(
    values: Any, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Point value and percentile bootstrap interval of a (seeds, queries) matrix.

    Returns ``{"mean", "low", "high", "level", "seeds", "queries", "method"}``; ``method`` is
    ``"bootstrap over queries"`` (one seed) or ``"hierarchical bootstrap (seeds, then queries)"``.
    """
    x = _matrix(values)
    lo, hi = _percentiles(resample_means(x, resamples, seed), level)
    return {
        "mean": point(x),
        "low": lo,
        "high": hi,
        "level": level,
        "seeds": int(x.shape[0]),
        "queries": int(x.shape[1]),
        "method": _method(x.shape[0]),
    }


def _method(n_seeds: int) -> str:
    return "bootstrap over queries" if n_seeds == 1 else "hierarchical bootstrap (seeds, then queries)"


def sign_flip_pvalue(diff: Any, permutations: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test on a (seeds, queries) matrix of
    differences, statistic :func:`point`; ``(1 + #{|T*| >= |T|}) / (1 + permutations)``.

    Identical losses (all differences 0 or NaN) give 1.
    """
    d = _matrix(diff)
    observed = abs(point(d))
    if not np.isfinite(observed) or observed == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    ok = np.isfinite(d)
    filled = np.where(ok, d, 0.0)
    defined = ok.sum(axis=1)
    rows = defined > 0
    hits = 0
    for size in _chunks(permutations, d.size):
        signs = rng.integers(0, 2, size=(size, *d.shape), dtype=np.int8) * 2 - 1
        # the defined queries of each seed do not depend on the signs: only the sums change
        sums = np.einsum("psq,sq->ps", signs, filled)
        stats = np.abs((sums[:, rows] / defined[rows]).mean(axis=1))
        # a relative tolerance keeps float rounding of equal sums from deciding the count
        hits += int((stats >= observed * (1 - 1e-12)).sum())
    return (1 + hits) / (1 + permutations)


def paired_test(
    a: Any, b: Any, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Compare ``a`` with ``b`` (same (seeds, queries) layout: the same queries and seeds).

    Returns ``{"difference", "low", "high", "p_value", "seeds", "queries", "method"}``: the mean
    of ``a - b`` (:func:`point`), its bootstrap interval (:func:`resample_means`) and the sign-flip
    permutation p-value (:func:`sign_flip_pvalue`). A query undefined in either is left out.
    """
    xa, xb = _matrix(a), _matrix(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values need the same (seeds, queries) shape: {xa.shape} vs {xb.shape}")
    d = xa - xb
    lo, hi = _percentiles(resample_means(d, resamples, seed), level)
    return {
        "difference": point(d),
        "low": lo,
        "high": hi,
        "p_value": sign_flip_pvalue(d, resamples, seed),
        "seeds": int(d.shape[0]),
        "queries": int(d.shape[1]),
        "method": f"sign-flip permutation test; interval: {_method(d.shape[0])}",
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; reject where adjusted < alpha).

    Sorted ascending, the k-th smallest (0-based) of m becomes ``max_{j<=k} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in adjusted]
