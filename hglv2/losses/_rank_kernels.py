r"""Compiled (numba) CPU kernels for the sigmoid part of the SupRank rank (:mod:`hglv2.losses.rank`).

For a pair (query ``q``, relevant item ``k``) the only part of the surrogate rank that is not a
count or a prefix sum is

.. math::

    \Sigma_k = \sum_{m < l_k} \ \sum_{j:\ l_j = m,\ s_j \le s_k + \delta} \sigma(\min(t_j, \delta) / \tau),
    \qquad t_j = s_j - s_k,

(the less relevant items ``j`` below the linear region; those above it are counted in closed form).
Each row's items are ordered by (level, score), so every level is a sorted run and the counts, the
linear region and its prefix sums come from pointers that only move forward as the targets are
visited in ascending score order.

**Direct band** (rows with few targets, e.g. SupAP's): for every level ``m < l_k`` the items in
the band ``-c\,\tau \le t_j \le \delta`` form one contiguous run. Items below it are skipped: each
would add ``\sigma(-c) < e^{-c}`` (``c = 50`` in float64, where the reference code's clamped sigmoid
is constant and has no gradient; ``c = 36`` in float32, far below one float32 ulp of a rank
``\ge 1``). No exponential is evaluated per element: with a reference score ``r`` per block of
targets (spanning at most ``40\,\tau``), ``\sigma(t_j/\tau) = 1 / (1 + a_k E_j)`` with
``a_k = e^{(s_k - r)/\tau}`` and ``E_j = e^{(r - s_j)/\tau}``. Work ``O(\sum_k \mathrm{band}_k)``.

**Series** (rows with many targets, e.g. SupHAP's and SupNDCG's, where the band work grows as
``B^3``): with ``x = e^{-|t|/\tau} \in (0, 1]``,

.. math::

    \sigma(-|u|) = \frac{x}{1 + x} \approx \sum_{n=1}^{N} c_n x^n, \qquad
    \sigma'(u) = \frac{x}{(1 + x)^2} \approx \sum_{n=1}^{N} c'_n x^n,

with ``x q(x)``, ``q`` the Chebyshev interpolant of ``1/(1+x)`` (``1/(1+x)^2``) on ``[0, 1]``
(:func:`series_coefficients`: ``N = 16`` in float32, ``26`` in float64, relative error below
``1e-10`` / ``1e-17`` for every ``x``, far items included). ``x^n = e^{-n (s_k - s_j)/\tau}``
factorises over the target and the item, so per level an ascending sweep over the targets carries
``A_n = \sum_{s_j < s_k} e^{-n (s_k - s_j)/\tau}`` from one target to the next (multiply by
``e^{-n \Delta/\tau}``, add the items that enter) and a descending sweep does the same for the items
in ``s_k < s_j \le s_k + \delta`` (``\sigma = 1 - \sigma(-u)``; items leave past the linear region):
:func:`_series_sweep` (ties, ``t_j = 0``, are the point ``x = 1`` of the lower sweep). Work per row
``O((N_{items} + P_q) L N)`` instead of ``O(P_q N_{items})``. The forward pass also sums the
targets' ``\sigma'`` series for the backward pass, which adds the transposed sweeps (items as
queries, targets weighted by ``g_k`` as sources) for ``dL/ds_j``. The choice is made per row from
the work estimates (``SERIES_COST``).

The backward kernel accumulates ``dL/ds`` directly: ``g_k \sigma'/\tau`` for each band item
(``-\sum`` of it on ``s_k``), and ``g_k \rho`` for each item in the linear region (``s_j > s_k +
\delta``, through a difference array over the sorted run; ``-g_k \rho\, n_{lin}`` on ``s_k``). One
parallel loop over rows with dynamic chunks (robust when cores are shared), no ``P x N``
temporaries.
"""

from __future__ import annotations

import functools
import math

import numpy as np

try:  # numba is a runtime dependency, but the torch path works without it
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

