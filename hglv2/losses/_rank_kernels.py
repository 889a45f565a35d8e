r"""Compiled (numba) CPU kernels for the sigmoid part of the SupRank rank (:mod:`hglv2.losses.rank`).

For a pair (query ``q``, relevant item ``k``) the only part of the surrogate rank that is not a
count or a prefix sum is

.. math::

    \Sigma_k = \sum_{m < l_k} \ \sum_{j:\ l_j = m,\ s_j \le s_k + \delta} \sigma(\min(t_j, \delta) / \tau),
    \qquad t_j = s_j - s_k,

(the less relevant items ``j`` below the linear region; those above it are counted in closed form).
The kernels use the per-level structure: each row's items are ordered by (level, score), so for
every level ``m < l_k`` the items in the sigmoid band ``-c\,\tau \le t_j \le \delta`` form one
contiguous run found by binary search. Items below the band (``t_j < -c\,\tau``) are skipped:
each would add ``\sigma(-c) < e^{-c}`` (``c = 50`` in float64, where the reference code's clamped
sigmoid is constant and has no gradient; ``c = 36`` in float32, ``e^{-36} < 2.4\cdot 10^{-16}``,
far below one float32 ulp of a rank ``\ge 1`` for any batch size). Inside the band no exponential is
evaluated per element: with a reference score ``r`` per block of targets (sorted, spanning at most
``40\,\tau``), ``\sigma(t_j/\tau) = 1 / (1 + a_k E_j)`` with ``a_k = e^{(s_k - r)/\tau}`` and
``E_j = e^{(r - s_j)/\tau}`` computed once per block; both stay within float32 range. The clamp
``\min(t_j, \delta)`` is ``a_k E_j \ge e^{-\delta/\tau}``.

The backward kernel recomputes the band and accumulates ``dL/ds`` directly: ``g_k \sigma'/\tau`` for
each band item (``-\sum`` of it on ``s_k``), and ``g_k \rho`` for each item in the linear region
(``s_j > s_k + \delta``, through a difference array over the sorted run; ``-g_k \rho\, n_{lin}`` on
``s_k``). Work per row is ``O(N \log N + \sum_k (L \log N + \mathrm{band}_k))``, one parallel loop
over rows with dynamic chunks (robust when cores are shared), no ``P x N`` temporaries.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a runtime dependency, but the torch path works without it
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

BAND_CUT = {np.dtype(np.float32): 36.0, np.dtype(np.float64): 50.0}
BLOCK_WIDTH = 40.0  # span of one block of targets, in units of tau

if HAVE_NUMBA:

    @njit(cache=True, error_model="numpy")
    def _level_sorted(s, lv, n_seg, vals, perm, seg):
        """Order the row's items by (level, score ascending) for levels < n_seg (others after,
        unsorted): ``perm`` the item indices, ``vals`` their scores, ``seg[m]:seg[m+1]`` level m."""
        n = s.shape[0]
        n_lev = seg.shape[0] - 1
        for m in range(n_lev + 1):
            seg[m] = 0
        for j in range(n):
            seg[lv[j] + 1] += 1
        for m in range(n_lev):
            seg[m + 1] += seg[m]
        pos = seg[:n_lev].copy()
        for j in range(n):
            m = lv[j]
            perm[pos[m]] = j
            pos[m] += 1
        for m in range(min(n_seg, n_lev)):
            a, b = seg[m], seg[m + 1]
            if b - a > 1:
                sub = perm[a:b].copy()
                sv = np.empty(b - a, dtype=s.dtype)
                for i in range(b - a):
                    sv[i] = s[sub[i]]
                o = np.argsort(sv)
                for i in range(b - a):
                    perm[a + i] = sub[o[i]]
        for i in range(n):
            vals[i] = s[perm[i]]

    @njit(cache=True, fastmath=True, error_model="numpy")
    def _row(s, lv, pk, g, p0, p1, c64, cd, tab, mode, n_lev, rank, rplus, grad):
        """One query row. ``mode`` 0: SupRank forward (rank, rank+), 1: exact forward, 2: SupRank
        backward (adds to ``grad`` the gradient of ``sum_c g_c rank_c``). ``tab``: the row's relevance
        per level (empty: binary rank+; with ``rplus`` empty, no rank+)."""
        n = s.shape[0]
        one = s.dtype.type(1.0)
        inv_tau, cut, width, rho, start, offset = c64[0], c64[1], c64[2], c64[3], c64[4], c64[5]
        delta, emd = cd[0], cd[1]  # in the scores' dtype (same rounding as the torch path)
        max_l = 0
        for c in range(p0, p1):
            lk = lv[pk[c]]
            if lk > max_l:
                max_l = lk
        vals = np.empty(n, dtype=s.dtype)
        perm = np.empty(n, dtype=np.int64)
        seg = np.empty(n_lev + 1, dtype=np.int64)
        _level_sorted(s, lv, n_lev if mode < 2 else max_l, vals, perm, seg)
        n_t = p1 - p0
        ts = np.empty(n_t, dtype=s.dtype)
        for c in range(n_t):
            ts[c] = s[pk[p0 + c]]
        torder = np.argsort(ts)
        # per-level pointers into the sorted runs; targets come in ascending score order, so each
        # only moves forward: first v >= y, first v > y, first v > y + delta, first v >= y - cut tau
        p_ge = seg[:n_lev].copy()
        p_gt = seg[:n_lev].copy()
        p_lin = seg[:n_lev].copy()
        p_low = seg[:n_lev].copy()
        e_hi = seg[:n_lev].copy()  # E[j] is valid for the current block on [p_low, e_hi)
        has_tab = tab.shape[0] > 0
        need_plus = rplus.shape[0] > 0
        E = np.empty(n, dtype=s.dtype)
        if mode == 0:  # per-run suffix sums of the scores (linear region), summed from the top
            suf = np.zeros(n + 1, dtype=np.float64)
            for m in range(max_l):
                acc = 0.0
                for j in range(seg[m + 1] - 1, seg[m] - 1, -1):
                    acc += np.float64(vals[j])
                    suf[j] = acc
        if mode == 2:
            gacc = np.zeros(n + 1, dtype=np.float64)
            dlin = np.zeros(n + 1, dtype=np.float64)
        ref64 = 0.0
        top = -np.inf
        r = 0.0
        for i in range(n_t):
            c = p0 + torder[i]
            k = pk[c]
            y = s[k]
            y64 = np.float64(y)
            lk = lv[k]
            if y64 > top:  # new block of targets: E relative to this reference score
                ref64 = y64
                top = ref64 + width / inv_tau
                for m in range(max_l):
                    e_hi[m] = p_low[m]
            if mode < 2:
                r = 0.0
                rp = 0.0
                rk = tab[lk] if has_tab else 1.0
                for m in range(n_lev):
                    e = seg[m + 1]
                    while p_ge[m] < e and vals[p_ge[m]] < y:
                        p_ge[m] += 1
                    ge = e - p_ge[m]
                    if mode == 1 or m >= lk:
                        r += ge
                    if need_plus and m >= 1:
                        rp += ge * (min(tab[m], rk) if has_tab else 1.0)
                if need_plus:
                    rplus[c] = rp
                if mode == 1:
                    rank[c] = r
                    continue
            if mode == 2 and g[c] == 0.0:
                continue
            a = s.dtype.type(math.exp((y64 - ref64) * inv_tau))
            thr = y + delta  # s_j > s_k + delta (rounded as the torch path does) is the linear region
            low = y64 - cut / inv_tau
            closed = 0.0
            band = 0.0
            nl_all = 0
            gk = g[c] if mode == 2 else 0.0
            gs = s.dtype.type(gk * inv_tau)
            for m in range(lk):
                e = seg[m + 1]
                while p_lin[m] < e and vals[p_lin[m]] <= thr:
                    p_lin[m] += 1
                while p_low[m] < e and np.float64(vals[p_low[m]]) < low:
                    p_low[m] += 1
                lo, hi = p_low[m], p_lin[m]
                if e_hi[m] < lo:
                    e_hi[m] = lo
                for j in range(e_hi[m], hi):
                    E[j] = math.exp((ref64 - np.float64(vals[j])) * inv_tau)
                if hi > e_hi[m]:
                    e_hi[m] = hi
                nl = e - hi
                part = s.dtype.type(0.0)
                if mode == 0:
                    while p_gt[m] < e and vals[p_gt[m]] <= y:
                        p_gt[m] += 1
                    sl = suf[hi] if nl > 0 else 0.0
                    lin = rho * (sl - nl * np.float64(thr)) + offset * nl
                    closed += lin + start * (e - p_gt[m] - nl)
                    for j in range(lo, hi):
                        part += one / (one + max(a * E[j], emd))
                else:
                    for j in range(lo, hi):
                        sg = one / (one + max(a * E[j], emd))
                        d = (sg - sg * sg) * gs
                        gacc[j] += d
                        part += d
                    if nl > 0:  # linear region: slope rho for every item above the threshold
                        dlin[hi] += gk * rho
                        dlin[e] -= gk * rho
                        nl_all += nl
                band += part
            if mode == 0:
                rank[c] = r + closed + band
            else:
                grad[k] -= band + gk * rho * nl_all
        if mode == 2:
            run = 0.0
            for j in range(n):
                run += dlin[j]
                grad[perm[j]] += gacc[j] + run

    @njit(cache=True, parallel=True, error_model="numpy")
    def ranks_forward(S, LV, row_ptr, pk, c64, cd, tabs, mode, n_lev, rank, rplus):
        """Rank (SupRank ``mode=0`` or exact ``mode=1``) and exact rank+ of every pair; rows in
        parallel. ``tabs``: (B, L + 1) relevances or (0, 0) for binary rank+."""
        B = S.shape[0]
        g = np.empty(0, dtype=np.float64)
        dummy = np.empty(0, dtype=S.dtype)
        empty = np.empty(0, dtype=np.float64)
        for r in prange(B):
            p0, p1 = row_ptr[r], row_ptr[r + 1]
            if p1 > p0:
                tab = tabs[r] if tabs.shape[0] > 0 else empty
                _row(S[r], LV[r], pk, g, p0, p1, c64, cd, tab, mode, n_lev, rank, rplus, dummy)

    @njit(cache=True, parallel=True, error_model="numpy")
    def ranks_backward(S, LV, row_ptr, pk, g, c64, cd, n_lev, grad):
        """``grad += d(sum_c g_c rank_c) / dS`` for the SupRank rank; rows in parallel."""
        B = S.shape[0]
        empty = np.empty(0, dtype=np.float64)
        for r in prange(B):
            p0, p1 = row_ptr[r], row_ptr[r + 1]
            if p1 > p0:
                _row(S[r], LV[r], pk, g, p0, p1, c64, cd, empty, 2, n_lev, empty, empty, grad[r])


def kernel_constants(
    dtype: np.dtype, tau: float, rho: float, delta: float, start: float, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """``([1/tau, cut, block width, rho, start, offset]`` in float64, ``[delta, e^{-delta/tau}]`` in
    the scores' dtype)."""
    cut = BAND_CUT[np.dtype(dtype)]
    return (
        np.array([1.0 / tau, cut, BLOCK_WIDTH, rho, start, offset], dtype=np.float64),
        np.array([delta, math.exp(-delta / tau)], dtype=dtype),
    )
