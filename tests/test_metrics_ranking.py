"""hglv2.metrics.evaluate and the functional metrics against the brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_metrics_oracle import ap, evaluate_oracle, hap, ranking

from hglv2.metrics import (
    asi,
    average_precision,
    evaluate,
    hierarchical_ap,
    map_at_k,
    map_at_r,
    ndcg,
    pair_levels,
    precision_at_k,
    recall_at_k,
)
from hglv2.metrics._fused import HAVE_NUMBA
from hglv2.metrics.labels import relevance_table
from hglv2.metrics.ranking import rank_relevant

BACKENDS = ["torch", "numba"] if HAVE_NUMBA else ["torch"]


def _assert_same(got: dict, want: dict):
    for key, values in want.items():
        np.testing.assert_allclose(
            np.asarray(got[key], dtype=float),
            np.asarray(values, dtype=float),
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=key,
        )


@st.composite
def retrieval_case(draw):
    n_levels = draw(st.integers(1, 4))
    same = draw(st.booleans())
    n_q = draw(st.integers(1, 6))
    n_g = n_q if same else draw(st.integers(1, 12))
    if same and n_q < 2:
        n_q = n_g = 2
    dim = draw(st.integers(1, 3))
    # integer-valued embeddings: dot products are exact and ties are frequent
    vals = st.integers(-2, 2)
    q = np.array(
        draw(st.lists(st.lists(vals, min_size=dim, max_size=dim), min_size=n_q, max_size=n_q)),
        dtype=np.float32,
    )
    labs = st.integers(-1, 2)
    ql = np.array(
        draw(st.lists(st.lists(labs, min_size=n_levels, max_size=n_levels), min_size=n_q, max_size=n_q)),
        dtype=np.int64,
    )
    if same:
        return q, ql, None, None
    g = np.array(
        draw(st.lists(st.lists(vals, min_size=dim, max_size=dim), min_size=n_g, max_size=n_g)),
        dtype=np.float32,
    )
    gl = np.array(
        draw(st.lists(st.lists(labs, min_size=n_levels, max_size=n_levels), min_size=n_g, max_size=n_g)),
        dtype=np.int64,
    )
    return q, ql, g, gl


@given(
    case=retrieval_case(),
    kind=st.sampled_from(["pop", "map"]),
    alpha=st.sampled_from([0.0, 1.0, 2.5]),
    method=st.sampled_from(["sort", "search"]),
    chunk=st.integers(1, 4),
    backend=st.sampled_from(BACKENDS),
)
def test_evaluate_matches_oracle(case, kind, alpha, method, chunk, backend):
    q, ql, g, gl = case
    got = evaluate(
        q,
        ql,
        g,
        gl,
        recall_at=(1, 2, 5),
        relevance=kind,
        alpha=alpha,
        reduce=False,
        ndcg_at=3,
        chunk_size=chunk,
        method=method,
        backend=backend,
    )
    want = evaluate_oracle(q, ql, g, gl, recall_at=(1, 2, 5), kind=kind, alpha=alpha, ndcg_at=3)
    _assert_same(got, want)


@given(case=retrieval_case(), backend=st.sampled_from(BACKENDS))
def test_reduced_means_skip_queries_without_positives(case, backend):
    q, ql, g, gl = case
    per = evaluate_oracle(q, ql, g, gl)
    red = evaluate(q, ql, g, gl, backend=backend)
    n_levels = ql.shape[1]
    assert red["n_queries"] == len(q)
    for lev in range(n_levels):
        have = [n > 0 for n in per[f"n_positives_level{lev}"]]
        assert red[f"n_queries_level{lev}"] == sum(have)
        assert red[f"n_skipped_level{lev}"] == len(q) - sum(have)
        vals = [v for v, h in zip(per[f"AP_level{lev}"], have, strict=True) if h]
        if vals:
            assert math.isclose(red[f"AP_level{lev}"], float(np.mean(vals)), rel_tol=1e-9)
        else:
            assert math.isnan(red[f"AP_level{lev}"])
    hv = [v for v in per["H-AP"] if not math.isnan(v)]
    assert red["n_queries_multilevel"] == len(hv)
    if hv:
        assert math.isclose(red["H-AP"], float(np.mean(hv)), rel_tol=1e-9)


def test_self_excluded_by_index_not_position():
    # Query 0 ties with item 1 (identical embeddings). Item 1 has a lower score-tie index than no one
    # else; the query itself must be removed by index even though it is not first in the ranking.
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    lab = np.array([0, 1, 0])
    res = evaluate(emb, lab, reduce=False, recall_at=(1,))
    # query 0 ranks [2 (score 2), 1 (score 1)] -> its positive (item 2) is first
    assert res["AP_level0"][0] == 1.0 and res["R@1_level0"][0] == 1.0
    # query 2 ranks [0, 1] (tie on score 2, by index); positive item 0 first
    assert res["AP_level0"][2] == 1.0
    assert math.isnan(res["AP_level0"][1])  # no positive for query 1


def test_explicit_gallery_counts_query_as_its_own_positive():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lab = rng.integers(0, 4, size=30)
    got = evaluate(emb, lab, emb, lab, reduce=False)
    want = evaluate_oracle(emb, lab, emb, lab)
    _assert_same(got, want)
    # with unit-norm embeddings the query is its own nearest neighbour: R@1 = 1 everywhere
    assert np.all(got["R@1_level0"] == 1.0)
    sup_ap = 1.0 - got["AP_level0"]
    assert np.all((sup_ap >= 0) & (sup_ap < 1))


def test_ties_are_broken_by_gallery_index():
    scores = np.array([[1.0, 1.0, 1.0, 1.0]])
    target = np.array([[False, False, True, True]])
    # ranking is 0, 1, 2, 3 -> positives at ranks 3 and 4
    assert math.isclose(average_precision(scores, target)[0], (1 / 3 + 2 / 4) / 2)
    assert ranking([1.0, 1.0, 1.0, 1.0]) == [0, 1, 2, 3]
    # -0.0 and +0.0 are the same score
    s = torch.tensor([[0.0, -0.0, 0.0]])
    s[0, 0] = -0.0
    rows, ranks, _ = rank_relevant(s, torch.tensor([[0, 1, 0]], dtype=torch.uint8))
    assert ranks.tolist() == [2]


@given(st.data())
def test_functional_metrics_match_oracle(data):
    n_q = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 15))
    scores = np.array(
        data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=n, max_size=n), min_size=n_q, max_size=n_q)),
        dtype=np.float32,
    )
    levels = np.array(
        data.draw(st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=n_q, max_size=n_q)),
        dtype=np.int64,
    )
    target = levels >= 2
    k = data.draw(st.integers(1, 5))
    from test_metrics_oracle import asi as o_asi
    from test_metrics_oracle import map_at_k as o_map_at_k
    from test_metrics_oracle import map_at_r as o_map_at_r
    from test_metrics_oracle import ndcg as o_ndcg
    from test_metrics_oracle import precision, recall_rate

    for i in range(n_q):
        order = ranking(scores[i])
        rel = [int(target[i, j]) for j in order]
        lv = [int(levels[i, j]) for j in order]
        checks = [
            (average_precision(scores, target)[i], ap(rel)),
            (map_at_r(scores, target)[i], o_map_at_r(rel)),
            (map_at_k(scores, target, k)[i], o_map_at_k(rel, k)),
            (recall_at_k(scores, target, k)[i], recall_rate(rel, k)),
            (precision_at_k(scores, target, k)[i], precision(rel, k)),
            (hierarchical_ap(scores, levels, n_levels=3)[i], hap(lv, 3)),
            (hierarchical_ap(scores, levels, "map", 0.5, n_levels=3)[i], hap(lv, 3, "map", 0.5)),
            (ndcg(scores, levels)[i], o_ndcg(lv)),
            (ndcg(scores, levels, k)[i], o_ndcg(lv, k)),
            (asi(scores, levels)[i], o_asi(lv)),
        ]
        for got, want in checks:
            both_nan = math.isnan(got) and math.isnan(want)
            assert both_nan or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def test_hap_does_not_merge_levels_with_equal_relevance():
    """Regression: pop relevance gives level 1 (1 item) and level 2 (2 items) the same value
    rel = 1/1 = 2/2. The reference code matches items by relevance *value* and counts both levels
    twice (H-AP 2.0 here); computed by level it is 1.0 (every item is equally relevant)."""
    levels = np.array([[1, 2, 2]])
    scores = np.array([[3.0, 2.0, 1.0]])
    counts = torch.tensor([[0, 1, 2]])
    rel = relevance_table(counts, "pop", 1.0)
    assert rel[0, 1] == rel[0, 2] == 1.0
    assert hierarchical_ap(scores, levels)[0] == pytest.approx(1.0)
    assert hap([1, 2, 2], 2) == pytest.approx(1.0)

    # the value-matching formula of the reference code, for contrast
    def by_value(sorted_rel, level_values):
        hr = [
            sum(min(r, lv) * sum(1 for x in sorted_rel[: k + 1] if x == lv) for lv in level_values)
            for k, r in enumerate(sorted_rel)
        ]
        return sum(h / (k + 1) for k, h in enumerate(hr)) / sum(sorted_rel)

    assert by_value([1.0, 1.0, 1.0], [1.0, 1.0]) == pytest.approx(2.0)
    # a less degenerate case with a negative in between: still exact against the oracle
    levels = np.array([[2, 0, 1, 2, 0]])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    assert hierarchical_ap(scores, levels)[0] == pytest.approx(hap([2, 0, 1, 2, 0], 2))


def test_map_relevance_is_weighted_mean_of_level_aps():
    rng = np.random.default_rng(7)
    n = 40
    base = rng.integers(0, 3, size=n)
    lab = np.stack([base * 4 + rng.integers(0, 4, size=n), base * 2 + rng.integers(0, 2, size=n), base], 1)
    # make it a tree: coarser columns are functions of finer ones
    lab[:, 1] = lab[:, 0] // 2
    lab[:, 2] = lab[:, 0] // 4
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    for alpha in ([1.0, 2.0, 3.0], 0.0, 1.5):
        res = evaluate(emb, lab, relevance="map", alpha=alpha, reduce=False)
        w = np.asarray(alpha if isinstance(alpha, list) else [v**alpha for v in (1, 2, 3)], dtype=float)
        # level >= m  <=> column L - m equal (tree)
        aps = np.stack([res[f"AP_level{3 - m}"] for m in (1, 2, 3)], 1)
        ok = ~np.isnan(aps)
        want = (np.where(ok, aps, 0) * w).sum(1) / (ok * w).sum(1)
        np.testing.assert_allclose(res["H-AP"], want, rtol=1e-9)


def test_edge_cases():
    # one-item gallery
    r = evaluate(np.ones((1, 2)), np.array([[1, 2]]), np.ones((1, 2)), np.array([[1, 3]]), reduce=False)
    assert r["AP_level0"][0] == 1.0 and math.isnan(r["AP_level1"][0])
    assert r["H-AP"][0] == 1.0 and r["NDCG"][0] == 1.0 and r["ASI"][0] == 1.0
    # all positives: every metric is perfect
    rng = np.random.default_rng(0)
    e = rng.normal(size=(6, 3))
    r = evaluate(e, np.zeros((6, 2), dtype=int))
    for key in ("AP_level0", "mAP@R_level1", "H-AP", "NDCG", "ASI", "R@1_level0"):
        assert r[key] == pytest.approx(1.0)
    assert r["P@10_level0"] == pytest.approx(5 / 10)
    # no positives anywhere: NaN means, everything counted as skipped
    r = evaluate(e, np.arange(6))
    assert math.isnan(r["AP_level0"]) and math.isnan(r["H-AP"])
    assert r["n_skipped_level0"] == 6 and r["n_skipped_multilevel"] == 6
    # unknown labels (-1) never match
    r = evaluate(e, -np.ones(6, dtype=int))
    assert r["n_queries_level0"] == 0
    # torch input, (N,) labels
    r2 = evaluate(torch.from_numpy(e), torch.zeros(6, dtype=torch.long))
    assert r2["AP_level0"] == pytest.approx(1.0)


def test_bad_inputs():
    e = np.zeros((3, 2))
    with pytest.raises(ValueError, match="rows"):
        evaluate(e, np.zeros(4, dtype=int))
    bad = e.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        evaluate(bad, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="relevance"):
        evaluate(e, np.zeros(3, dtype=int), relevance="x")
    with pytest.raises(ValueError, match="both"):
        evaluate(e, np.zeros(3, dtype=int), gallery_embeddings=e)
    with pytest.raises(ValueError, match="gallery has no item"):
        evaluate(e[:1], np.zeros(1, dtype=int))
    with pytest.raises(ValueError, match="no queries"):
        evaluate(np.zeros((0, 2)), np.zeros(0, dtype=int), e, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        evaluate(e, np.array([0.5, 1, 2]))


def test_pair_levels_counts_equal_columns():
    q = np.array([[1, 2, 3]])
    g = np.array([[1, 2, 3], [0, 2, 3], [0, 0, 3], [1, 0, 0], [-1, 2, 9]])
    assert pair_levels(q, g).tolist() == [[3, 2, 1, 1, 1]]


def test_streaming_matches_one_chunk_on_larger_case():
    rng = np.random.default_rng(11)
    n = 400
    fine = rng.integers(0, 60, size=n)
    lab = np.stack([fine, fine // 6, fine // 30], 1)
    emb = rng.normal(size=(n, 16)).astype(np.float32) + 0.5 * np.eye(60, 16)[fine % 16]
    one = evaluate(emb, lab, chunk_size=n, reduce=False, backend="torch")
    for kwargs in (
        {"chunk_size": 7},
        {"memory_mb": 1},
        {"method": "search"},
        {"method": "sort"},
        *({"backend": b, "method": m} for b in BACKENDS for m in ("sort", "search")),
    ):
        many = evaluate(emb, lab, reduce=False, **kwargs)
        for key in one:
            np.testing.assert_allclose(many[key], one[key], equal_nan=True, err_msg=str((key, kwargs)))


def test_falls_back_to_torch_without_numba(monkeypatch):
    from hglv2.metrics import _fused

    rng = np.random.default_rng(2)
    emb = rng.normal(size=(25, 4)).astype(np.float32)
    lab = rng.integers(0, 3, size=(25, 2))
    want = evaluate_oracle(emb, lab)
    monkeypatch.setattr(_fused, "HAVE_NUMBA", False)
    _assert_same(evaluate(emb, lab, reduce=False), want)
    with pytest.raises(ValueError, match="needs the numba package"):
        evaluate(emb, lab, backend="numba")


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_sort_path_matches_oracle(backend):
    """A gallery large enough for the automatic choice of the full-sort ranking (coarse level with
    two classes), with integer scores so that ties are frequent."""
    rng = np.random.default_rng(9)
    n_q, n_g = 12, 700
    fine = rng.integers(0, 40, size=n_q + n_g)
    lab = np.stack([fine, fine // 5, fine // 20], 1)
    emb = rng.integers(-2, 3, size=(n_q + n_g, 3)).astype(np.float32)
    q, ql, g, gl = emb[:n_q], lab[:n_q], emb[n_q:], lab[n_q:]
    got = evaluate(q, ql, g, gl, reduce=False, backend=backend, ndcg_at=20)
    _assert_same(got, evaluate_oracle(q, ql, g, gl, ndcg_at=20))


def test_evaluate_keeps_torch_thread_count():
    """numba's threading layer resets OpenMP's thread count; evaluate() must restore torch's."""
    import numpy as np
    import torch

    from hglv2.metrics import evaluate

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        evaluate(rng.normal(size=(40, 8)).astype("float32"), rng.integers(0, 4, size=(40, 2)))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("n_levels", range(10))
def test_tagged_keys_equal_their_definition(n_levels):
    """The compiled key pass (four levels compared per pass over a row, padded levels never
    matching) against the definition: the score's order image, the index, the match mask; the
    excluded item last with mask 0; -0.0 ties with +0.0; negative codes compare like any other."""
    from hglv2.metrics import _fused

    rng = np.random.default_rng(n_levels)
    q, n = 7, 300
    s = np.round(rng.normal(size=(q, n)), 1).astype(np.float32)  # rounded: ties
    s[0, :5], s[1, :3] = -0.0, 0.0
    qc = rng.integers(-1, 4, size=(q, n_levels)).astype(np.int32)
    gct = rng.integers(-1, 4, size=(n_levels, n)).astype(np.int32)
    me = rng.integers(-1, n, size=q).astype(np.int64)
    keys, bad = np.empty((q, n), np.int64), np.zeros(q, np.uint8)
    _fused.build_tagged_keys(s.view(np.int32), *_fused.padded_codes(qc, gct), me, n_levels, keys, bad)
    x = s.view(np.int32).astype(np.int64)
    x[x == -(2**31)] = 0
    x ^= (x >> 32) & 0x7FFFFFFF
    want = ((-1 - x) << 32) | (np.arange(n, dtype=np.int64) << n_levels)
    for c in range(n_levels):
        want |= (gct[c][None, :] == qc[:, c][:, None]).astype(np.int64) << c
    for r in np.flatnonzero(me >= 0):
        want[r, me[r]] = (np.int64(0x7FFFFFFF) << 32) | (np.int64(me[r]) << n_levels)
    assert np.array_equal(keys, want) and not bad.any()
    s[2, 7] = np.nan
    _fused.build_tagged_keys(s.view(np.int32), *_fused.padded_codes(qc, gct), me, n_levels, keys, bad)
    assert bad.tolist() == [0, 0, 1, 0, 0, 0, 0]


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("n_levels", range(1, 9))
def test_level_counts_equal_their_definition(n_levels):
    """The histogram count of the fused metric pass: per column the masks with its bit set, and
    per v the masks with exactly v of the first ``n_levels`` bits set (any mask, runs of one
    mask, lengths that are not a multiple of the four interleaved histograms)."""
    from hglv2.metrics import _fused

    rng = np.random.default_rng(n_levels)
    for n in (0, 1, 3, 4, 257):
        tags = rng.integers(0, 1 << n_levels, size=n).astype(np.uint8)
        tags[: n // 2] = tags[0] if n else 0
        npos, nlev = _fused._level_counts(tags, n_levels)
        bits = (tags[:, None] >> np.arange(n_levels)) & 1
        assert npos.tolist() == bits.sum(0).tolist()
        assert nlev.tolist() == np.bincount(bits.sum(1), minlength=n_levels + 1).tolist()
