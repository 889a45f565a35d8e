"""One-pass fused computation of every per-query metric (numba), used by :func:`hglv2.metrics.evaluate`.

Two entry points: :func:`fused_metrics_keys` (rows of sorted order keys) and
:func:`fused_metrics_search` (unsorted keys, few relevant items per query). Labels are compared
inside the kernels. For each query the relevant items are then visited twice in rank order: first
to count them per level/column, then to accumulate every metric of :mod:`hglv2.metrics.ranking` at once (same
formulas; the torch implementation there is the reference and the fallback when numba is not
installed). Work is O(#relevant items) per query with no large temporaries.
"""

from __future__ import annotations

import numpy as np

try:  # numba is optional: the torch implementation is used without it
    from llvmlite import ir
    from numba import get_num_threads, njit, prange, types
    from numba.core.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

LANES = 32  # scores per vector comparison of top_k_scan (one bit each of a uint32 mask)

if HAVE_NUMBA:

    @njit(cache=True)
    def _level_counts(tags, n_levels):  # pragma: no cover - compiled
        """``npos[col]``: the items matching on column ``col``; ``nlev[v]``: the items matching on
        exactly ``v`` columns. From a histogram of the (uint8) masks, kept four times over
        interleaved items so that a run of equal masks does not chain its increments."""
        hist = np.zeros((4, 256), dtype=np.int64)
        n = tags.shape[0]
        n4 = n - n % 4
        for i in range(0, n4, 4):
            hist[0, tags[i]] += 1
            hist[1, tags[i + 1]] += 1
            hist[2, tags[i + 2]] += 1
            hist[3, tags[i + 3]] += 1
        for i in range(n4, n):
            hist[0, tags[i]] += 1
        npos = np.zeros(n_levels, dtype=np.int64)
        nlev = np.zeros(n_levels + 1, dtype=np.int64)
        for t in range(256):
            h = hist[0, t] + hist[1, t] + hist[2, t] + hist[3, t]
            if h == 0:
                continue
            v = 0
            for col in range(n_levels):
                if (t >> col) & 1:
                    npos[col] += h
                    v += 1
            nlev[v] += h
        return npos, nlev

    @njit(cache=True)
    def _row(r, ranks, tags, params, out, counts_out):  # pragma: no cover - compiled
        """Every metric of query ``r`` from its relevant items (ranks ascending, bit-mask tags);
        ``params`` as :func:`metric_params` builds them."""
        n_levels, n_ranked, ks, map_k, ndcg_k, rel_kind, w, disc, disc_prefix, harm = params
        nk = ks.shape[0]
        L = n_levels
        per = 3 + 2 * nk
        base = L * per
        nan = np.nan
        a = 0
        b = ranks.shape[0]
        npos, nlev = _level_counts(tags, L)
        big_r = 0
        for v in range(1, L + 1):
            big_r += nlev[v]
        rel = np.zeros(L + 1)
        if rel_kind == 0:
            for v in range(1, L + 1):
                if nlev[v] > 0:
                    rel[v] = w[v - 1] / nlev[v]
        else:
            acc = 0.0
            for m in range(1, L + 1):
                at_least = 0
                for u in range(m, L + 1):
                    at_least += nlev[u]
                if at_least > 0:
                    acc += w[m - 1] / at_least
                rel[m] = acc
        above = np.zeros(L + 1, dtype=np.int64)
        for v in range(L - 1, -1, -1):
            above[v] = above[v + 1] + nlev[v + 1]
        cnt = np.zeros(L, dtype=np.int64)
        ap = np.zeros(L)
        mapr = np.zeros(L)
        mapk = np.zeros(L)
        first = np.full(L, np.iinfo(np.int64).max)  # rank of the first positive, if <= kmax
        pk = np.zeros((L, nk), dtype=np.int64)
        cum = np.zeros(L + 1, dtype=np.int64)
        gains = np.empty(L + 1)  # NDCG gain 2^v - 1, a table (exact: small powers of two)
        for v in range(L + 1):
            gains[v] = 2.0**v - 1.0
        hnum = 0.0
        hden = 0.0
        dcg = 0.0
        dcgk = 0.0
        asi_sum = 0.0
        kmax = map_k  # beyond this rank only AP, mAP@R and the multi-level sums change
        for j in range(nk):
            kmax = max(kmax, ks[j])
        mrel = np.empty((L + 1, L + 1))  # min(rel[m], rel[v]): the H-rank weights
        for v in range(L + 1):
            for m in range(L + 1):
                mrel[v, m] = min(rel[m], rel[v])
        col_mask = (1 << L) - 1
        for i in range(a, b):
            rk = ranks[i]
            bits = np.int64(tags[i]) & col_mask
            v = 0
            while bits != 0:  # the matching columns, lowest first
                col = _lowest_bit(bits)
                bits &= bits - 1
                v += 1
                cnt[col] += 1
                prec = cnt[col] / rk
                ap[col] += prec
                if rk <= npos[col]:
                    mapr[col] += prec
                if rk <= kmax:
                    if rk <= map_k:
                        mapk[col] += prec
                    if first[col] > rk:
                        first[col] = rk
                    for j in range(nk):
                        if rk <= ks[j]:
                            pk[col, j] += 1
            cum[v] += 1
            hr = 0.0
            for m in range(1, L + 1):
                hr += mrel[v, m] * cum[m]
            hnum += hr / rk
            hden += rel[v]
            gd = gains[v] * disc[rk]
            dcg += gd
            if rk <= ndcg_k:
                dcgk += gd
            tt = max(rk, above[v] + cum[v])
            if tt <= big_r:
                asi_sum += harm[big_r] - harm[tt - 1]
        for col in range(L):
            o = col * per
            counts_out[r, col] = npos[col]
            if npos[col] == 0:
                for j in range(per):
                    out[r, o + j] = nan
                continue
            out[r, o] = ap[col] / npos[col]
            out[r, o + 1] = mapr[col] / npos[col]
            out[r, o + 2] = mapk[col] / min(npos[col], map_k)
            for j in range(nk):
                out[r, o + 3 + j] = 1.0 if first[col] <= ks[j] else 0.0
                out[r, o + 3 + nk + j] = pk[col, j] / ks[j]
        counts_out[r, L] = big_r
        if big_r == 0:
            for j in range(4):
                out[r, base + j] = nan
            return
        out[r, base] = hnum / hden if hden > 0 else nan
        idcg = 0.0
        idcgk = 0.0
        for v in range(L, 0, -1):
            gain = gains[v]
            lo = above[v]
            hi = above[v] + nlev[v]
            idcg += gain * (disc_prefix[min(hi, n_ranked)] - disc_prefix[min(lo, n_ranked)])
            idcgk += gain * (disc_prefix[min(hi, ndcg_k)] - disc_prefix[min(lo, ndcg_k)])
        out[r, base + 1] = dcg / idcg
        out[r, base + 2] = dcgk / idcgk
        out[r, base + 3] = asi_sum / big_r

    @njit(cache=True, inline="always")
    def _match_tag(q_codes, r, g_codes, i, n_levels):  # pragma: no cover - compiled
        """Bit mask of the label columns on which query ``r`` and gallery item ``i`` agree."""
        t = 0
        for col in range(n_levels):
            if q_codes[r, col] == g_codes[i, col]:
                t |= 1 << col
        return t

    @njit(cache=True, parallel=True)
    def fused_metrics_keys(
        sorted_keys, q_codes, g_codes, self_index, params, out, counts_out, n_parts
    ):  # pragma: no cover - compiled
        """Input: row-sorted int64 order keys (low 32 bits = gallery index). The match mask of each
        ranked item is computed here from the label codes (``q_codes`` (Q, L), ``g_codes`` (N, L));
        the item whose index is ``self_index[r]`` (-1: none) is skipped. Fills ``out``
        (Q, L * (3 + 2 * len(ks)) + 4) and ``counts_out`` (Q, L + 1), laid out as read by
        ``hglv2.metrics.evaluate._chunk_numba``."""
        n_levels = params[0]
        n_rows, n = sorted_keys.shape
        for part in prange(n_parts):  # one scratch row per part (:func:`row_parts`), reused for its rows
            ranks = np.empty(n, dtype=np.int64)
            tags = np.empty(n, dtype=np.uint8)
            for r in range(part * n_rows // n_parts, (part + 1) * n_rows // n_parts):
                cnt = 0
                me = self_index[r]
                for p in range(n):
                    gi = sorted_keys[r, p] & 0xFFFFFFFF
                    if gi == me:
                        continue
                    t = _match_tag(q_codes, r, g_codes, gi, n_levels)
                    if t != 0:
                        ranks[cnt] = p + 1
                        tags[cnt] = t
                        cnt += 1
                _row(r, ranks[:cnt], tags[:cnt], params, out, counts_out)

    @njit(cache=True, inline="always")
    def _score_high(bits):  # pragma: no cover - compiled
        """High 32 bits of the order key of a float32 given as int32 bits (see :func:`_key`):
        ascending key = descending score; -0.0 counts as +0.0. Branch-free, so that the loops
        calling it vectorise."""
        x = np.int64(bits)
        x = 0 if x == -2147483648 else x
        x ^= (x >> 32) & 0x7FFFFFFF  # negative floats: reverse their order
        return -1 - x

    @njit(cache=True, inline="always")
    def _key(bits, index):  # pragma: no cover - compiled
        """Order key from a float32's int32 bits: ascending key = descending score, then index."""
        return (_score_high(bits) << 32) | index

    @njit(cache=True, parallel=True)
    def fused_metrics_search(
        score_bits, q_codes, g_codes, self_index, params, out, counts_out
    ):  # pragma: no cover - compiled
        """Input: the (Q, N) float32 scores viewed as int32, for queries with few relevant items.
        Each item gets the order key of :func:`hglv2.metrics.ranking.order_keys` (computed here);
        per query the relevant items (mask from the label codes) are sorted by key, and every other
        item is placed among them by binary search: rank(k) = #{items i : #relevant keys < key_i <= k}.
        The item whose index is ``self_index[r]`` (-1: none) is skipped. Same outputs as
        :func:`fused_metrics_keys`."""
        n_levels = params[0]
        n_rows, n = score_bits.shape
        for r in prange(n_rows):
            me = self_index[r]
            cnt = 0
            for i in range(n):
                if i == me:
                    continue
                for col in range(n_levels):  # any matching column (stop at the first)
                    if q_codes[r, col] == g_codes[i, col]:
                        cnt += 1
                        break
            pos_keys = np.empty(cnt, dtype=np.int64)
            pos_tags = np.empty(cnt, dtype=np.uint8)
            j = 0
            for i in range(n):
                if i == me:
                    continue
                t = _match_tag(q_codes, r, g_codes, i, n_levels)
                if t != 0:
                    pos_keys[j] = _key(score_bits[r, i], i)
                    pos_tags[j] = t
                    j += 1
            order = np.argsort(pos_keys)
            sorted_keys = pos_keys[order]
            sorted_tags = pos_tags[order]
            hist = np.zeros(cnt + 1, dtype=np.int64)
            for i in range(n):
                if i == me:
                    continue
                hist[np.searchsorted(sorted_keys, _key(score_bits[r, i], i))] += 1
            ranks = np.cumsum(hist)[:cnt]
            _row(r, ranks, sorted_tags, params, out, counts_out)

    @njit(cache=True, inline="always")
    def _match4(q_codes, g_codes_t, r, i, c):  # pragma: no cover - compiled
        """The match mask of levels ``c .. c + 3`` of query ``r`` and item ``i`` (bit ``l``: level
        ``c + l`` equal)."""
        return (
            np.int64(g_codes_t[c, i] == q_codes[r, c])
            | (np.int64(g_codes_t[c + 1, i] == q_codes[r, c + 1]) << 1)
            | (np.int64(g_codes_t[c + 2, i] == q_codes[r, c + 2]) << 2)
            | (np.int64(g_codes_t[c + 3, i] == q_codes[r, c + 3]) << 3)
        )

    @njit(cache=True, parallel=True)
    def build_tagged_keys(score_bits, q_codes, g_codes_t, self_index, n_levels, keys, bad):
        # pragma: no cover - compiled
        """One pass over a (Q, N) chunk of float32 scores (viewed as int32): ``keys[r, i]`` gets
        the order key of :func:`hglv2.metrics.ranking.order_keys` with the label match mask packed
        below the gallery index: high 32 bits = order image of the score, then ``i << n_levels``,
        then the mask (bit ``l`` = column ``l`` equal). The codes come padded to a multiple of 4
        levels by :func:`padded_codes` (``q_codes`` (Q, 4G), ``g_codes_t`` (4G, N); padding never
        matches), so four levels are compared per pass over the row (one pass for up to 4 levels).
        Sorting these keys gives the same order as sorting the plain keys (the index is unique),
        and the sorted row carries the masks, so nothing has to be gathered afterwards. The item
        ``self_index[r]`` (-1: none) gets the largest key of its row and mask 0. ``bad[r]`` = 1
        when row ``r`` holds a NaN. The loops are branch-free so that they vectorise."""
        n_rows, n = score_bits.shape
        n_groups = g_codes_t.shape[0] // 4
        for r in prange(n_rows):
            nan_seen = 0
            if n_groups == 0:
                for i in range(n):
                    nan_seen |= (score_bits[r, i] & 0x7FFFFFFF) > 0x7F800000
                    keys[r, i] = (_score_high(score_bits[r, i]) << 32) | (np.int64(i) << n_levels)
            else:
                for i in range(n):
                    nan_seen |= (score_bits[r, i] & 0x7FFFFFFF) > 0x7F800000
                    high = _score_high(score_bits[r, i]) << 32
                    keys[r, i] = high | (np.int64(i) << n_levels) | _match4(q_codes, g_codes_t, r, i, 0)
            for grp in range(1, n_groups):
                for i in range(n):
                    keys[r, i] |= _match4(q_codes, g_codes_t, r, i, 4 * grp) << (4 * grp)
            me = self_index[r]
            if me >= 0:
                keys[r, me] = (np.int64(0x7FFFFFFF) << 32) | (np.int64(me) << n_levels)
            bad[r] = nan_seen

    @njit(cache=True, parallel=True)
    def fused_metrics_tagged(
        sorted_keys, tag_mask, params, out, counts_out, n_parts
    ):  # pragma: no cover - compiled
        """Input: row-sorted keys of :func:`build_tagged_keys` (the low bits ``tag_mask`` hold the
        match mask; the excluded item, if any, is last with mask 0). Same outputs as
        :func:`fused_metrics_keys`, reading the rows sequentially."""
        n_rows, n = sorted_keys.shape
        for part in prange(n_parts):  # one scratch row per part (:func:`row_parts`), reused for its rows
            ranks = np.empty(n + 1, dtype=np.int64)
            tags = np.empty(n + 1, dtype=np.uint8)
            for r in range(part * n_rows // n_parts, (part + 1) * n_rows // n_parts):
                j = 0
                for p in range(n):  # branch-free: the masks are random, a branch would mispredict
                    t = sorted_keys[r, p] & tag_mask
                    ranks[j] = p + 1
                    tags[j] = t
                    j += t != 0
                _row(r, ranks[:j], tags[:j], params, out, counts_out)

    @njit(cache=True, parallel=True)
    def fused_metrics_lists(offsets, ranks, tags, params, out, counts_out):  # pragma: no cover - compiled
        """Input: the relevant items of each query as a ragged list (query ``r`` owns
        ``ranks[offsets[r]:offsets[r + 1]]``, ascending, and their match masks ``tags``), as the
        device ranking produces them. Same outputs as :func:`fused_metrics_keys`."""
        n_rows = offsets.shape[0] - 1
        for r in prange(n_rows):
            a = offsets[r]
            b = offsets[r + 1]
            _row(r, ranks[a:b], tags[a:b], params, out, counts_out)

    @intrinsic
    def _above_mask(typingctx, row, start, t):  # pragma: no cover - compiled
        """uint32 mask of ``LANES`` scores, bit ``j`` set iff ``not (row[start + j] <= t)`` (the
        score is greater than ``t``, or one of them is NaN): one vector load and comparison
        (``row``: 1-D contiguous float32, ``start + LANES <= len(row)``, ``t`` float32)."""
        if not (isinstance(row, types.Array) and row.ndim == 1 and row.dtype == types.float32):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            first = context.cast(builder, args[1], signature.args[1], types.intp)
            vec_t = ir.VectorType(ir.FloatType(), LANES)
            vec = builder.load(builder.bitcast(builder.gep(data, [first]), vec_t.as_pointer()), align=4)
            zero = ir.Constant(ir.IntType(32), 0)
            one = builder.insert_element(ir.Constant(vec_t, ir.Undefined), args[2], zero)
            lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            above = builder.fcmp_unordered(">", vec, builder.shuffle_vector(one, one, lanes0))
            return builder.bitcast(above, ir.IntType(LANES))

        return types.uint32(row, start, types.float32), codegen

    @intrinsic
    def _lowest_bit(typingctx, mask):  # pragma: no cover - compiled
        """Position of the lowest set bit of a non-zero integer (count of trailing zeros)."""

        def codegen(context, builder, signature, args):
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

        return mask(mask), codegen

    @intrinsic
    def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
        """The float32 whose bit pattern is the int32 ``bits``."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @njit(cache=True, inline="always")
    def _score_of_high(high):  # pragma: no cover - compiled
        """The float32 score whose order key has high half ``high`` (inverse of :func:`_score_high`;
        -0.0 comes back as +0.0, which compares equal)."""
        x = -1 - high
        if x < 0:
            x ^= 0x7FFFFFFF
        return _float32_from_bits(np.int32(x))

    @njit(cache=True)
    def _select_smallest(a, k):  # pragma: no cover - compiled
        """Reorder the distinct values ``a`` in place so that ``a[:k]`` are the k smallest and
        ``a[k - 1]`` the largest of them (quickselect, median-of-three pivot, branch-free partition)."""
        lo = 0
        hi = a.shape[0] - 1
        kth = k - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            x = a[lo]
            y = a[mid]
            z = a[hi]
            pivot = max(min(x, y), min(max(x, y), z))
            # move the pivot to the end, then partition a[lo:hi] around it (Lomuto, conditional moves)
            p = lo if x == pivot else (mid if y == pivot else hi)
            a[p] = a[hi]
            a[hi] = pivot
            store = lo
            for i in range(lo, hi):
                v = a[i]
                s = a[store]
                lt = v < pivot
                a[store] = v if lt else s
                a[i] = s if lt else v
                store += lt
            a[hi] = a[store]
            a[store] = pivot
            if store == kth:
                return
            if kth < store:
                hi = store - 1
            else:
                lo = store + 1

    @njit(cache=True, parallel=True)
    def top_k_scan(scores, score_bits, col0, self_index, k, buf, cnt, thr, bad):
        # pragma: no cover - compiled
        """One tile of the top-k selection: columns ``col0 : col0 + T`` of a (Q, N) float32 score
        chunk (``scores`` (Q, T), ``score_bits`` the same viewed as int32). Each row keeps a buffer
        of candidate order keys ``buf[r, :cnt[r]]`` (capacity ``2k + 64``) across tiles; when it is
        full its best ``k`` are moved to the front (:func:`_select_smallest`), the others dropped,
        and ``thr[r]`` becomes the k-th best score (before: NaN, which admits every item). Items
        are scanned by increasing gallery index, so a later item ties with the threshold item only
        with a larger index: it qualifies iff its score is strictly greater, ``not (x <= thr)``.
        That test runs on ``LANES`` scores at a time (:func:`_above_mask`) and only the set bits of
        the mask are visited; NaN scores set their bit too and mark ``bad[r]``. The item
        ``self_index[r]`` is skipped. :func:`top_k_finish` reads the result."""
        n_rows, n = scores.shape
        cap = buf.shape[1]
        n_vec = n - n % LANES
        for r in prange(n_rows):
            row = scores[r]
            me = self_index[r] - col0
            c = cnt[r]
            t = thr[r]
            nan_seen = 0
            for lo in range(0, n, LANES):
                if lo < n_vec:
                    mask = _above_mask(row, lo, t)
                else:  # the last, partial group
                    mask = np.uint32(0)
                    for j in range(n - lo):
                        if not (row[lo + j] <= t):
                            mask |= np.uint32(1) << np.uint32(j)
                while mask != 0:
                    i = lo + _lowest_bit(mask)
                    mask &= mask - np.uint32(1)
                    x = row[i]
                    if x <= t:  # the threshold rose since the mask was taken
                        continue
                    if x != x:
                        nan_seen = 1
                        continue
                    if i == me:
                        continue
                    buf[r, c] = (_score_high(score_bits[r, i]) << 32) | (col0 + i)
                    c += 1
                    if c == cap:
                        _select_smallest(buf[r, :], k)
                        c = k
                        t = _score_of_high(buf[r, k - 1] >> 32)
            cnt[r] = c
            thr[r] = t
            bad[r] |= nan_seen

    @njit(cache=True, parallel=True)
    def top_k_finish(
        buf, cnt, k, q_codes, g_codes, n_levels, top_index, top_tags
    ):  # pragma: no cover - compiled
        """The first ``k`` items of each row from the buffers of :func:`top_k_scan`, in ranking
        order: ``top_index`` (Q, k) int64 and ``top_tags`` (Q, k) uint8 match masks."""
        for r in prange(buf.shape[0]):
            _select_smallest(buf[r, : cnt[r]], k)
            best = np.sort(buf[r, :k])
            for j in range(k):
                gi = best[j] & 0xFFFFFFFF
                top_index[r, j] = gi
                top_tags[r, j] = _match_tag(q_codes, r, g_codes, gi, n_levels)

    @njit(cache=True, parallel=True)
    def top_k_metrics(tags, n_positives, ks, map_k, out):  # pragma: no cover - compiled
        """Per-level metrics from the first k items of each query (``tags`` (Q, k) match masks in
        ranking order; ``n_positives`` (Q, L) exact R per level), accumulated in rank order exactly
        as :func:`_row` does, so the values are bit-for-bit those of the full ranking. ``out``
        (Q, L * (2 + 2 * len(ks))), per level: mAP@R (NaN when R = 0 or R > k), mAP@``map_k``
        (``map_k`` = 0: skipped, left NaN), R@k..., P@k... (NaN when R = 0)."""
        n_rows, k = tags.shape
        n_levels = n_positives.shape[1]
        nk = ks.shape[0]
        per = 2 + 2 * nk
        for r in prange(n_rows):
            for col in range(n_levels):
                o = col * per
                npos = n_positives[r, col]
                cnt = 0
                mapr = 0.0
                mapk = 0.0
                first = k + 1
                for p in range(k):
                    if (tags[r, p] >> col) & 1:
                        rk = p + 1
                        cnt += 1
                        prec = cnt / rk
                        if rk <= npos:
                            mapr += prec
                        if rk <= map_k:
                            mapk += prec
                        if first > rk:
                            first = rk
                if npos == 0:
                    for j in range(per):
                        out[r, o + j] = np.nan
                    continue
                out[r, o] = mapr / npos if npos <= k else np.nan
                out[r, o + 1] = mapk / min(npos, map_k) if map_k > 0 else np.nan
                for j in range(nk):
                    kk = ks[j]
                    hits = 0
                    for p in range(min(kk, k)):
                        hits += (tags[r, p] >> col) & 1
                    out[r, o + 2 + j] = 1.0 if first <= kk else 0.0
                    out[r, o + 2 + nk + j] = hits / kk


def padded_codes(q_codes: np.ndarray, g_codes_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label codes of :func:`build_tagged_keys`: ``q_codes`` (Q, L) and ``g_codes_t`` (L, N)
    as int32, padded to a multiple of 4 levels with levels that never match (query 1, item 0).
    The two sides are :func:`padded_query_codes` and :func:`padded_gallery_codes`."""
    return padded_query_codes(q_codes), padded_gallery_codes(g_codes_t)


def padded_query_codes(q_codes: np.ndarray) -> np.ndarray:
    """``q_codes`` (Q, L) as int32 (Q, 4G), the padding levels 1."""
    return _pad_levels(q_codes, 1, axis=1)


def padded_gallery_codes(g_codes_t: np.ndarray) -> np.ndarray:
    """``g_codes_t`` (L, N) as int32 (4G, N), the padding levels 0 (so they never match a query's)."""
    return _pad_levels(g_codes_t, 0, axis=0)


def _pad_levels(codes: np.ndarray, fill: int, axis: int) -> np.ndarray:
    width = -(-codes.shape[axis] // 4) * 4
    shape = list(codes.shape)
    shape[axis] = width
    out = np.full(shape, fill, dtype=np.int32)
    out[(slice(None),) * axis + (slice(0, codes.shape[axis]),)] = codes
    return out


def row_parts(n_rows: int) -> int:
    """Into how many contiguous row ranges the per-row kernels split a chunk: one per numba
    thread, so that each range reuses one scratch row."""
    return max(1, min(n_rows, get_num_threads()))


def metric_params(n_levels, n_ranked, ks, map_k, ndcg_k, relevance, w, tables) -> tuple:
    """The ``params`` tuple of the fused kernels: L, the number of ranked items, the k of R@k/P@k
    (int64 array), the mAP@k cutoff, the NDCG@k cutoff, the relevance (0: ``pop``, 1: ``map``),
    the L level weights and the three :func:`tables`."""
    disc, disc_prefix, harm = tables
    return (n_levels, n_ranked, ks, map_k, ndcg_k, 0 if relevance == "pop" else 1, w, disc, disc_prefix, harm)


def tables(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """disc[p] = 1/log2(1+p), its prefix sums, and harmonic numbers, for p = 0..n (index 0 = 0)."""
    p = np.arange(1, n + 1, dtype=np.float64)
    disc = np.zeros(n + 1)
    disc[1:] = 1.0 / np.log2(1.0 + p)
    harm = np.zeros(n + 1)
    harm[1:] = np.cumsum(1.0 / p)
    return disc, np.cumsum(disc), harm
