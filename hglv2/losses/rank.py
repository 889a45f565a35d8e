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

**Memory and time.** The reference code builds ``B x N x N`` difference tensors. Here only the
``P`` (query, relevant item) pairs are ranked. Everything exact is counted from one sort of each
score row: the Heaviside parts of rank and rank+ (per-level prefix counts, ties counted), and the
parts of the surrogate that need no sigmoid (``start`` on ``0 < t <= delta`` and the linear region
``t > delta``, from prefix sums in float64). Only ``sum sigmoid(min(t, delta) / tau)`` over the less
relevant items is summed element-wise, ``chunk_size`` scores (pair rows x N) at a time; the backward
pass recomputes each chunk and accumulates ``dL/ds`` directly (the linear region's gradient again
by sorting). Peak memory is ``O(B x N + P x L + chunk_size)``; nothing of size ``P x N`` is kept
for autograd. Scores and sums are float32 (float64 inputs stay float64), autocast-safe.

**Two implementations, same values.** On CPU (numba installed) every rank comes from compiled
kernels (:mod:`hglv2.losses._rank_kernels`), one parallel loop over query rows: each row's items are
ordered by (level, score), the counts and prefix sums above come from pointers that move monotonically
over the per-level runs. Rows with few relevant items evaluate the sigmoid only for the less relevant
items inside the band ``-c tau <= t <= delta`` (``c = 50`` in float64, ``36`` in float32; an item
below it adds under ``e^{-c}``); rows with many use a series in ``x = e^{-|t|/tau}`` whose powers
factorise, carried along sorted sweeps (relative error below 1e-10 in float32, 1e-17 in float64).
Work per row is ``O(N log N + (N + P_q) L n_terms)`` instead of ``O(P_q N)`` element-wise passes,
in one parallel region instead of thousands of small torch operations. On other devices (CUDA) the
chunked torch path described above runs (chunks of ``DEFAULT_DEVICE_CHUNK`` elements by default
there); tests check that both give the same ranks, rank+ and gradients
(``tests/test_losses_kernels.py``, ``tests/test_losses_series.py``).

The linear region is tested as ``s_j > s_k + delta`` in floating point; the reference code tests
``s_j - s_k > delta``. The two differ only when they round differently, within an ulp of the kink.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses import _rank_kernels as _rk

if _rk.HAVE_NUMBA:
    import numba

__all__ = [
    "STEP_DEFAULTS",
    "StepConfig",
    "suprank_step",
    "sigmoid_step",
    "heaviside",
    "pair_ranks",
]

APPROXIMATIONS = ("suprank", "sigmoid", "exact")
DEFAULT_CHUNK = 1 << 18  # elements (pair-rows x N) processed at once
DEFAULT_DEVICE_CHUNK = 1 << 25  # the same on CUDA (about 128 MB per float32 temporary)
KERNELS_ENABLED = True  # False: always the chunked torch path (tests and benchmarks compare both)


@dataclass(frozen=True)
class StepConfig:
    """Parameters of the step functions (see module docstring); the field defaults are the SupRank
    paper's, and every loss signature takes its defaults from :data:`STEP_DEFAULTS`."""

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


STEP_DEFAULTS = StepConfig()
"""The SupRank step defaults: ``tau=0.01, rho=100, delta=0.05, start=0.5, offset=1.44``."""


def heaviside(t: Tensor) -> Tensor:
    """Exact step ``H(t) = 1[t >= 0]`` (ties count), no gradient."""
    return (t >= 0).to(t.dtype)


def sigmoid_step(t: Tensor, tau: float = STEP_DEFAULTS.tau) -> Tensor:
    """Smooth-AP step ``sigma(t / tau)``."""
    return torch.sigmoid(t / tau)


def suprank_step(
    t: Tensor,
    tau: float = STEP_DEFAULTS.tau,
    rho: float = STEP_DEFAULTS.rho,
    delta: float = STEP_DEFAULTS.delta,
    start: float = STEP_DEFAULTS.start,
    offset: float | None = STEP_DEFAULTS.offset,
) -> Tensor:
    """SupRank surrogate step ``H~(t)`` (differentiable; see module docstring for the formula)."""
    off = StepConfig(tau=tau, rho=rho, delta=delta, start=start, offset=offset).resolved_offset
    sig = torch.sigmoid(t / tau)
    return torch.where(t > delta, rho * (t - delta) + off, torch.where(t > 0, start + sig, sig))


