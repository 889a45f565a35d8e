"""The SupRank operator: upper bound, gradients (gradcheck) and chunked path == dense formulation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hglv2.losses import (
    SmoothAP,
    StepConfig,
    SupAP,
    SupHAP,
    SupNDCG,
    SupRecall,
    pair_ranks,
    sup_ap,
    sup_hap,
    sup_ndcg,
    sup_recall,
    suprank_step,
)


# --------------------------------------------------------------------------------------------
# A straightforward dense B x N x N implementation of the reference code's quick path.
def dense_ranks(scores, levels, rel, mode="suprank", tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    """rank, rank+ for every (query b, item k) as (B, N) tensors; rel (B, N) relevances."""
    B, N = scores.shape
    t = scores[:, None, :] - scores[:, :, None]  # [b, k, j] = s_j - s_k
    less = levels[:, None, :] < levels[:, :, None]
    sig = torch.sigmoid(t / tau)
    if offset is None:
        offset = start + torch.sigmoid(torch.tensor(delta / tau)).item()
    sup = torch.where(t > delta, rho * (t - delta) + offset, torch.where(t > 0, start + sig, sig))
    H = (t >= 0).to(t.dtype)
    if mode == "suprank":
        step, step_plus = torch.where(less, sup, H), H
    elif mode == "sigmoid":
        step, step_plus = sig, sig
    else:
        step, step_plus = H, H
    not_self = ~torch.eye(N, dtype=torch.bool)[None]
    rank = 1.0 + (step * not_self).sum(-1)
    min_rel = torch.minimum(rel[:, None, :], rel[:, :, None])
    rank_plus = rel + (step_plus * not_self * min_rel).sum(-1)
    return rank, rank_plus


def dense_pop_relevance(levels, L, alpha=1.0):
    rel = torch.zeros(levels.shape, dtype=torch.float64)
    for lvl in range(1, L + 1):
        m = levels == lvl
        n = m.sum(1, keepdim=True).clamp(min=1)
        rel = torch.where(m, lvl**alpha / n, rel)
    return rel


def dense_loss(kind, emb, lab, mode="suprank", **kw):
    scores = emb @ emb.t()
    if kind in ("ap", "recall"):
        levels = (lab[:, None, 0] == lab[None, :, 0]).long()
        rel = levels.to(scores.dtype)
    else:
        levels = (lab[:, None, :] == lab[None, :, :]).sum(-1)
        rel = dense_pop_relevance(levels, lab.size(1)).to(scores.dtype)
    rank, rank_plus = dense_ranks(scores, levels, rel, mode, **kw)
    if kind in ("ap", "hap"):
        metric = (rank_plus / rank * (rel > 0)).sum(1) / rel.sum(1)
    elif kind == "ndcg":
        gain = 2.0 ** levels.to(scores.dtype) - 1
        ideal = gain.sort(1, descending=True).values
        disc = 1 / torch.log2(torch.arange(2, scores.size(1) + 2, dtype=scores.dtype))
        metric = (gain / torch.log2(1 + rank)).sum(1) / (ideal * disc).sum(1)
    else:
        n_pos = rel.sum(1)
        metric = 0
        for k in (1, 2, 4, 8, 16):
            metric = metric + (torch.sigmoid(k - rank) * rel).sum(1) / n_pos.clamp(max=k)
        metric = metric / 5
    return (1 - metric).mean()


OURS = {"ap": sup_ap, "hap": sup_hap, "ndcg": sup_ndcg, "recall": sup_recall}


def _batch(B=24, D=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=dtype), dim=1)
    lab = torch.stack([torch.randint(0, B // 3, (B,), generator=g)] * 3, 1)
    lab[:, 1] //= 2
    lab[:, 2] //= 4
    return emb, lab


@pytest.mark.parametrize("kind", ["ap", "hap", "ndcg", "recall"])
@pytest.mark.parametrize("chunk", [1, 37, 1 << 18])
def test_chunked_equals_dense_values_and_gradients(kind, chunk):
    emb, lab = _batch(dtype=torch.float64)
    emb.requires_grad_(True)
    ours = OURS[kind](emb, lab, chunk_size=chunk)
    (g_ours,) = torch.autograd.grad(ours, emb)
    ref = dense_loss(kind, emb, lab)
    (g_ref,) = torch.autograd.grad(ref, emb)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 1 << 18])
def test_smooth_ap_equals_dense_sigmoid_formulation(chunk):
    emb, lab = _batch(dtype=torch.float64, seed=4)
    emb.requires_grad_(True)
    ours = SmoothAP(chunk_size=chunk)(emb, lab)
    (g_ours,) = torch.autograd.grad(ours, emb)
    ref = dense_loss("ap", emb, lab, mode="sigmoid")
    (g_ref,) = torch.autograd.grad(ref, emb)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)


def test_float32_path_matches_dense_float32():
    emb, lab = _batch(B=64, D=16, seed=2)
    emb.requires_grad_(True)
    for kind in ("ap", "hap"):
        ours = OURS[kind](emb, lab, chunk_size=500)
        (g1,) = torch.autograd.grad(ours, emb)
        ref = dense_loss(kind, emb, lab)
        (g2,) = torch.autograd.grad(ref, emb)
        assert torch.allclose(ours, ref, atol=1e-5)
        assert torch.allclose(g1, g2, atol=1e-5)


def _away_from_kinks(emb, ref, delta=0.05, margin=2e-3):
    s = emb @ ref.t()
    t = s[:, None, :] - s[:, :, None]
    off = ~torch.eye(s.size(1), dtype=torch.bool)[None]
    return bool(((t.abs() > margin) | ~off).all() and ((t - delta).abs() > margin).all())


@pytest.mark.parametrize(
    "loss", [SupAP(), SupHAP(), SupHAP(relevance="map"), SupNDCG(), SupRecall(), SmoothAP()]
)
def test_gradcheck_float64(loss):
    g = torch.Generator().manual_seed(7)
    for _ in range(50):
        emb = torch.randn(7, 3, generator=g, dtype=torch.float64) * 0.3
        if _away_from_kinks(emb, emb):
            break
    lab = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0], [4, 2, 1]])
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, lab), (emb,), eps=1e-7, atol=1e-6, rtol=1e-4)
    ref = torch.randn(9, 3, generator=g, dtype=torch.float64) * 0.3
    ref_lab = torch.randint(0, 3, (9, 3), generator=g)
    assert torch.autograd.gradcheck(
        lambda e: loss(e, lab, ref, ref_lab), (emb,), eps=1e-7, atol=1e-6, rtol=1e-4
    )


# --------------------------------------------------------------------------------------------
# Upper bound: surrogate rank >= true rank for every (query, relevant item).
params = st.fixed_dictionaries(
    {
        "tau": st.floats(1e-3, 1.0),
        "rho": st.floats(0.0, 1000.0),
        "delta": st.floats(0.0, 0.5),
        "start": st.floats(0.5, 2.0),
        "offset": st.one_of(st.none(), st.floats(1.0, 3.0)),
    }
)


@given(
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 3),
    st.data(),
    params,
)
def test_surrogate_rank_upper_bounds_true_rank(B, N, L, data, p):
    # scores on a coarse grid so that ties (t = 0) and the kinks (t = delta) are exercised
    grid = st.integers(-20, 20).map(lambda v: v / 20)
    scores = torch.tensor(
        data.draw(st.lists(st.lists(grid, min_size=N, max_size=N), min_size=B, max_size=B)),
        dtype=torch.float64,
    )
    levels = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, L), min_size=N, max_size=N), min_size=B, max_size=B))
    )
    q, k, rank, _ = pair_ranks(scores, levels, None, StepConfig(**p))
    for b, kk, r in zip(q.tolist(), k.tolist(), rank.tolist(), strict=True):
        s, lev = scores[b], levels[b]
        t = s - s[kk]
        others = torch.arange(N) != kk
        ge = lev >= lev[kk]
        # true rank: ties with at-least-as-relevant items count 1 (as rank+), with less relevant 1/2
        true = 1 + ((t >= 0) & ge & others).sum().item()
        true += ((t > 0) & ~ge).sum().item() + 0.5 * ((t == 0) & ~ge).sum().item()
        assert r >= true - 1e-9
        # with distinct scores this is the plain rank 1 + #{j != k : s_j > s_k}
        if len(set(s.tolist())) == N:
            assert r >= 1 + ((t > 0) & others).sum().item() - 1e-9


def test_step_function_values():
    t = torch.tensor([-1.0, -0.01, 0.0, 0.01, 0.05, 0.06, 0.2])
    v = suprank_step(t)
    sig = torch.sigmoid(t / 0.01)
    assert torch.allclose(v[:3], sig[:3])
    assert torch.allclose(v[3:5], 0.5 + sig[3:5])
    assert torch.allclose(v[5:], 100 * (t[5:] - 0.05) + 1.44)
    v_none = suprank_step(t, offset=None)
    assert torch.allclose(v_none[-1], 100 * (0.2 - 0.05) + 0.5 + torch.sigmoid(torch.tensor(5.0)))
    assert StepConfig(offset=None).resolved_offset == pytest.approx(0.5 + 1 / (1 + 2.718281828459045**-5))


def test_exact_mode_has_no_gradient_and_rank_plus_is_exact():
    emb, lab = _batch(B=16)
    emb.requires_grad_(True)
    assert not SupAP(approximation="exact")(emb, lab).requires_grad
    scores = emb @ emb.t()
    levels = (lab[:, None, 0] == lab[None, :, 0]).to(torch.int8)
    _, _, rank, rank_plus = pair_ranks(scores, levels)
    assert rank.requires_grad and not rank_plus.requires_grad


@given(
    st.integers(1, 5), st.integers(1, 12), st.integers(1, 3), st.data(), st.sampled_from(["suprank", "exact"])
)
def test_pair_ranks_with_ties_equal_dense(B, N, L, data, mode):
    # grid scores: many exact ties, items within delta and in the linear region (the grid avoids
    # differences of exactly delta, where s_j > s_k + delta and s_j - s_k > delta may round apart)
    grid = st.integers(-8, 8).map(lambda v: v / 30)
    scores = torch.tensor(
        data.draw(st.lists(st.lists(grid, min_size=N, max_size=N), min_size=B, max_size=B)),
        dtype=torch.float64,
    )
    levels = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, L), min_size=N, max_size=N), min_size=B, max_size=B))
    )
    rel = dense_pop_relevance(levels, L)
    table = torch.zeros(B, L + 1, dtype=torch.float64)
    for lvl in range(1, L + 1):
        table[:, lvl] = lvl / (levels == lvl).sum(1).clamp(min=1)
    q, k, rank, rank_plus = pair_ranks(scores, levels.to(torch.int8), table, StepConfig(mode), chunk_size=7)
    d_rank, d_plus = dense_ranks(scores, levels, rel, mode)
    assert torch.allclose(rank, d_rank[q, k], atol=1e-9)
    assert torch.allclose(rank_plus, d_plus[q, k], atol=1e-9)
