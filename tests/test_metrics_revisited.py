"""hglv2.metrics.revisited against a loop oracle of the Revisited Oxford/Paris protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_metrics_oracle import ranking

from hglv2.errors import InputError
from hglv2.metrics.revisited import load_gnd_json, ranking_from_scores, revisited_map


def oracle(scores_row, ok, junk, kappas):
    """The protocol written with loops: rank, drop junk, trapezoidal AP, protocol mP@k."""
    order = [i for i in ranking(scores_row) if i not in junk or i in ok]
    pos = [r for r, i in enumerate(order) if i in ok]
    if not pos:
        return math.nan, [math.nan] * len(kappas)
    ap = 0.0
    for j, r in enumerate(pos):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2 / len(pos)
    mps = []
    for k in kappas:
        kq = min(k, pos[-1] + 1)
        mps.append(sum(1 for r in pos if r + 1 <= kq) / kq)
    return ap, mps


def test_hand_case():
    # positives at 0-based ranks 0 and 2, no junk: ((1+1)/2 + (1/2+2/3)/2) / 2
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    gnd = [{"easy": [0, 2], "hard": [], "junk": []}]
    res = revisited_map(scores, gnd)
    assert res["mAP_easy"] == pytest.approx((1 + (0.5 + 2 / 3) / 2) / 2)
    assert math.isnan(res["mAP_hard"]) and res["n_skipped_hard"] == 1
    # junk at rank 1 is removed: positives become ranks 0, 1 -> AP 1
    gnd = [{"easy": [0, 2], "hard": [], "junk": [1]}]
    assert revisited_map(scores, gnd)["mAP_easy"] == pytest.approx(1.0)
    # hard image counts as junk in the easy setup and as positive in medium
    gnd = [{"easy": [0], "hard": [1], "junk": []}]
    res = revisited_map(scores, gnd)
    assert res["mAP_easy"] == pytest.approx(1.0) and res["mAP_medium"] == pytest.approx(1.0)
    # hard setup: image 0 (easy) is junk and removed, so the hard image 1 comes first
    assert res["mAP_hard"] == pytest.approx(1.0)
    assert res["mP@5_easy"] == pytest.approx(1.0)


@given(st.data())
def test_matches_oracle(data):
    n_q = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 20))
    scores = np.array(
        data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=n, max_size=n), min_size=n_q, max_size=n_q)),
        dtype=np.float32,
    )
    gnd = []
    for _ in range(n_q):
        roles = data.draw(st.lists(st.sampled_from(["easy", "hard", "junk", "none"]), min_size=n, max_size=n))
        gnd.append({k: [i for i, r in enumerate(roles) if r == k] for k in ("easy", "hard", "junk")})
    kappas = (1, 3, 5)
    res = revisited_map(scores, gnd, kappas, reduce=False)
    setups = {
        "easy": (["easy"], ["junk", "hard"]),
        "medium": (["easy", "hard"], ["junk"]),
        "hard": (["hard"], ["junk", "easy"]),
    }
    for i in range(n_q):
        for setup, (pk, jk) in setups.items():
            ok = {x for k in pk for x in gnd[i][k]}
            junk = {x for k in jk for x in gnd[i][k]}
            ap, mps = oracle(scores[i], ok, junk, kappas)
            got = res[f"mAP_{setup}"][i]
            assert (math.isnan(ap) and math.isnan(got)) or got == pytest.approx(ap, rel=1e-12)
            for k, mp in zip(kappas, mps, strict=True):
                got = res[f"mP@{k}_{setup}"][i]
                assert (math.isnan(mp) and math.isnan(got)) or got == pytest.approx(mp, rel=1e-12)


def test_load_gnd_json(tmp_path):
    p = tmp_path / "gnd.json"
    p.write_text(json.dumps({"gnd": [{"easy": [0], "hard": [1], "junk": []}]}))
    assert load_gnd_json(p, n_gallery=2) == [{"easy": [0], "hard": [1], "junk": []}]
    with pytest.raises(InputError, match="outside the gallery"):
        load_gnd_json(p, n_gallery=1)
    p.write_text('{"gnd": [{"easy": ["a"]}]}')
    with pytest.raises(InputError, match=r"gnd\[0\].easy must be a list of integers"):
        load_gnd_json(p)
    p.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_gnd_json(p)
    with pytest.raises(InputError, match="no such file"):
        load_gnd_json(tmp_path / "nope.json")


def test_float64_scores_closer_than_float32_keep_their_order():
    # 1 + 1e-12 and 1 + 2e-12 are one float32 value (1.0): in float32 they tie and go by index
    scores = np.array([[1.0 + 1e-12, 1.0 + 2e-12, 1.0, 0.5]])
    assert np.float32(scores[0, 0]) == np.float32(scores[0, 1]) == np.float32(scores[0, 2])
    assert ranking_from_scores(scores).tolist() == [[1, 0, 2, 3]]
    assert ranking_from_scores(torch.from_numpy(scores)).tolist() == [[1, 0, 2, 3]]
    assert ranking_from_scores(scores.astype(np.float32)).tolist() == [[0, 1, 2, 3]]
    # equal float64 scores tie, by gallery index
    assert ranking_from_scores(np.array([[0.3, 0.7, 0.3, 0.7]])).tolist() == [[1, 3, 0, 2]]
    # the positive 1 ranks first only in float64: AP 1 (in float32 item 0 comes first: AP 1/4)
    res = revisited_map(scores, [{"easy": [1], "hard": [], "junk": []}], kappas=(1,))
    assert res["mAP_easy"] == 1.0 and res["mP@1_easy"] == 1.0
    res32 = revisited_map(scores.astype(np.float32), [{"easy": [1], "hard": [], "junk": []}], kappas=(1,))
    assert res32["mAP_easy"] == 0.25