def _exact_parts(
    scores: Tensor,
    levels: Tensor,
    pair_q: Tensor,
    pair_k: Tensor,
    lk: Tensor,
    num_levels: int,
    rel_table: Tensor | None,
    cfg: StepConfig,
    need_plus: bool,
    block_elems: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Everything that needs no pair x item tensor, from one sort of each score row.

    For each pair: the exact part of rank (``#{j : l_j >= l_k, s_j >= s_k}``, self included;
    every item for ``approximation="exact"``), rank+ (``sum_j H(t_j) min(rel_j, rel_k)``), and for
    SupRank the closed-form part of the surrogate over less relevant items
    (``start * #{0 < t_j <= delta} + sum_{t_j > delta} (rho (t_j - delta) + offset)``) with the
    count ``n_lin`` of ``t_j > delta``. Rows are processed in blocks of ``block_elems`` scores.
    """
    B, N = scores.shape
    parts = tuple(scores.new_zeros(pair_q.numel()) for _ in range(4))  # rank, rank+, closed, n_lin
    rows = max(1, block_elems // max(1, N))
    bounds = torch.searchsorted(pair_q, torch.arange(0, B + rows, rows, device=scores.device).clamp(max=B))
    for r, r0 in enumerate(range(0, B, rows)):
        p0, p1 = int(bounds[r]), int(bounds[r + 1])
        if p0 == p1:
            continue
        tab = rel_table[pair_q[p0:p1]] if need_plus and rel_table is not None else None
        _exact_block(
            scores[r0 : r0 + rows],
            levels[r0 : r0 + rows],
            pair_q[p0:p1] - r0,
            pair_k[p0:p1],
            lk[p0:p1],
            tab,
            num_levels,
            cfg,
            need_plus,
            [part[p0:p1] for part in parts],
        )
    return parts


def _sorted_block(blk: Tensor, levels: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sort each row of ``blk`` descending (stable) and locate each pair's item ``k`` in it.

    Returns ``(vals, lev_sorted, ge_at, gt_at)``: the sorted scores and their levels, and per pair the
    prefix lengths of the items with ``s_j >= s_k`` and with ``s_j > s_k`` (ties form one group).
    """
    R, N = blk.shape
    dev = blk.device
    idx = torch.arange(N, device=dev)
    vals, order = blk.sort(dim=1, descending=True, stable=True)
    lev_sorted = levels.gather(1, order)
    differs = vals[:, 1:] != vals[:, :-1]
    true_col = torch.ones(R, 1, dtype=torch.bool, device=dev)
    end_flag = torch.cat([differs, true_col], 1)
    start_flag = torch.cat([true_col, differs], 1)
    group_end = torch.where(end_flag, idx, N).flip(1).cummin(1).values.flip(1)
    group_start = torch.where(start_flag, idx, -1).cummax(1).values
    inv = torch.empty_like(order).scatter_(1, order, idx.expand(R, N))
    pk = inv[q, k]
    return vals, lev_sorted, group_end[q, pk] + 1, group_start[q, pk]


def _exact_block(
    blk: Tensor,
    levels: Tensor,
    q: Tensor,
    k: Tensor,
    lkp: Tensor,
    tab: Tensor | None,
    num_levels: int,
    cfg: StepConfig,
    need_plus: bool,
    out: list[Tensor],
) -> None:
    """:func:`_exact_parts` for one block of rows: ``q`` are row indices within the block; the
    results are written into ``out`` (views of rank, rank+, closed, n_lin for these pairs)."""
    rank, rank_plus, closed, n_lin = out
    dtype = blk.dtype
    suprank = cfg.approximation == "suprank"
    vals, lev_sorted, ge_at, gt_at = _sorted_block(blk, levels, q, k)
    if tab is not None:
        rk = tab.gather(1, lkp.long()[:, None])[:, 0]
    if suprank:
        sk = blk[q, k]
        thr = sk + cfg.delta
        # prefix length of items with s_j > s_k + delta (descending order, negate to search)
        lin_at = _rowwise_search(-vals, q, -thr)
        n_gt = torch.zeros_like(sk)
        nl = torch.zeros_like(sk, dtype=torch.float64)
        sl = torch.zeros_like(sk, dtype=torch.float64)
    zero = torch.zeros(blk.size(0), 1, dtype=torch.long, device=blk.device)
    for m in range(num_levels + 1):
        at_m = lev_sorted == m
        cum = torch.cat([zero, at_m.cumsum(1)], 1)
        ge = cum[q, ge_at].to(dtype)
        if cfg.approximation == "exact":
            rank += ge
        else:
            rank += torch.where(lkp <= m, ge, 0.0)
        if need_plus and m >= 1:
            rank_plus += ge if tab is None else ge * torch.minimum(tab[:, m], rk)
        if suprank and m < num_levels:
            less = lkp > m
            n_gt += torch.where(less, cum[q, gt_at].to(dtype), 0.0)
            nl += torch.where(less, cum[q, lin_at].double(), 0.0)
            csum = torch.cat([zero.double(), torch.where(at_m, vals, 0.0).double().cumsum(1)], 1)
            sl += torch.where(less, csum[q, lin_at], 0.0)
    if suprank:
        lin = cfg.rho * (sl - nl * thr.double()) + cfg.resolved_offset * nl
        closed.copy_((lin + cfg.start * (n_gt.double() - nl)).to(dtype))
        n_lin.copy_(nl.to(dtype))


class _Pairs(NamedTuple):
    """The (query, relevant item) pairs of a score matrix and what ranking them needs."""

    pair_q: Tensor
    pair_k: Tensor
    levels: Tensor
    rel_table: Tensor | None


class _PairRanks(torch.autograd.Function):
    """SupRank (or exact) rank and exact rank+ of every (query, relevant item) pair.

    Exact parts (items at least as relevant as k for rank; every item for rank+) and the
    closed-form parts of the surrogate come from one sort of each score row (:func:`_exact_parts`);
    only ``sum sigmoid(min(t, delta) / tau)`` over less relevant items runs in chunks of pair rows,
    and the backward pass recomputes it chunk by chunk.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, scores: Tensor, pairs: _Pairs, cfg: StepConfig, rows_per_chunk: int, need_plus: bool
    ) -> tuple[Tensor, Tensor]:
        pair_q, pair_k, levels, rel_table = pairs
        num_levels = int(levels.max()) if levels.numel() else 0
        lk = levels[pair_q, pair_k]
        use_kernel = _use_kernel(scores, num_levels)
        if use_kernel:
            need_dsum = cfg.approximation == "suprank" and ctx.needs_input_grad[0]
            rank, rank_plus, dsum = _kernel_forward(
                scores, levels, pair_q, pair_k, rel_table, cfg, need_plus, need_dsum
            )
            n_lin = rank.new_zeros(0)
        else:
            dsum = None
            rank, rank_plus, closed, n_lin = _exact_parts(
                scores,
                levels,
                pair_q,
                pair_k,
                lk,
                num_levels,
                rel_table,
                cfg,
                need_plus,
                4 * rows_per_chunk * scores.size(1),
            )
        if cfg.approximation == "suprank" and not use_kernel:
            sig_delta = _clamped_sigmoid_at_delta(cfg, scores.dtype)
            rank += closed - n_lin * sig_delta
            for lvl, sel in _level_groups(lk, num_levels):
                # non-less-relevant items become -inf: they add sigmoid(-inf) = 0 below
                less_scores = torch.where(levels < lvl, scores, float("-inf"))
                for a in range(0, sel.numel(), rows_per_chunk):
                    idx = sel[a : a + rows_per_chunk]
                    q, k = pair_q[idx], pair_k[idx]
                    # sigmoid(min(t, delta) / tau): items above delta add sigmoid(delta / tau),
                    # which the closed form removed again (n_lin of them)
                    S = less_scores.index_select(0, q).sub_(scores[q, k][:, None])
                    rank[idx] += S.clamp_(max=cfg.delta).mul_(1.0 / cfg.tau).sigmoid_().sum(1)
        # the kernels' backward needs the forward's series sums, the torch path the n_lin counts
        ctx.save_for_backward(scores, pair_q, pair_k, levels, lk, dsum if use_kernel else n_lin)
        ctx.cfg = cfg
        ctx.rows_per_chunk = rows_per_chunk
        ctx.num_levels = num_levels
        ctx.use_kernel = use_kernel
        if cfg.approximation == "exact":
            ctx.mark_non_differentiable(rank, rank_plus)
        else:
            ctx.mark_non_differentiable(rank_plus)
        return rank, rank_plus

    @staticmethod
    def backward(ctx, g_rank: Tensor, g_plus: Tensor):  # type: ignore[override]
        scores, pair_q, pair_k, levels, lk, n_lin = ctx.saved_tensors  # n_lin: dsum for kernels
        cfg: StepConfig = ctx.cfg
        grad = torch.zeros_like(scores)
        if ctx.use_kernel and cfg.approximation == "suprank":
            _kernel_backward(scores, levels, pair_q, pair_k, cfg, g_rank, n_lin, grad)
        elif cfg.approximation == "suprank":
            inv_tau = 1.0 / cfg.tau
            sig_delta = _clamped_sigmoid_at_delta(cfg, scores.dtype)
            # slope of the linear region minus that of the clamped sigmoid there
            extra = cfg.rho - sig_delta * (1.0 - sig_delta) * inv_tau
            for lvl, sel in _level_groups(lk, ctx.num_levels):
                less = levels < lvl
                less_scores = torch.where(less, scores, float("-inf"))
                for a in range(0, sel.numel(), ctx.rows_per_chunk):
                    idx = sel[a : a + ctx.rows_per_chunk]
                    q, k = pair_q[idx], pair_k[idx]
                    S = less_scores.index_select(0, q).sub_(scores[q, k][:, None])
                    sig = S.clamp_(max=cfg.delta).mul_(inv_tau).sigmoid_()
                    coef = sig.sub_(sig.square()).mul_((g_rank[idx] * inv_tau)[:, None])
                    # d t_j / d s_j = 1 and d t_j / d s_k = -1
                    grad.index_add_(0, q, coef)
                    grad.index_put_((q, k), -coef.sum(1), accumulate=True)
                _linear_region_grad(
                    grad, scores, less, pair_q[sel], pair_k[sel], g_rank[sel] * extra, n_lin[sel], cfg
                )
        return grad, None, None, None, None


def _use_kernel(scores: Tensor, num_levels: int) -> bool:
    """The compiled CPU kernels serve CPU scores (float32/float64) when numba is installed; CUDA
    and other devices use the chunked torch path (same values)."""
    return (
        _rk.HAVE_NUMBA
        and KERNELS_ENABLED
        and scores.device.type == "cpu"
        and scores.dtype in (torch.float32, torch.float64)
        and num_levels < 127
    )


def _kernel_args(scores: Tensor, levels: Tensor, pair_q: Tensor, pair_k: Tensor, cfg: StepConfig):
    S = scores.detach().contiguous().numpy()
    B = scores.size(0)
    row_ptr = torch.zeros(B + 1, dtype=torch.long)
    row_ptr[1:] = torch.bincount(pair_q, minlength=B).cumsum(0)
    consts = _rk.kernel_constants(S.dtype, cfg.tau, cfg.rho, cfg.delta, cfg.start, cfg.resolved_offset)
    n_lev = int(levels.max()) + 1 if levels.numel() else 1
    lv = levels.to(torch.int8).contiguous().numpy()
    return (S, lv, row_ptr.numpy(), pair_k.contiguous().numpy(), *consts), n_lev


def _kernel_forward(
    scores: Tensor,
    levels: Tensor,
    pair_q: Tensor,
    pair_k: Tensor,
    rel_table: Tensor | None,
    cfg: StepConfig,
    need_plus: bool,
    need_dsum: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rank and rank+ of every pair from the compiled kernels (:mod:`hglv2.losses._rank_kernels`):
    the same quantities as :func:`_exact_parts` plus the sigmoid sums, one pass per query row; with
    ``need_dsum`` also the series part of each pair's ``sum sigmoid'`` for the backward pass
    (float64, ``(P,)``; empty otherwise)."""
    args, n_lev = _kernel_args(scores, levels, pair_q, pair_k, cfg)
    P = pair_q.numel()
    rank = np.zeros(P, dtype=np.float64)
    rplus = np.zeros(P if need_plus else 0, dtype=np.float64)
    tabs = (
        np.zeros((0, 0), dtype=np.float64)
        if rel_table is None
        else rel_table.detach().to(torch.float64).contiguous().numpy()
    )
    mode = 0 if cfg.approximation == "suprank" else 1
    dsum = np.zeros(P if need_dsum else 0, dtype=np.float64)
    with _kernel_threads(scores.size(0)):
        _rk.ranks_forward(*args, tabs, mode, n_lev, rank, rplus, dsum)
    rank_t = torch.from_numpy(rank).to(scores.dtype)
    plus_t = torch.from_numpy(rplus).to(scores.dtype) if need_plus else scores.new_zeros(P)
    return rank_t, plus_t, torch.from_numpy(dsum)


def _kernel_backward(
    scores: Tensor,
    levels: Tensor,
    pair_q: Tensor,
    pair_k: Tensor,
    cfg: StepConfig,
    g_rank: Tensor,
    dsum: Tensor,
    grad: Tensor,
) -> None:
    """Add ``d(sum_c g_c rank_c) / d scores`` to ``grad`` (contiguous, CPU) with the compiled kernel;
    ``dsum``: the series sums saved by :func:`_kernel_forward`."""
    args, n_lev = _kernel_args(scores, levels, pair_q, pair_k, cfg)
    g = g_rank.detach().to(torch.float64).contiguous().numpy()
    S, lv, row_ptr, pk, c64, cd, coefs = args
    with _kernel_threads(scores.size(0)):
        _rk.ranks_backward(S, lv, row_ptr, pk, g, c64, cd, coefs, n_lev, dsum.numpy(), grad.numpy())


@contextlib.contextmanager
def _kernel_threads(rows: int):
    """Run a kernel with torch's thread count, handing rows out in small dynamic chunks (a thread
    that the OS deschedules on a busy machine then delays at most one chunk, not half the rows),
    and restore torch's OpenMP thread count afterwards (numba's OpenMP layer resets it)."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    old = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(max(1, rows // (16 * threads)))
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old)
        torch.set_num_threads(threads)


def _rowwise_search(sorted_rows: Tensor, q: Tensor, values: Tensor) -> Tensor:
    """``searchsorted(sorted_rows[q_c], values_c, side="left")`` for every c (q sorted), searching
    only the given values: they are packed into a (rows, max per row) matrix padded with +inf."""
    R = sorted_rows.size(0)
    counts = torch.bincount(q, minlength=R)
    pos = torch.arange(q.numel(), device=q.device) - (torch.cumsum(counts, 0) - counts)[q]
    packed = torch.full((R, int(counts.max())), float("inf"), dtype=values.dtype, device=values.device)
    packed[q, pos] = values
    return torch.searchsorted(sorted_rows, packed, side="left")[q, pos]


def _linear_region_grad(
    grad: Tensor,
    scores: Tensor,
    less: Tensor,
    q: Tensor,
    k: Tensor,
    w: Tensor,
    n_lin: Tensor,
    cfg: StepConfig,
) -> None:
    """Add ``w_c`` to ``grad[q_c, j]`` for every less relevant j with ``s_j > s_k + delta`` and
    ``-w_c * n_lin_c`` to ``grad[q_c, k_c]``, without a pair x item tensor (sort + binary search)."""
    B = scores.size(0)
    counts = torch.bincount(q, minlength=B)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(q.numel(), device=q.device) - first[q]
    width = int(counts.max())
    thr = torch.full((B, width), float("inf"), dtype=scores.dtype, device=scores.device)
    thr[q, pos] = scores[q, k] + cfg.delta
    weights = torch.zeros((B, width), dtype=torch.float64, device=scores.device)
    weights[q, pos] = w.double()
    thr, order = thr.sort(dim=1)
    cum = torch.cat([weights.new_zeros(B, 1), weights.gather(1, order).cumsum(1)], 1)
    rows = max(1, (1 << 20) // max(1, scores.size(1)))
    for r0 in range(0, B, rows):  # row blocks keep the (rows, N) temporaries small
        r1 = min(B, r0 + rows)
        below = torch.searchsorted(thr[r0:r1], scores[r0:r1], side="left")  # thresholds < s_j
        grad[r0:r1] += torch.where(less[r0:r1], cum[r0:r1].gather(1, below), 0.0).to(grad.dtype)
    grad.index_put_((q, k), -(w * n_lin).to(grad.dtype), accumulate=True)


def _clamped_sigmoid_at_delta(cfg: StepConfig, dtype: torch.dtype) -> float:
    """``sigmoid(delta / tau)`` computed exactly as the element-wise pass computes it."""
    return float(torch.tensor(cfg.delta, dtype=dtype).clamp_(max=cfg.delta).mul_(1.0 / cfg.tau).sigmoid_())


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
        ctx, scores: Tensor, pairs: _Pairs, cfg: StepConfig, rows_per_chunk: int, need_plus: bool
    ) -> tuple[Tensor, Tensor]:
        pair_q, pair_k, levels, rel_table = pairs
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
        return grad, None, None, None, None


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
    if scores.device.type != "cpu" and chunk_size == DEFAULT_CHUNK:
        chunk_size = DEFAULT_DEVICE_CHUNK  # accelerators: fewer, larger element-wise launches
    rows = max(1, int(chunk_size) // max(1, scores.size(1)))
    fn = _SmoothPairRanks if cfg.approximation == "sigmoid" else _PairRanks
    rank, rank_plus = fn.apply(scores, _Pairs(pair_q, pair_k, levels, rel_table), cfg, rows, need_plus)
    return pair_q, pair_k, rank, rank_plus
