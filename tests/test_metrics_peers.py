"""Cross-checks against independent libraries where their definitions match ours.

Where they differ (and why):
* scikit-learn ``average_precision_score`` treats tied scores as one threshold (precision taken at
  the end of the tied block); we break ties by gallery index. Equal on tie-free scores only.
* scikit-learn ``ndcg_score`` / torchmetrics ``retrieval_normalized_dcg`` use the relevance as a
  *linear* gain and average over tied scores; we pass gains ``2^level - 1`` and use tie-free scores.
* torchmetrics ``retrieval_average_precision`` (1.9) treats items with a score <= 0 as
  irrelevant and computes in float32; we use positive scores and a float32 tolerance.
* pytorch-metric-learning's AccuracyCalculator removes the query from its own neighbours
  *positionally* (the first neighbour) when ``ref_includes_query=True``; we remove it by index.
  We compare with a separate reference set (``ref_includes_query=False``), tie-free.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hglv2.metrics import average_precision, evaluate, ndcg, precision_at_k, recall_at_k


def _tie_free_case(seed: int, n_q: int, n: int, n_levels: int = 3):
    rng = np.random.default_rng(seed)
    scores = rng.permutation(n_q * n).reshape(n_q, n).astype(np.float64) / (n_q * n) + 0.01  # distinct, > 0
    levels = rng.integers(0, n_levels + 1, size=(n_q, n))
    return scores.astype(np.float32), levels


@given(seed=st.integers(0, 10_000), n=st.integers(1, 40))
@settings(max_examples=40)
def test_ap_and_ndcg_match_sklearn(seed, n):
    from sklearn.metrics import average_precision_score, ndcg_score

    scores, levels = _tie_free_case(seed, 3, n)
    target = levels >= 2
    ours_ap = average_precision(scores, target)
    ours_ndcg = ndcg(scores, levels)
    ours_ndcg5 = ndcg(scores, levels, k=5)
    for i in range(3):
        if target[i].any():
            assert ours_ap[i] == pytest.approx(average_precision_score(target[i], scores[i]), rel=1e-9)
        if levels[i].any() and n > 1:  # sklearn's ndcg needs more than one document
            gains = (2.0 ** levels[i : i + 1] - 1).astype(np.float64)
            assert ours_ndcg[i] == pytest.approx(ndcg_score(gains, scores[i : i + 1]), rel=1e-9)
            assert ours_ndcg5[i] == pytest.approx(ndcg_score(gains, scores[i : i + 1], k=5), rel=1e-9)


def test_sklearn_differs_on_ties_as_documented():
    from sklearn.metrics import average_precision_score

    scores = np.array([[1.0, 1.0]], dtype=np.float32)
    target = np.array([[False, True]])
    # ours: tie broken by index -> the positive is at rank 2 -> AP 1/2 (sklearn also gives 1/2)
    assert average_precision(scores, target)[0] == pytest.approx(0.5)
    assert average_precision_score(target[0], scores[0]) == pytest.approx(0.5)
    # with the positive first by index ours gives 1, while sklearn's tied threshold still gives 1/2
    target = np.array([[True, False]])
    assert average_precision(scores, target)[0] == pytest.approx(1.0)
    assert average_precision_score(target[0], scores[0]) == pytest.approx(0.5)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), k=st.integers(1, 10))
@settings(max_examples=40)
def test_retrieval_metrics_match_torchmetrics(seed, n, k):
    from torchmetrics.functional.retrieval import (
        retrieval_average_precision,
        retrieval_hit_rate,
        retrieval_normalized_dcg,
        retrieval_precision,
    )

    scores, levels = _tie_free_case(seed, 3, n)
    target = levels >= 2
    ap, hit, prec = (
        average_precision(scores, target),
        recall_at_k(scores, target, k),
        precision_at_k(scores, target, k),
    )
    nd = ndcg(scores, levels)
    for i in range(3):
        p = torch.from_numpy(scores[i])
        t = torch.from_numpy(target[i])
        if target[i].any():
            assert ap[i] == pytest.approx(float(retrieval_average_precision(p, t)), rel=1e-5)
            assert hit[i] == float(retrieval_hit_rate(p, t, top_k=k))
            assert prec[i] == pytest.approx(float(retrieval_precision(p, t, top_k=k)), rel=1e-6)
        if levels[i].any():
            gains = torch.from_numpy((2 ** levels[i] - 1).astype(np.int64))
            assert nd[i] == pytest.approx(float(retrieval_normalized_dcg(p, gains)), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_at_r_and_p1_match_pytorch_metric_learning(seed):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(seed)
    n_q, n_g, dim = 40, 300, 16
    q = rng.normal(size=(n_q, dim)).astype(np.float32)
    g = rng.normal(size=(n_g, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    ql = rng.integers(0, 8, size=n_q)
    gl = rng.integers(0, 8, size=n_g)
    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    peer = calc.get_accuracy(
        torch.from_numpy(q),
        torch.from_numpy(ql),
        torch.from_numpy(g),
        torch.from_numpy(gl),
        ref_includes_query=False,
    )
    ours = evaluate(q, ql, g, gl)
    assert ours["mAP@R_level0"] == pytest.approx(peer["mean_average_precision_at_r"], rel=1e-6)
    assert ours["R@1_level0"] == pytest.approx(peer["precision_at_1"], rel=1e-6)
