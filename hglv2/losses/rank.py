r"""The SupRank rank operator on (query, relevant item) pairs, chunked with bounded memory.

For a query ``q`` with scores ``s_j = <e_q, r_j>`` against the reference set and a relevant item
``k`` (relevance level ``l_k >= 1``), with ``t_j = s_j - s_k``:

.. math::

    \mathrm{rank}(k) = 1 + \sum_{j \ne k,\ l_j \ge l_k} H(t_j)
                         + \sum_{j:\ l_j < l_k} \tilde H(t_j),
    \qquad
    \mathrm{rank}^+(k) = \mathrm{rel}_k + \sum_{j \ne k} H(t_j)\,\min(\mathrm{rel}_j, \mathrm{rel}_k)

``H`` is the exact Heaviside step with ``H(0) = 1`` (ties count against ``k``, as in the reference
code) and carries no gradient; ``\tilde H`` is the SupRank surrogate

.. math::

    \tilde H(t) = \begin{cases}
        \sigma(t/\tau)               & t \le 0 \\
        \mathrm{start} + \sigma(t/\tau) & 0 < t \le \delta \\
        \rho\,(t - \delta) + \mathrm{offset} & t > \delta
    \end{cases}

with defaults ``tau=0.01, rho=100, delta=0.05, start=0.5, offset=1.44`` (``offset=None`` uses
``start + sigma(delta / tau)``). Binary losses (SupAP, SupRecall) use 0/1 levels and
``rel = level``, so ``rank^+`` counts the positives ranked at or before ``k``.

**Upper bound.** ``\tilde H(t) \ge H(t)`` for every ``t \ne 0`` whenever ``start >= 0.5`` and
``offset >= 1`` (defaults), and ``\tilde H(0) = 1/2``. Hence the surrogate rank is at least the true
rank (ties between ``k`` and a less relevant item counted 1/2, i.e. the mid-rank), and ``1 - SupAP``,
``1 - SupHAP``, ``1 - SupNDCG`` are upper bounds of ``1 - AP``, ``1 - H-AP``, ``1 - NDCG``.

Two other step choices give the baselines/checks: ``approximation="sigmoid"`` (Smooth-AP: every
step, including those of ``rank^+``, is ``sigma(t/tau)``) and ``approximation="exact"``
(Heaviside everywhere, no gradient: the true rank, used to check exactness).

**Memory.** The reference code builds a ``B x N x N`` difference tensor. Here the work is done on
the ``P`` (query, relevant item) pairs only, ``chunk_size`` pair-rows of length ``N`` at a time, and
the backward pass recomputes each chunk and accumulates ``dL/ds`` directly: peak memory is
``O(B x N + P + chunk_size)`` and no ``P x N`` tensor is kept for autograd. Everything is computed
in float32 (autocast-safe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hglv2.errors import InputError

__all__ = [
    "StepConfig",
    "suprank_step",
    "sigmoid_step",
    "heaviside",
    "pair_ranks",
]

APPROXIMATIONS = ("suprank", "sigmoid", "exact")
DEFAULT_CHUNK = 1 << 18  # elements (pair-rows x N) processed at once


@dataclass(frozen=True)
class StepConfig:
    """Parameters of the step functions (see module docstring)."""

    approximation: str = "suprank"
    tau: float = 0.01
    rho: float = 100.0
    delta: float = 0.05
    start: float = 0.5
    offset: float | None = 1.44

    def __post_init__(self) -> None:
        if self.approximation not in APPROXIMATIONS:
            raise InputError(f"approximation: expected one of {APPROXIMATIONS}, got {self.approximation!r}")
        if not self.tau > 0:
            raise InputError(f"tau: must be > 0, got {self.tau}")
        if self.delta < 0:
            raise InputError(f"delta: must be >= 0, got {self.delta}")

    @property
    def resolved_offset(self) -> float:
        """``offset``, or ``start + sigmoid(delta / tau)`` when it is None."""
        if self.offset is not None:
            return float(self.offset)
        return self.start + 1.0 / (1.0 + math.exp(-self.delta / self.tau))


def heaviside(t: Tensor) -> Tensor:
    """Exact step ``H(t) = 1[t >= 0]`` (ties count), no gradient."""
    return (t >= 0).to(t.dtype)


def sigmoid_step(t: Tensor, tau: float = 0.01) -> Tensor:
    """Smooth-AP step ``sigma(t / tau)``."""
    return torch.sigmoid(t / tau)


def suprank_step(
    t: Tensor,
    tau: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    start: float = 0.5,
    offset: float | None = 1.44,
) -> Tensor:
    """SupRank surrogate step ``H~(t)`` (differentiable; see module docstring for the formula)."""
    off = StepConfig(tau=tau, rho=rho, delta=delta, start=start, offset=offset).resolved_offset
    sig = torch.sigmoid(t / tau)
    return torch.where(t > delta, rho * (t - delta) + off, torch.where(t > 0, start + sig, sig))


def _level_counts(scores: Tensor, levels: Tensor, pair_q: Tensor, pair_k: Tensor, lvl: int) -> Tensor:
    """(P,) ``#{j : l_j = lvl, s_j >= s_k}`` for each pair, by sorting (O(B N log N))."""
    masked = torch.where(levels == lvl, scores, float("-inf")).sort(dim=1).values
    below = torch.searchsorted(masked, scores, side="left")  # items of level lvl with s_j < s_k
    return (scores.size(1) - below)[pair_q, pair_k].to(scores.dtype)


