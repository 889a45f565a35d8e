"""--hap-convention reference against the SupRank authors' evaluation, re-derived query by query.

The oracle below re-implements, from their formulas, the authors' SOP/iNat/DyML evaluation:
relevance counts over the whole set including the query (suprank/datasets/base_dataset.py,
get_all_relevance; suprank/engine/compute_relevance_on_the_fly.py, get_relevances_pop/map), H-AP
(suprank/engine/metrics.py, hap: H-rank from min(rel_k, rel_j) with levels matched by relevance
value) and binary AP with ap[R == 0] = 0 averaged over every query (metrics.py, ap;
accuracy_calculator.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from hglv2.metrics import evaluate
from hglv2.metrics.conventions import evaluate_convention, reference_hap


def _authors_relevances(levels_with_self: np.ndarray, n_levels: int, relevance: str) -> np.ndarray:
    """(Q, L+1) relevance per level from label-matrix rows that include the query itself."""
    q = levels_with_self.shape[0]
    rel = np.zeros((q, n_levels + 1))
    for i in range(q):
        vals, cnt = np.unique(levels_with_self[i], return_counts=True)
        counts = np.zeros(n_levels + 1)
        counts[vals] = cnt
        if relevance == "pop":
            w = np.array([(x / max(n_levels - 1, 1)) for x in range(n_levels + 1)])
            rel[i, vals] = w[vals] / cnt
        else:  # map: cumulative sum of w(m) / N(>= m), weights 1..L
            w = np.arange(1, n_levels + 1, dtype=float)
            at_least = counts[::-1].cumsum()[::-1][1:]
            step = np.where(at_least > 0, w / np.maximum(at_least, 1), 0)
            rel[i, 1:] = np.cumsum(step)
    return rel


def _authors_hap(sorted_rel: np.ndarray, rel_levels: np.ndarray) -> float:
    """H-AP of one ranked list as in the authors' ``hap`` (levels matched by relevance value)."""
    n = len(sorted_rel)
    hrank = np.zeros(n)
    for lvl_rel in rel_levels[1:]:
        eq = (sorted_rel == lvl_rel).cumsum()
        hrank += np.minimum(sorted_rel, lvl_rel) * eq
    den = sorted_rel.sum()
    return float((hrank / np.arange(1, n + 1)).sum() / den) if den > 0 else 0.0


def _authors_ap(binary: np.ndarray) -> float:
    r = binary.sum()
    if r == 0:
        return 0.0
    return float((np.cumsum(binary) * binary / np.arange(1, len(binary) + 1)).sum() / r)


def _case(rng, n, shape):
    n_top, n_mid, n_fine = shape
    fine = rng.integers(0, n_top * n_mid * n_fine, size=n)
    labels = np.stack([fine, fine // n_fine, fine // (n_fine * n_mid)], 1)
    emb = rng.normal(size=(n, 6)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


@pytest.mark.parametrize("relevance", ["pop", "map"])
@pytest.mark.parametrize("seed", range(8))
def test_reference_matches_the_authors_formulas(seed, relevance):
    rng = np.random.default_rng(seed)
    emb, labels = _case(rng, int(rng.integers(8, 40)), (2, 2, int(rng.integers(2, 5))))
    n, n_levels = labels.shape
    scores = emb @ emb.T
    full = (labels[:, None, :] == labels[None, :, :]).sum(-1)  # (N, N) levels incl. self
    rel = _authors_relevances(full, n_levels, relevance)
    hap, ap0 = [], []
    for i in range(n):
        order = [j for j in np.argsort(-scores[i], kind="stable") if j != i]
        sorted_levels = full[i, order]
        sorted_rel = rel[i, sorted_levels]
        hap.append(_authors_hap(sorted_rel, rel[i]))
        ap0.append(_authors_ap((sorted_levels == n_levels).astype(float)))
    ours = reference_hap(emb, labels, relevance=relevance)
    distinct = []
    for i in range(n):
        vals = rel[i, 1:][rel[i, 1:] > 0]
        distinct.append(len(np.unique(vals)) == len(vals))
    distinct = np.array(distinct)  # the authors match levels by value: exact when values differ
    assert distinct.sum() >= n // 2
    np.testing.assert_allclose(np.nan_to_num(ours)[distinct], np.array(hap)[distinct], rtol=1e-9, atol=1e-12)
    res = evaluate_convention(emb, labels, hap_convention="reference", relevance=relevance)
    # binary AP at the finest level: queries without positives count as 0
    np.testing.assert_allclose(res["AP_level0"], np.mean(ap0), rtol=1e-9)
    if distinct.all():
        np.testing.assert_allclose(res["H-AP"], np.mean(hap), rtol=1e-9)


def test_conventions_differ_where_they_should():
    # query 0 is alone in its landmark (no positive at level 0); queries 1, 2 share one
    labels = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0], [3, 1, 0]])
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    ours = evaluate(emb, labels)
    ref = evaluate_convention(emb, labels, hap_convention="reference")
    per = evaluate(emb, labels, reduce=False)
    ap = per["AP_level0"]
    assert np.isnan(ap[0]) and np.isnan(ap[3])
    assert ours["AP_level0"] == pytest.approx(np.nanmean(ap))
    assert ref["AP_level0"] == pytest.approx(np.nan_to_num(ap).sum() / 6)  # 0 for queries 0 and 3
    assert ref["n_skipped_level0"] == ours["n_skipped_level0"] == 2
    # counting the query itself changes every H-AP that has a top-level positive
    assert ref["H-AP"] != pytest.approx(ours["H-AP"])
    assert evaluate_convention(emb, labels, hap_convention="hglv2") == ours


def test_reference_separate_gallery_does_not_count_self():
    rng = np.random.default_rng(0)
    emb, labels = _case(rng, 30, (2, 2, 3))
    q, g = slice(0, 10), slice(10, 30)
    a = reference_hap(emb[q], labels[q], emb[g], labels[g])
    b = evaluate(emb[q], labels[q], emb[g], labels[g], reduce=False)["H-AP"]
    np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True)


def test_bad_convention():
    with pytest.raises(ValueError, match="hap_convention"):
        evaluate_convention(np.eye(3), [0, 0, 1], hap_convention="authors")


def test_cli_hap_convention(tmp_path):
    from click.testing import CliRunner

    from hglv2.cli import main

    rng = np.random.default_rng(1)
    emb, labels = _case(rng, 20, (2, 2, 3))
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "l.npy", labels)
    out = {}
    for conv in ("hglv2", "reference"):
        res = CliRunner().invoke(
            main,
            [
                "evaluate",
                "-e",
                str(tmp_path / "e.npy"),
                "-l",
                str(tmp_path / "l.npy"),
                "--hap-convention",
                conv,
                "--json",
                str(tmp_path / f"{conv}.json"),
            ],
        )
        assert res.exit_code == 0, res.output
        import json

        out[conv] = json.loads((tmp_path / f"{conv}.json").read_text())
    assert out["reference"]["config"]["hap_convention"] == "reference"
    ref = evaluate_convention(emb, labels, hap_convention="reference")
    assert out["reference"]["results"]["H-AP"] == pytest.approx(ref["H-AP"])
    assert out["hglv2"]["results"]["H-AP"] == pytest.approx(evaluate(emb, labels)["H-AP"])
