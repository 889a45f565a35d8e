"""Exactness: with the Heaviside step everywhere the losses are exactly 1 - AP / 1 - H-AP / 1 - NDCG.

The oracles below are written from the metric definitions on an explicit sorted ranking (the query
counted as its own positive when the batch is the reference set, as in training).
"""

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from hglv2.losses import StepConfig, SupAP, SupHAP, SupNDCG, sup_ap, sup_hap, sup_ndcg

EXACT = StepConfig(approximation="exact")


def ranking(scores_row):
    """Indices by decreasing score (continuous random scores: no ties)."""
    return np.argsort(-scores_row, kind="stable")


def oracle_ap(scores, levels):
    out = []
    for s, lev in zip(scores, levels, strict=True):
        pos = (lev > 0)[ranking(s)]
        if pos.sum() == 0:
            out.append(None)
            continue
        hits = np.cumsum(pos)
        idx = np.nonzero(pos)[0]
        out.append(float(np.mean(hits[idx] / (idx + 1))))
    return out


def oracle_rel(lev, L, relevance, alpha):
    rel = np.zeros(len(lev))
    for lvl in range(1, L + 1):
        if relevance == "pop":
            n = (lev == lvl).sum()
            rel[lev == lvl] = lvl**alpha / n if n else 0.0
        else:
            n = (lev >= lvl).sum()
            rel[lev >= lvl] += lvl**alpha / n if n else 0.0
    return rel


def oracle_hap(scores, levels, L, relevance="pop", alpha=1.0):
    out = []
    for s, lev in zip(scores, levels, strict=True):
        rel = oracle_rel(lev, L, relevance, alpha)[ranking(s)]
        if rel.sum() == 0:
            out.append(None)
            continue
        total = 0.0
        for i in range(len(rel)):
            if rel[i] > 0:
                hrank = sum(min(rel[j], rel[i]) for j in range(i + 1))
                total += hrank / (i + 1)
        out.append(total / rel.sum())
    return out


def oracle_ndcg(scores, levels):
    out = []
    for s, lev in zip(scores, levels, strict=True):
        gain = 2.0 ** lev.astype(float) - 1.0
        disc = 1.0 / np.log2(np.arange(2, len(lev) + 2))
        idcg = (np.sort(gain)[::-1] * disc).sum()
        out.append(None if idcg == 0 else float((gain[ranking(s)] * disc).sum() / idcg))
    return out


def _levels(labels, ref_labels):
    return (labels[:, None, :] == ref_labels[None, :, :]).sum(-1)


def _check(per_query_loss, oracle):
    for got, want in zip(per_query_loss.tolist(), oracle, strict=True):
        if want is None:
            assert got == 0.0
        else:
            assert math.isclose(got, 1.0 - want, abs_tol=1e-9), (got, 1 - want)


batches = st.tuples(
    st.integers(1, 14),  # B
    st.integers(0, 10),  # extra reference items (0: batch is the reference set)
    st.integers(1, 3),  # L
    st.integers(1, 4),  # label alphabet
    st.integers(0, 2**31 - 1),  # seed
)


def _draw(B, extra, L, K, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (B, L), generator=g)
    if extra == 0:
        return emb, labels, None, None
    ref = torch.randn(extra, 4, generator=g, dtype=torch.float64)
    ref_labels = torch.randint(0, K, (extra, L), generator=g)
    return emb, labels, ref, ref_labels


@given(batches)
def test_exact_ap_equals_oracle(args):
    emb, lab, ref, ref_lab = _draw(*args)
    r, rl = (emb, lab) if ref is None else (ref, ref_lab)
    scores = (emb @ r.t()).numpy()
    for col in range(lab.size(1)):
        got = sup_ap(emb, lab, ref, ref_lab, level=col, config=EXACT, reduction="none")
        _check(got, oracle_ap(scores, _levels(lab[:, col : col + 1], rl[:, col : col + 1]).numpy()))


@given(batches, st.sampled_from(["pop", "map"]), st.sampled_from([0.5, 1.0, 2.0]))
def test_exact_hap_equals_oracle(args, relevance, alpha):
    emb, lab, ref, ref_lab = _draw(*args)
    r, rl = (emb, lab) if ref is None else (ref, ref_lab)
    scores = (emb @ r.t()).numpy()
    got = sup_hap(emb, lab, ref, ref_lab, relevance=relevance, alpha=alpha, config=EXACT, reduction="none")
    _check(got, oracle_hap(scores, _levels(lab, rl).numpy(), lab.size(1), relevance, alpha))


@given(batches)
def test_exact_ndcg_equals_oracle(args):
    emb, lab, ref, ref_lab = _draw(*args)
    r, rl = (emb, lab) if ref is None else (ref, ref_lab)
    scores = (emb @ r.t()).numpy()
    got = sup_ndcg(emb, lab, ref, ref_lab, config=EXACT, reduction="none")
    _check(got, oracle_ndcg(scores, _levels(lab, rl).numpy()))


def test_hap_with_one_level_is_ap_and_map_is_mean_of_level_aps():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(20, 5, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 3, (20, 3), generator=g)
    ap = SupAP(approximation="exact", reduction="none")
    hap = SupHAP(approximation="exact", reduction="none")
    assert torch.allclose(hap(emb, lab[:, :1]), ap(emb, lab[:, :1]))
    # map relevance with weights w(l): H-AP = sum_l w(l) AP(level >= l) / sum_l w(l)
    weights = [1.0, 2.0, 3.0]
    got = 1 - SupHAP(relevance="map", alpha=weights, approximation="exact", reduction="none")(emb, lab)
    lev = _levels(lab, lab).numpy()
    scores = (emb @ emb.t()).numpy()
    per_level = [oracle_ap(scores, (lev >= lvl).astype(int)) for lvl in (1, 2, 3)]
    want = [sum(w * a[q] for w, a in zip(weights, per_level, strict=True)) / 6 for q in range(20)]
    assert np.allclose(got.numpy(), want)


def test_surrogate_losses_are_upper_bounds_of_exact_losses():
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=1)
    lab = torch.stack([torch.arange(64) // 4, torch.arange(64) // 16, torch.arange(64) // 32], 1)
    for cls in (SupAP, SupHAP, SupNDCG):
        sur = cls(reduction="none")(emb, lab)
        exact = cls(approximation="exact", reduction="none")(emb, lab)
        assert (sur >= exact - 1e-6).all()