BAND_CUT = {np.dtype(np.float32): 36.0, np.dtype(np.float64): 50.0}
SERIES_CUT = 0.0  # |t| <= SERIES_CUT * tau: direct sigmoid; beyond: series in e^{-|t|/tau}
# relative error of the series per item, sigmoid and sigmoid'
SERIES_TOL = {np.dtype(np.float32): 1e-10, np.dtype(np.float64): 1e-17}
SERIES_COST = 2.0  # a series event costs about this many direct sigmoids per term
UNDERFLOW = 600.0  # series terms below e^{-600} are dropped (no subnormal arithmetic)
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

    _FM = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan/ninf: -inf and 0 * inf stay IEEE

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _add_powers(acc, w, p, k):
        """``acc[i] += w p^(i+1)`` for ``i < k`` (four interleaved product chains, no temporaries)."""
        p1 = w * p
        p2 = p1 * p
        p3 = p2 * p
        p4 = p3 * p
        q4 = p * p
        q4 = q4 * q4
        i = 0
        while i + 4 <= k:
            acc[i] += p1
            acc[i + 1] += p2
            acc[i + 2] += p3
            acc[i + 3] += p4
            p1 *= q4
            p2 *= q4
            p3 *= q4
            p4 *= q4
            i += 4
        if i < k:
            acc[i] += p1
        if i + 1 < k:
            acc[i + 1] += p2
        if i + 2 < k:
            acc[i + 2] += p3

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _scale_powers(acc, r, k):
        """``acc[i] *= r^(i+1)`` for ``i < k``."""
        p1 = r
        p2 = p1 * r
        p3 = p2 * r
        p4 = p3 * r
        q4 = p4
        i = 0
        while i + 4 <= k:
            acc[i] *= p1
            acc[i + 1] *= p2
            acc[i + 2] *= p3
            acc[i + 3] *= p4
            p1 *= q4
            p2 *= q4
            p3 *= q4
            p4 *= q4
            i += 4
        if i < k:
            acc[i] *= p1
        if i + 1 < k:
            acc[i + 1] *= p2
        if i + 2 < k:
            acc[i + 2] *= p3

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _terms(d, n_terms):
        """How many powers ``e^{-(i+1) d}`` stay above ``e^{-UNDERFLOW}``."""
        if d * n_terms <= UNDERFLOW:
            return n_terms
        return int(UNDERFLOW / d)

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _series_sweep(xs, ws, xq, lo, hi, sign, inv_tau, coef, n_terms, out, acc):
        """Exponential sums along one sweep: for every query ``q``

        ``out[f, q] = sum_i coef[f, i] sum_{s in [lo[q], max(lo[q], hi[q]))} ws[s] e^{-(i+1) d_qs}``,
        ``d_qs = sign (xq[q] - xs[s]) / tau``,

        with queries and sources ordered by ``sign * x`` ascending and ``lo``, ``hi`` non-decreasing:
        a source enters the window once (as the member nearest the query) and leaves it once (as
        the farthest). The accumulators ``acc[i] = sum ws e^{-(i+1) d}`` are carried from one query
        to the next by the factor ``e^{-(i+1) step}`` (terms only shrink), so the work is
        ``O((Q + S) n_terms)``. Powers below ``e^{-UNDERFLOW}`` are dropped (exactly zero)."""
        for i in range(n_terms):
            acc[i] = 0.0
        n_act = 0
        a = 0  # members: sources [a, b)
        b = 0
        prev = 0.0
        for q in range(xq.shape[0]):
            x = xq[q]
            L = lo[q]
            H = max(hi[q], L)
            if b > a and L >= b:  # every member leaves
                for i in range(n_act):
                    acc[i] = 0.0
                n_act = 0
            elif b > a:
                step = sign * (x - prev) * inv_tau
                if step > 0.0 and n_act > 0:
                    keep = min(n_act, _terms(sign * (x - xs[b - 1]) * inv_tau, n_terms))
                    _scale_powers(acc, math.exp(-step), keep)
                    for i in range(keep, n_act):
                        acc[i] = 0.0
                    n_act = keep
                for s in range(a, L):  # leaving (the farthest members)
                    d = sign * (x - xs[s]) * inv_tau
                    k = min(n_act, _terms(d, n_terms))
                    if k > 0:
                        _add_powers(acc, -ws[s], math.exp(-d), k)
            if b <= L:
                b = L
            a = L
            for s in range(b, H):  # entering (each the nearest member so far)
                d = sign * (x - xs[s]) * inv_tau
                k = _terms(d, n_terms)
                if k > 0:
                    _add_powers(acc, ws[s], math.exp(-d), k)
                    if k > n_act:
                        n_act = k
            if H > b:
                b = H
            for f in range(coef.shape[0]):
                tot = 0.0
                for i in range(n_act):
                    tot += coef[f, i] * acc[i]
                out[f, q] = tot
            prev = x

    @njit(cache=True, error_model="numpy")
    def _run_float64(vals, a0, n_m):
        """The sorted run ``vals[a0:a0 + n_m]`` in float64, ascending and descending."""
        asc = np.empty(n_m, dtype=np.float64)
        desc = np.empty(n_m, dtype=np.float64)
        for j in range(n_m):
            asc[j] = np.float64(vals[a0 + j])
            desc[n_m - 1 - j] = asc[j]
        return asc, desc

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _target_series(vals, seg, ys, thr, lks, max_l, h, inv_tau, coef, n_terms, ser, dser):
        """Add to ``ser[i]`` and ``dser[i]`` (targets in ascending score order) the series part of
        ``sum_{m < l_i} sum_j f(t_j / tau)`` over items ``j`` of level ``m`` with ``t_j <= -h`` (below
        the direct window) or ``h < t_j``, ``s_j <= thr_i`` (above it, below the linear region);
        ``f = sigmoid`` for ``ser``, ``sigmoid'`` for ``dser`` (skipped when it is empty).

        With ``x = e^{-|u|}``: below, ``sigmoid(u) = p_0(x)``; above, ``1 - p_0(x)``;
        ``sigmoid'(u) = p_1(x)``, ``p_f(x) = sum_n coef[f, n-1] x^n``."""
        n_t = ys.shape[0]
        qi = np.empty(n_t, dtype=np.int64)
        xq = np.empty(n_t, dtype=np.float64)
        xq_d = np.empty(n_t, dtype=np.float64)
        nf = 2 if dser.shape[0] > 0 else 1
        cf = coef[:nf]
        out = np.empty((nf, n_t), dtype=np.float64)
        acc = np.empty(n_terms, dtype=np.float64)
        for m in range(max_l):
            a0, e = seg[m], seg[m + 1]
            n_m = e - a0
            Q = 0
            for i in range(n_t):
                if lks[i] > m:
                    qi[Q] = i
                    xq[Q] = ys[i]
                    Q += 1
            if n_m == 0 or Q == 0:
                continue
            xs, xs_d = _run_float64(vals, a0, n_m)
            ws = np.ones(n_m, dtype=np.float64)
            lo = np.zeros(Q, dtype=np.int64)
            hi = np.empty(Q, dtype=np.int64)
            p = 0
            for q in range(Q):  # below the window: s_j <= y - h, ascending sweep
                lim = xq[q] - h
                while p < n_m and xs[p] <= lim:
                    p += 1
                hi[q] = p
            _series_sweep(xs, ws, xq[:Q], lo, hi, 1.0, inv_tau, cf, n_terms, out, acc)
            for q in range(Q):
                ser[qi[q]] += out[0, q]
                if nf == 2:
                    dser[qi[q]] += out[1, q]
            pl = 0
            pm = 0
            for q in range(Q):  # above it: y + h < s_j <= thr, descending sweep
                i = qi[Q - 1 - q]
                xq_d[q] = ys[i]
                t = thr[i]
                lim = ys[i] + h
                while pl < n_m and vals[e - 1 - pl] > t:
                    pl += 1
                while pm < n_m and xs_d[pm] > lim:
                    pm += 1
                lo[q] = pl
                hi[q] = pm
            _series_sweep(xs_d, ws, xq_d[:Q], lo, hi, -1.0, inv_tau, cf, n_terms, out, acc)
            for q in range(Q):
                i = qi[Q - 1 - q]
                ser[i] += max(0, hi[q] - lo[q]) - out[0, q]
                if nf == 2:
                    dser[i] += out[1, q]

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _item_series(vals, seg, ys, thr, lks, gs, max_l, h, inv_tau, coef, n_terms, ser):
        """Add to ``ser[j]`` (items in (level, score) order) the series part of
        ``sum_i g_i sigmoid'(t_ij / tau) / tau`` over targets ``i`` more relevant than item ``j``
        whose window excludes ``j`` (the transpose of :func:`_target_series`, same membership tests)."""
        n_t = ys.shape[0]
        xs = np.empty(n_t, dtype=np.float64)
        xs_d = np.empty(n_t, dtype=np.float64)
        ws = np.empty(n_t, dtype=np.float64)
        ws_d = np.empty(n_t, dtype=np.float64)
        th = np.empty(n_t, dtype=thr.dtype)
        acc = np.empty(n_terms, dtype=np.float64)
        for m in range(max_l):
            a0, e = seg[m], seg[m + 1]
            n_m = e - a0
            T = 0
            for i in range(n_t):
                if lks[i] > m and gs[i] != 0.0:
                    xs[T] = ys[i]
                    ws[T] = gs[i]
                    th[T] = thr[i]
                    T += 1
            if n_m == 0 or T == 0:
                continue
            for i in range(T):
                xs_d[i] = xs[T - 1 - i]
                ws_d[i] = ws[T - 1 - i]
            xq, xq_d = _run_float64(vals, a0, n_m)
            lo = np.zeros(n_m, dtype=np.int64)
            hi = np.empty(n_m, dtype=np.int64)
            out = np.empty((1, n_m), dtype=np.float64)
            p = 0
            for q in range(n_m):  # targets with s_j <= y - h, items descending
                while p < T and xs_d[p] - h >= xq_d[q]:
                    p += 1
                hi[q] = p
            _series_sweep(xs_d[:T], ws_d[:T], xq_d, lo, hi, -1.0, inv_tau, coef, n_terms, out, acc)
            for q in range(n_m):
                ser[e - 1 - q] += out[0, q] * inv_tau
            pl = 0
            pm = 0
            for q in range(n_m):  # targets with y + h < s_j <= thr, items ascending
                v = vals[a0 + q]
                while pl < T and th[pl] < v:
                    pl += 1
                while pm < T and xs[pm] + h < xq[q]:
                    pm += 1
                lo[q] = pl
                hi[q] = pm
            _series_sweep(xs[:T], ws[:T], xq, lo, hi, 1.0, inv_tau, coef, n_terms, out, acc)
            for q in range(n_m):
                ser[a0 + q] += out[0, q] * inv_tau

    @njit(cache=True, fastmath=True, error_model="numpy")
    def _row(s, lv, pk, g, p0, p1, c64, cd, coefs, tab, mode, n_lev, rank, rplus, dsum, grad):
        """One query row. ``mode`` 0: SupRank forward (rank, rank+), 1: exact forward, 2: SupRank
        backward (adds to ``grad`` the gradient of ``sum_c g_c rank_c``). ``tab``: the row's relevance
        per level (empty: binary rank+; with ``rplus`` empty, no rank+). ``dsum[c]``: the series part
        of ``sum_j sigmoid'(t_j / tau)`` of pair ``c``, written by mode 0 (unless empty) and read
        by mode 2."""
        n = s.shape[0]
        one = s.dtype.type(1.0)
        inv_tau, c0, width, rho, start, offset = c64[0], c64[1], c64[2], c64[3], c64[4], c64[5]
        n_terms, cut, series_cost = int(c64[6]), c64[7], c64[8]
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
        ser = np.zeros(n_t, dtype=np.float64)  # series part per target (ascending score order)
        item_ser = np.zeros(n if mode == 2 else 0, dtype=np.float64)  # ... per item (row order)
        # series or direct band: direct work is at most sum_k #(less relevant items); the sweeps
        # visit each (level, item) and (level, target) pair a few times with n_terms operations
        use_series = False
        if mode != 1:
            direct = 0
            events = 3 * (seg[max_l] - seg[0])
            for c in range(p0, p1):
                direct += seg[lv[pk[c]]] - seg[0]
                events += 2 * lv[pk[c]]
            use_series = direct > series_cost * n_terms * events
        # direct window -h < t <= h around each target (series outside it; empty for h = 0), or the
        # whole band -cut tau < t (items below add under e^{-cut})
        h = c0 / inv_tau if use_series else cut / inv_tau
        window = not use_series or h > 0.0
        if use_series:
            ys = np.empty(n_t, dtype=np.float64)
            thr_t = np.empty(n_t, dtype=s.dtype)
            lks = np.empty(n_t, dtype=np.int64)
            gs = np.empty(n_t, dtype=np.float64)
            for i in range(n_t):
                c = p0 + torder[i]
                ys[i] = np.float64(ts[torder[i]])
                thr_t[i] = ts[torder[i]] + cd[0]
                lks[i] = lv[pk[c]]
                gs[i] = g[c] if mode == 2 else 1.0
            if mode == 0:
                dser = np.zeros(n_t if dsum.shape[0] > 0 else 0, dtype=np.float64)
                _target_series(vals, seg, ys, thr_t, lks, max_l, h, inv_tau, coefs, n_terms, ser, dser)
                for i in range(dser.shape[0]):
                    dsum[p0 + torder[i]] = dser[i]
            else:  # the targets' own series parts were summed by the forward pass
                for i in range(n_t):
                    ser[i] = dsum[p0 + torder[i]]
                _item_series(vals, seg, ys, thr_t, lks, gs, max_l, h, inv_tau, coefs[1:], n_terms, item_ser)
        # per-level pointers into the sorted runs; targets come in ascending score order, so each
        # only moves forward: first v >= y, first v > y, first v > y + delta, first v > y - h,
        # first v > y + h
        p_ge = seg[:n_lev].copy()
        p_gt = seg[:n_lev].copy()
        p_lin = seg[:n_lev].copy()
        p_low = seg[:n_lev].copy()
        p_mid = seg[:n_lev].copy()
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
            a = s.dtype.type(math.exp((y64 - ref64) * inv_tau)) if window else one
            thr = y + delta  # s_j > s_k + delta (rounded as the torch path does) is the linear region
            low = y64 - h
            mid = y64 + h if use_series else np.inf
            closed = 0.0
            band = 0.0
            nl_all = 0
            gk = g[c] if mode == 2 else 0.0
            gs = s.dtype.type(gk * inv_tau)
            for m in range(lk):
                e = seg[m + 1]
                while p_lin[m] < e and vals[p_lin[m]] <= thr:
                    p_lin[m] += 1
                lo = hi = 0
                if window:
                    while p_low[m] < e and np.float64(vals[p_low[m]]) <= low:
                        p_low[m] += 1
                    while p_mid[m] < e and np.float64(vals[p_mid[m]]) <= mid:
                        p_mid[m] += 1
                    lo, hi = p_low[m], min(p_mid[m], p_lin[m])  # the direct window
                    if e_hi[m] < lo:
                        e_hi[m] = lo
                    for j in range(e_hi[m], hi):
                        E[j] = math.exp((ref64 - np.float64(vals[j])) * inv_tau)
                    if hi > e_hi[m]:
                        e_hi[m] = hi
                nl = e - p_lin[m]
                part = s.dtype.type(0.0)
                if mode == 0:
                    while p_gt[m] < e and vals[p_gt[m]] <= y:
                        p_gt[m] += 1
                    sl = suf[p_lin[m]] if nl > 0 else 0.0
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
                        dlin[p_lin[m]] += gk * rho
                        dlin[e] -= gk * rho
                        nl_all += nl
                band += part
            if mode == 0:
                rank[c] = r + closed + band + ser[i]
            else:
                grad[k] -= band + gk * rho * nl_all + gk * inv_tau * ser[i]
        if mode == 2:
            run = 0.0
            for j in range(n):
                run += dlin[j]
                grad[perm[j]] += gacc[j] + run + item_ser[j]

    @njit(cache=True, parallel=True, error_model="numpy")
    def ranks_forward(S, LV, row_ptr, pk, c64, cd, coefs, tabs, mode, n_lev, rank, rplus, dsum):
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
                _row(S[r], LV[r], pk, g, p0, p1, c64, cd, coefs, tab, mode, n_lev, rank, rplus, dsum, dummy)

    @njit(cache=True, parallel=True, error_model="numpy")
    def ranks_backward(S, LV, row_ptr, pk, g, c64, cd, coefs, n_lev, dsum, grad):
        """``grad += d(sum_c g_c rank_c) / dS`` for the SupRank rank; rows in parallel."""
        B = S.shape[0]
        empty = np.empty(0, dtype=np.float64)
        for r in prange(B):
            p0, p1 = row_ptr[r], row_ptr[r + 1]
            if p1 > p0:
                _row(S[r], LV[r], pk, g, p0, p1, c64, cd, coefs, empty, 2, n_lev, empty, empty, dsum, grad[r])


