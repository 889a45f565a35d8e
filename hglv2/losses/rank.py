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


def _less_step_and_grad(t: Tensor, cfg: StepConfig, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Step for less relevant items and its derivative (None if not needed)."""
    if cfg.approximation == "exact":
        return heaviside(t), None
    sig = torch.sigmoid(t / cfg.tau)
    if cfg.approximation == "sigmoid":
        val = sig
        grad = sig * (1.0 - sig) / cfg.tau if need_grad else None
        return val, grad
    lin = t > cfg.delta
    val = torch.where(lin, cfg.rho * (t - cfg.delta) + cfg.resolved_offset, sig + (t > 0) * cfg.start)
    grad = None
    if need_grad:
        grad = torch.where(lin, torch.full_like(t, cfg.rho), sig * (1.0 - sig) / cfg.tau)
    return val, grad


class _PairRanks(torch.autograd.Function):
    """rank and rank+ of every (query, relevant item) pair; chunked forward and backward."""

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
            S = scores.index_select(0, q)
            sk = scores[q, k]
            t = S - sk[:, None]
            lev = levels.index_select(0, q)
            lk = lev.gather(1, k[:, None])
            less = lev < lk
            ge = t >= 0
            fless, _ = _less_step_and_grad(t, cfg, need_grad=False)
            if cfg.approximation == "sigmoid":
                # Smooth-AP: every item through the sigmoid; remove the self term sigma(0) = 1/2.
                rank[a:b] = 0.5 + fless.sum(1)
            else:
                # exact part (l_j >= l_k, self included: it supplies the leading "1 +")
                rank[a:b] = torch.where(less, fless, ge.to(t.dtype)).sum(1)
            if need_plus:
                plus_step = fless if cfg.approximation == "sigmoid" else ge.to(t.dtype)
                self_term = 0.5 if cfg.approximation == "sigmoid" else 1.0
                if rel_table is None:  # binary: min(rel_j, rel_k) = 1[l_j >= 1]
                    w = lev > 0
                    rank_plus[a:b] = (plus_step * w).sum(1) + (1.0 - self_term)
                else:
                    tab = rel_table.index_select(0, q)
                    rel = tab.gather(1, lev.long())
                    rk = tab.gather(1, lk.long())
                    rank_plus[a:b] = (plus_step * torch.minimum(rel, rk)).sum(1) + rk[:, 0] * (
                        1.0 - self_term
                    )
        ctx.save_for_backward(scores, pair_q, pair_k, levels, rel_table)
        ctx.cfg = cfg
        ctx.rows_per_chunk = rows_per_chunk
        if cfg.approximation == "exact":
            ctx.mark_non_differentiable(rank, rank_plus)
        elif cfg.approximation == "suprank":
            ctx.mark_non_differentiable(rank_plus)
        return rank, rank_plus

    @staticmethod
    def backward(ctx, g_rank: Tensor, g_plus: Tensor):  # type: ignore[override]
        scores, pair_q, pair_k, levels, rel_table = ctx.saved_tensors
        cfg: StepConfig = ctx.cfg
        grad = torch.zeros_like(scores)
        if cfg.approximation == "exact":
            return grad, None, None, None, None, None, None, None
        smooth_plus = cfg.approximation == "sigmoid" and g_plus is not None
        P = pair_q.numel()
        R = ctx.rows_per_chunk
        for a in range(0, P, R):
            b = min(P, a + R)
            q, k = pair_q[a:b], pair_k[a:b]
            S = scores.index_select(0, q)
            t = S - scores[q, k][:, None]
            _, dless = _less_step_and_grad(t, cfg, need_grad=True)
            if cfg.approximation == "sigmoid":
                coef = g_rank[a:b, None] * dless
            else:
                lev = levels.index_select(0, q)
                less = lev < lev.gather(1, k[:, None])
                coef = torch.where(less, dless, 0.0) * g_rank[a:b, None]
            if smooth_plus:
                lev = levels.index_select(0, q)
                if rel_table is None:
                    w = (lev > 0).to(t.dtype)
                else:
                    tab = rel_table.index_select(0, q)
                    w = torch.minimum(
                        tab.gather(1, lev.long()), tab.gather(1, lev.gather(1, k[:, None]).long())
                    )
                coef = coef + g_plus[a:b, None] * dless * w
            # d t_j / d s_j = 1, d t_j / d s_k = -1 (the self term j = k cancels out)
            grad.index_add_(0, q, coef)
            grad.index_put_((q, k), -coef.sum(1), accumulate=True)
        return grad, None, None, None, None, None, None, None


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
    rank, rank_plus = _PairRanks.apply(scores, pair_q, pair_k, levels, rel_table, cfg, rows, need_plus)
    return pair_q, pair_k, rank, rank_plus