class _PairRanks(torch.autograd.Function):
    """SupRank (or exact) rank and exact rank+ of every (query, relevant item) pair.

    Exact parts (items at least as relevant as k for rank; every item for rank+) are counted per
    level with a sort and a binary search; the surrogate sums over less relevant items run in
    chunks of pair rows, and the backward pass recomputes them chunk by chunk.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        scores: Tensor,
        pair_q: Tensor,
        pair_k: Tensor,
        levels: Tensor,
        rel_table: Tensor | None,
        cfg: StepConfig,
        rows_per_chunk: int,
        need_plus: bool,
    ) -> tuple[Tensor, Tensor]:
        P = pair_q.numel()
        num_levels = int(levels.max()) if levels.numel() else 0
        lk = levels[pair_q, pair_k]
        rank = scores.new_zeros(P)
        rank_plus = scores.new_zeros(P)
        if rel_table is not None:
            tab = rel_table[pair_q]
            rk = tab.gather(1, lk.long()[:, None])[:, 0]
        for lvl in range(0 if cfg.approximation == "exact" else 1, num_levels + 1):
            c = _level_counts(scores, levels, pair_q, pair_k, lvl)
            if cfg.approximation == "exact":
                rank += c
            else:
                rank += torch.where(lk <= lvl, c, 0.0)
            if need_plus and lvl >= 1:
                if rel_table is None:
                    rank_plus += c
                else:
                    rank_plus += c * torch.minimum(tab[:, lvl], rk)
        if cfg.approximation == "suprank":
            off = cfg.resolved_offset
            for lvl, sel in _level_groups(lk, num_levels):
                less_scores = torch.where(levels < lvl, scores, float("-inf"))
                for a in range(0, sel.numel(), rows_per_chunk):
                    idx = sel[a : a + rows_per_chunk]
                    q, k = pair_q[idx], pair_k[idx]
                    t = less_scores.index_select(0, q).sub_(scores[q, k][:, None])
                    sig = torch.sigmoid(t / cfg.tau).add_((t > 0).to(t.dtype), alpha=cfg.start)
                    val = torch.where(t > cfg.delta, (t - cfg.delta).mul_(cfg.rho).add_(off), sig)
                    rank[idx] += val.sum(1)
        ctx.save_for_backward(scores, pair_q, pair_k, levels, lk)
        ctx.cfg = cfg
        ctx.rows_per_chunk = rows_per_chunk
        ctx.num_levels = num_levels
        if cfg.approximation == "exact":
            ctx.mark_non_differentiable(rank, rank_plus)
        else:
            ctx.mark_non_differentiable(rank_plus)
        return rank, rank_plus

    @staticmethod
    def backward(ctx, g_rank: Tensor, g_plus: Tensor):  # type: ignore[override]
        scores, pair_q, pair_k, levels, lk = ctx.saved_tensors
        cfg: StepConfig = ctx.cfg
        grad = torch.zeros_like(scores)
        if cfg.approximation == "suprank":
            inv_tau = 1.0 / cfg.tau
            for lvl, sel in _level_groups(lk, ctx.num_levels):
                less_scores = torch.where(levels < lvl, scores, float("-inf"))
                for a in range(0, sel.numel(), ctx.rows_per_chunk):
                    idx = sel[a : a + ctx.rows_per_chunk]
                    q, k = pair_q[idx], pair_k[idx]
                    t = less_scores.index_select(0, q).sub_(scores[q, k][:, None])
                    sig = torch.sigmoid(t / cfg.tau)
                    d = torch.where(t > cfg.delta, cfg.rho, sig.sub_(sig * sig).mul_(inv_tau))
                    coef = d.mul_(g_rank[idx, None])
                    # d t_j / d s_j = 1 and d t_j / d s_k = -1
                    grad.index_add_(0, q, coef)
                    grad.index_put_((q, k), -coef.sum(1), accumulate=True)
        return grad, None, None, None, None, None, None, None


def _level_groups(lk: Tensor, num_levels: int):
    """Yield ``(level, indices of the pairs whose item k has that level)`` for levels 1..L."""
    for lvl in range(1, num_levels + 1):
        sel = (lk == lvl).nonzero()[:, 0]
        if sel.numel():
            yield lvl, sel


class _SmoothPairRanks(torch.autograd.Function):
    """Smooth-AP ranks: every step (rank and rank+) is ``sigmoid(t / tau)``; chunked."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        scores: Tensor,
        pair_q: Tensor,
        pair_k: Tensor,
        levels: Tensor,
        rel_table: Tensor | None,
        cfg: StepConfig,
        rows_per_chunk: int,
        need_plus: bool,
    ) -> tuple[Tensor, Tensor]:
        P = pair_q.numel()
        rank = scores.new_zeros(P)
        rank_plus = scores.new_zeros(P)
        for a in range(0, P, rows_per_chunk):
            b = min(P, a + rows_per_chunk)
            q, k = pair_q[a:b], pair_k[a:b]
            sig = torch.sigmoid((scores.index_select(0, q) - scores[q, k][:, None]) / cfg.tau)
            rank[a:b] = 0.5 + sig.sum(1)  # 1 + sum over j != k; the self term is sigma(0) = 1/2
            if need_plus:
                w = _plus_weights(levels, rel_table, q, k, scores.dtype)
                rank_plus[a:b] = (sig * w).sum(1) + 0.5 * w.gather(1, k[:, None])[:, 0]
        ctx.save_for_backward(scores, pair_q, pair_k, levels, rel_table)
        ctx.cfg = cfg
        ctx.rows_per_chunk = rows_per_chunk
        return rank, rank_plus

    @staticmethod
    def backward(ctx, g_rank: Tensor, g_plus: Tensor):  # type: ignore[override]
        scores, pair_q, pair_k, levels, rel_table = ctx.saved_tensors
        cfg: StepConfig = ctx.cfg
        grad = torch.zeros_like(scores)
        P = pair_q.numel()
        for a in range(0, P, ctx.rows_per_chunk):
            b = min(P, a + ctx.rows_per_chunk)
            q, k = pair_q[a:b], pair_k[a:b]
            sig = torch.sigmoid((scores.index_select(0, q) - scores[q, k][:, None]) / cfg.tau)
            d = (sig - sig * sig) / cfg.tau
            w = g_rank[a:b, None] + g_plus[a:b, None] * _plus_weights(levels, rel_table, q, k, d.dtype)
            coef = d * w
            # the self term j = k contributes +coef and -coef to s_k: it cancels
            grad.index_add_(0, q, coef)
            grad.index_put_((q, k), -coef.sum(1), accumulate=True)
        return grad, None, None, None, None, None, None, None