def series_coefficients(dtype: np.dtype, cut: float | None = None) -> np.ndarray:
    r"""``(2, N)`` coefficients ``c[f, n-1]`` of ``x^n``, ``n = 1..N``, with
    ``sigmoid(-d) ~ sum_n c[0, n-1] x^n`` and ``sigmoid'(d) ~ sum_n c[1, n-1] x^n`` for
    ``x = e^{-d}``, ``d >= SERIES_CUT``: ``x q(x)`` where ``q`` is the Chebyshev interpolant of
    ``1 / (1 + x)`` (resp. ``1 / (1 + x)^2``) on ``[0, e^{-SERIES_CUT}]``, computed in 40-digit
    arithmetic, of the lowest degree whose relative error is below ``SERIES_TOL[dtype]``.
    Far items (``x -> 0``) keep the same relative error; the Taylor series
    ``sum (-1)^{n+1} x^n`` would need far more terms near ``x = 1`` and diverges there.
    ``cut`` overrides ``SERIES_CUT``."""
    return _chebyshev_coefficients(SERIES_TOL[np.dtype(dtype)], SERIES_CUT if cut is None else cut)


@functools.cache
def _chebyshev_coefficients(tol: float, cut: float) -> np.ndarray:
    import mpmath

    a = math.exp(-cut)
    t0 = 1.0 + 2.0 / a  # the poles at x = -1, mapped onto the Chebyshev interval's axis
    rho = t0 + math.sqrt(t0 * t0 - 1.0)  # Bernstein ellipse: the error decays as rho^-degree
    degree = max(1, int(math.log(1.0 / tol) / math.log(rho)) - 1)
    with mpmath.workdps(40):
        while True:
            q1, e1 = mpmath.chebyfit(lambda x: 1 / (1 + x), [0, a], degree + 1, error=True)
            q2, e2 = mpmath.chebyfit(lambda x: 1 / (1 + x) ** 2, [0, a], degree + 1, error=True)
            if e1 * (1 + a) < tol and e2 * (1 + a) ** 2 < tol:
                break
            degree += 1
        return np.array([[float(c) for c in q1[::-1]], [float(c) for c in q2[::-1]]], dtype=np.float64)


def kernel_constants(
    dtype: np.dtype, tau: float, rho: float, delta: float, start: float, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``c64 = [1/tau, c0, block width, rho, start, offset, n_terms, band cut, series cost]``
    (float64), ``cd = [delta, e^{-delta/tau}]`` in the scores' dtype and ``coefs`` (2, n_terms),
    :func:`series_coefficients`."""
    coefs = series_coefficients(np.dtype(dtype))
    c64 = [1.0 / tau, SERIES_CUT, BLOCK_WIDTH, rho, start, offset, coefs.shape[1]]
    c64 += [BAND_CUT[np.dtype(dtype)], SERIES_COST]
    return (
        np.array(c64, dtype=np.float64),
        np.array([delta, math.exp(-delta / tau)], dtype=dtype),
        coefs,
    )