def _plus_weights(levels: Tensor, rel_table: Tensor | None, q: Tensor, k: Tensor, dtype) -> Tensor:
    """``min(rel_j, rel_k)`` rows for the pairs (binary: ``1[l_j >= 1]``)."""
    lev = levels.index_select(0, q)
    if rel_table is None:
        return (lev > 0).to(dtype)
    tab = rel_table.index_select(0, q)
    return torch.minimum(tab.gather(1, lev.long()), tab.gather(1, lev.gather(1, k[:, None]).long()))


def pair_ranks(
    scores: Tensor,
    levels: Tensor,
    rel_table: Tensor | None = None,
    config: StepConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    need_plus: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Surrogate rank and exact rank+ of every (query, relevant item) pair.

    Args:
        scores: (B, N) similarities of B queries against N reference items (computed in float32,
            or float64 if given in float64).
        levels: (B, N) integer relevance levels; items with level >= 1 form the pairs.
        rel_table: (B, L + 1) per-query relevance of each level (hierarchical rank+); None for the
            binary case (levels 0/1, rel = level).
        config: step functions (default: SupRank with the paper's parameters).
        chunk_size: number of score elements (pair-rows x N) processed at once; bounds memory.
        need_plus: compute rank+ (NDCG does not need it).

    Returns:
        ``(pair_q, pair_k, rank, rank_plus)``: (P,) query and reference indices of the pairs,
        sorted by query, and their (P,) float32 rank (differentiable w.r.t. ``scores``) and
        rank+ (exact, no gradient, except with ``approximation="sigmoid"``).
    """
    cfg = config or StepConfig()
    if scores.ndim != 2 or levels.shape != scores.shape:
        raise InputError(f"scores {tuple(scores.shape)} and levels {tuple(levels.shape)} must both be (B, N)")
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    pairs = (levels > 0).nonzero()
    pair_q, pair_k = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    rows = max(1, int(chunk_size) // max(1, scores.size(1)))
    fn = _SmoothPairRanks if cfg.approximation == "sigmoid" else _PairRanks
    rank, rank_plus = fn.apply(scores, pair_q, pair_k, levels, rel_table, cfg, rows, need_plus)
    return pair_q, pair_k, rank, rank_plus
