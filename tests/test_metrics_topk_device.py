"""Top-k mode and the torch device engine of hglv2.metrics.evaluate: same values as the full CPU
path and the brute-force oracle, ties included (the device code is run here with device="cpu")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_metrics_oracle import evaluate_oracle
from test_metrics_ranking import BACKENDS, retrieval_case

from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.metrics import evaluate
from hglv2.metrics.evaluate import top_k_metrics
from hglv2.metrics.ranking import order_keys


def _top_k_paths():
    paths = [{"backend": b} for b in BACKENDS]
    return paths + [{"device": "cpu"}, {"device": "cpu", "backend": "torch"}]


def _expected_top_k(full: dict, n_levels: int, k_eff: int) -> dict:
    """The full-ranking values with mAP@R blanked where R > k (the top-k mode's rule)."""
    want = dict(full)
    for lev in range(n_levels):
        r = np.asarray(full[f"n_positives_level{lev}"])
        v = np.asarray(full[f"mAP@R_level{lev}"], dtype=float).copy()
        v[r > k_eff] = np.nan
        want[f"mAP@R_level{lev}"] = v
    return want


def _assert_top_k(got: dict, want: dict, n_levels: int, ks, with_map100: bool):
    names = [f"mAP@R_level{lev}" for lev in range(n_levels)]
    names += [f"{m}@{k}_level{lev}" for lev in range(n_levels) for k in ks for m in ("R", "P")]
    names += [f"n_positives_level{lev}" for lev in range(n_levels)]
    if with_map100:
        names += [f"mAP@100_level{lev}" for lev in range(n_levels)]
    expected_keys = set(names)
    assert set(got) == expected_keys, sorted(set(got) ^ expected_keys)
    for name in names:
        np.testing.assert_allclose(
            np.asarray(got[name], dtype=float),
            np.asarray(want[name], dtype=float),
            rtol=1e-12,
            atol=1e-15,
            equal_nan=True,
            err_msg=name,
        )


@given(
    case=retrieval_case(),
    top_k=st.integers(1, 14),
    chunk=st.integers(1, 4),
    path=st.sampled_from(_top_k_paths()),
)
def test_top_k_matches_oracle_and_full_path(case, top_k, chunk, path):
    q, ql, g, gl = case
    n_levels = ql.shape[1]
    n_ranked = len(q) - 1 if g is None else len(g)
    ks = tuple(k for k in (1, 2, 5) if k <= top_k)
    got = evaluate(q, ql, g, gl, recall_at=ks, reduce=False, top_k=top_k, chunk_size=chunk, **path)
    oracle = evaluate_oracle(q, ql, g, gl, recall_at=ks)
    k_eff = min(top_k, n_ranked)
    with_map100 = top_k >= 100 or k_eff == n_ranked
    _assert_top_k(got, _expected_top_k(oracle, n_levels, k_eff), n_levels, ks, with_map100)


def _tied_case(seed: int, n_q: int, n_g: int, n_levels: int = 3, values: int = 2):
    """Integer embeddings with few distinct values: most scores tie, also at the k-th position."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 25, size=n_q + n_g)
    cols = [fine, fine // 5, fine // 13][:n_levels]
    lab = np.stack(cols, 1)
    emb = rng.integers(-values, values + 1, size=(n_q + n_g, 3)).astype(np.float32)
    return emb[:n_q], lab[:n_q], emb[n_q:], lab[n_q:]


@pytest.mark.parametrize("top_k", [1, 7, 100, 150])
@pytest.mark.parametrize("same", [False, True])
def test_top_k_with_many_ties_and_a_long_scan(top_k, same):
    """A gallery much longer than the selection buffer (2k + 64), every score tied many times."""
    q, ql, g, gl = _tied_case(3, 40, 1500)
    if same:  # 420 queries = gallery: still longer than the buffer
        q, ql, g, gl = np.concatenate([q, g[:380]]), np.concatenate([ql, gl[:380]]), None, None
    ks = tuple(k for k in (1, 5, 100) if k <= top_k)
    full = evaluate(q, ql, g, gl, recall_at=ks, reduce=False)
    n_ranked = len(q) - 1 if same else len(g)
    want = _expected_top_k(full, 3, min(top_k, n_ranked))
    for path in _top_k_paths():
        got = evaluate(q, ql, g, gl, recall_at=ks, reduce=False, top_k=top_k, chunk_size=13, **path)
        _assert_top_k(got, want, 3, ks, top_k >= 100)


@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_score_tiles_give_the_values_of_one_matmul(monkeypatch, same, dtype):
    """The CPU top-k scan computes the scores in column tiles of one reused buffer: with tiles of
    300 columns, float embeddings and ties (duplicated rows with other labels), the values and
    the neighbours equal those of one tile and of the full ranking on the same query chunks."""
    import importlib

    from hglv2.metrics.evaluate import nearest_neighbours

    ev = importlib.import_module("hglv2.metrics.evaluate")  # the module (the package exports the function)
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 16)).astype(dtype)
    g = base[rng.integers(0, 60, size=1500)]
    gl = rng.integers(0, 12, size=(1500, 2)) // [1, 4]
    q, ql = base[:25], rng.integers(0, 12, size=(25, 2)) // [1, 4]
    if same:
        q, ql, g, gl = g[:700], gl[:700], None, None
    full = evaluate(q, ql, g, gl, recall_at=(1, 10), reduce=False, chunk_size=8, method="sort")
    want = _expected_top_k(full, 2, 100)
    neighbours = []
    for tile in (1 << 30, 4 * 8 * 300):  # one tile per chunk, then 300 columns
        monkeypatch.setattr(ev, "TOP_K_TILE_BYTES", tile)
        got = evaluate(q, ql, g, gl, recall_at=(1, 10), reduce=False, top_k=100, chunk_size=8)
        _assert_top_k(got, want, 2, (1, 10), True)
        neighbours.append(nearest_neighbours(q, g, 100, chunk_size=8))
    np.testing.assert_array_equal(neighbours[0], neighbours[1])


def test_top_k_all_scores_equal_keeps_lowest_indices():
    """Every score ties: the top k are the k lowest gallery indices (the query itself skipped)."""
    n = 30
    emb = np.ones((n, 4), dtype=np.float32)
    lab = (np.arange(n) % 3)[:, None]
    for path in _top_k_paths():
        res = evaluate(emb, lab, recall_at=(1, 2), reduce=False, top_k=2, **path)
        # query 1 (label 1): ranking 0, 2, 3, 4 ... -> no positive in the top 2 (item 4 is the first)
        assert res["R@2_level0"][1] == 0.0 and res["P@1_level0"][0] == 0.0
        # query 3 (label 0): ranking 0, 1, 2, ... -> item 0 (label 0) first
        assert res["R@1_level0"][3] == 1.0 and res["P@2_level0"][3] == 0.5


def test_top_k_reduced_counts_and_truncation():
    q, ql, g, gl = _tied_case(5, 30, 400, values=3)
    full = evaluate(q, ql, g, gl, recall_at=(1, 10), reduce=False)
    res = evaluate(q, ql, g, gl, recall_at=(1, 10), top_k=20)
    assert res["top_k"] == 20 and res["n_gallery"] == 400 and res["n_queries"] == 30
    for lev in range(3):
        r = full[f"n_positives_level{lev}"]
        assert res[f"n_truncated_level{lev}"] == int((r > 20).sum())
        assert res[f"n_queries_level{lev}"] == int((r > 0).sum())
        keep = (r > 0) & (r <= 20)
        want = float(np.mean(full[f"mAP@R_level{lev}"][keep])) if keep.any() else float("nan")
        np.testing.assert_allclose(res[f"mAP@R_level{lev}"], want, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(res[f"R@10_level{lev}"], np.nanmean(full[f"R@10_level{lev}"]), rtol=1e-12)
    for name in ("AP_level0", "H-AP", "NDCG", "ASI", "mAP@100_level0"):
        assert name not in res


def test_top_k_bad_arguments():
    q, ql, g, gl = _tied_case(1, 5, 50)
    with pytest.raises(ValueError, match="larger than top_k"):
        evaluate(q, ql, g, gl, top_k=5)  # default recall_at has 10 and 100
    with pytest.raises(ValueError, match="ndcg_at"):
        evaluate(q, ql, g, gl, recall_at=(1,), top_k=5, ndcg_at=3)
    with pytest.raises(ValueError, match="top_k"):
        evaluate(q, ql, g, gl, recall_at=(1,), top_k=0)
    with pytest.raises(ValueError, match="device"):
        evaluate(q, ql, g, gl, device="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            evaluate(q, ql, g, gl, device="cuda")


SENTINEL = (0.3125, -0.1875)  # a gallery embedding no random case draws


def _nan_scores_for_sentinel(monkeypatch):
    """Score matmuls give NaN in the columns of gallery rows equal to :data:`SENTINEL`.

    A NaN score from finite embeddings depends on the hardware: ``3e38 * 3e38 - 3e38 * 3e38`` is
    ``inf - inf = NaN`` when each product is rounded first, but ``+inf`` with a fused multiply-add
    (the exact second product added to ``inf``), as MKL's AVX-512 kernels do. The engines' NaN
    check is tested on NaN scores put in the matmul's output, whatever the CPU."""
    matmul, operator = torch.matmul, torch.Tensor.__matmul__

    def poison(res, b):
        hit = (b == torch.tensor(SENTINEL, dtype=b.dtype, device=b.device)[:, None]).all(0)
        res[..., hit] = float("nan")
        return res

    def patched_matmul(a, b, **kw):
        return poison(matmul(a, b, **kw), b)

    monkeypatch.setattr(torch, "matmul", patched_matmul)
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: poison(operator(a, b), b))


def test_top_k_nan_scores_are_refused(monkeypatch):
    _nan_scores_for_sentinel(monkeypatch)
    emb = np.random.default_rng(0).uniform(-0.4, 0.4, size=(3, 2)).astype(np.float32)
    emb[1] = SENTINEL  # every query's score with item 1 is NaN
    for path in _top_k_paths():
        with pytest.raises(ValueError, match="NaN"):
            evaluate(emb, np.zeros(3, dtype=np.int64), recall_at=(1,), top_k=1, **path)
        with pytest.raises(ValueError, match="NaN"):
            evaluate(emb, np.zeros(3, dtype=np.int64), **path)


@pytest.mark.parametrize("where", [5, 70, 98])
def test_top_k_nan_score_in_a_long_row_is_refused(monkeypatch, where):
    """One NaN score among 100 gallery items: in the first group of 32 scores compared at once
    (no threshold yet), in a later group (after the candidate buffer was cut, k = 1) and in the
    partial last group."""
    from hglv2.metrics.evaluate import nearest_neighbours

    _nan_scores_for_sentinel(monkeypatch)
    rng = np.random.default_rng(where)
    g = rng.uniform(-0.4, 0.4, size=(100, 2)).astype(np.float32)
    g[where] = SENTINEL
    q = rng.uniform(-0.4, 0.4, size=(2, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(q, np.zeros(2, dtype=np.int64), g, np.zeros(100, dtype=np.int64), recall_at=(1,), top_k=1)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbours(q, g, 1)
    g[where] = 0.0  # the same case without the NaN is accepted
    assert nearest_neighbours(q, g, 1).shape[0] == 2


@pytest.mark.parametrize("same", [False, True])
def test_device_engine_gives_identical_numbers(same):
    """device="cpu" runs the device code (keys, sort, gather, nonzero on torch); the numbers are
    bit-for-bit those of the CPU engine, with ties, self-exclusion and several chunk sizes."""
    q, ql, g, gl = _tied_case(7, 50, 700)
    if same:
        q, ql, g, gl = np.concatenate([q, g[:250]]), np.concatenate([ql, gl[:250]]), None, None
    for backend in BACKENDS:
        want = evaluate(q, ql, g, gl, reduce=False, ndcg_at=20, backend=backend, method="sort")
        for kwargs in ({}, {"chunk_size": 9}, {"memory_mb": 1, "chunk_size": None}):
            got = evaluate(q, ql, g, gl, reduce=False, ndcg_at=20, backend=backend, device="cpu", **kwargs)
            assert set(got) == set(want)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} {backend} {kwargs}")
    a = evaluate(q, ql, g, gl, recall_at=(1, 10), top_k=100, reduce=False)
    b = evaluate(q, ql, g, gl, recall_at=(1, 10), top_k=100, reduce=False, device="cpu", chunk_size=11)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_order_keys_same_with_and_without_numba(monkeypatch):
    from hglv2.metrics import _fused

    vals = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 1e-40, -1e-40, 3.5, 3.5, -2.0, 1e38]
    rng = np.random.default_rng(0)
    s = torch.tensor(rng.choice(vals, size=(5, 40)), dtype=torch.float32)
    fast = order_keys(s)
    monkeypatch.setattr(_fused, "HAVE_NUMBA", False)
    slow = order_keys(s)
    assert torch.equal(fast, slow)
    # ascending key = descending score, then ascending index; -0.0 == +0.0
    order = torch.sort(fast, dim=1).values & ((1 << 32) - 1)
    for row in range(5):
        want = sorted(range(40), key=lambda i: (-float(s[row, i]) + 0.0, i))
        assert order[row].tolist() == want


def test_top_k_metrics_hand_case():
    # one query, one level, R = 3 positives; top 4 = [pos, neg, pos, neg]
    tags = torch.tensor([[1, 0, 1, 0]], dtype=torch.uint8)
    out = top_k_metrics(tags, torch.tensor([[3]]), recall_at=(1, 2, 4), map_at=100)
    assert out["mAP@R_level0"].item() == pytest.approx((1 + 2 / 3) / 3)
    assert out["mAP@100_level0"].item() == pytest.approx((1 + 2 / 3) / 3)
    assert out["P@4_level0"].item() == 0.5 and out["R@1_level0"].item() == 1.0
    out = top_k_metrics(tags, torch.tensor([[5]]), recall_at=(1,), map_at=None)
    assert np.isnan(out["mAP@R_level0"].item()) and "mAP@100_level0" not in out


def test_cli_top_k_and_device(cli_runner, tmp_path):
    q, ql, g, gl = _tied_case(2, 20, 300)
    emb, lab = np.concatenate([q, g]), np.concatenate([ql, gl])
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "lab.npy", lab)
    base = [
        "evaluate",
        "-e",
        str(tmp_path / "emb.npy"),
        "-l",
        str(tmp_path / "lab.npy"),
        "--recall-at",
        "1,5",
    ]
    out = tmp_path / "res.json"
    res = cli_runner.invoke(main, [*base, "--top-k", "100", "--device", "cpu", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert (
        "truncated" in res.output
        and "top-k mode" in res.output
        and "H-AP " not in res.output.replace("AP, H-AP, NDCG", "")
    )
    got = json.loads(out.read_text())
    assert got["config"]["top_k"] == 100
    want = evaluate(emb, lab, recall_at=(1, 5), top_k=100)
    for key, value in want.items():
        if isinstance(value, float) and np.isnan(value):
            assert got["results"][key] is None
        else:
            assert got["results"][key] == pytest.approx(value, rel=1e-12), key
    res = cli_runner.invoke(main, [*base, "--top-k", "3"])
    assert res.exit_code == 2 and "Error: recall_at value 5 is larger than top_k=3" in res.output
    res = cli_runner.invoke(main, [*base, "--device", "no-such-device"])
    assert res.exit_code == 2 and "Error: device 'no-such-device'" in res.output


@pytest.mark.parametrize("device", [None, "cpu"])
def test_nearest_neighbours_follow_the_ranking_rule(device):
    from test_metrics_oracle import ranking

    from hglv2.metrics.evaluate import nearest_neighbours

    q, _, g, _ = _tied_case(4, 15, 600)
    top = nearest_neighbours(q, g, 100, device=device, chunk_size=4)
    assert top.shape == (15, 100)
    for i in range(15):
        assert top[i].tolist() == ranking(g @ q[i])[:100]
    top = nearest_neighbours(q, None, 20, device=device)
    assert top.shape == (15, 14)  # at most the 14 other queries
    for i in range(15):
        assert top[i].tolist() == ranking(q @ q[i], exclude=i)


def test_gldv2_submission_from_embeddings_scores_like_top_k_evaluate(tmp_path):
    """Embeddings -> top-100 submission file -> the official file metric = evaluate(top_k=100)."""
    from hglv2.metrics.gldv2 import evaluate_files, retrieval_submission

    q, ql, g, gl = _tied_case(6, 30, 400)
    ql, gl = ql[:, 0], gl[:, 0]
    qids = [f"{i:016x}" for i in range(30)]
    gids = [f"{j + 1000:016x}" for j in range(400)]
    lines = ["id,images,Usage"]
    with_truth = []
    for i in range(30):
        truth = [gids[j] for j in range(400) if gl[j] == ql[i]]
        usage = "Public" if i % 2 else "Private"
        lines.append(f"{qids[i]},{' '.join(truth) if truth else 'None'},{usage if truth else 'Ignored'}")
        with_truth.append(bool(truth))
    (tmp_path / "solution.csv").write_text("\n".join(lines) + "\n")
    retrieval_submission(tmp_path / "sub.csv", qids, q, gids, g)
    res = evaluate_files(tmp_path / "solution.csv", tmp_path / "sub.csv")
    per = evaluate(q, ql, g, gl, recall_at=(1,), top_k=100, reduce=False)["mAP@100_level0"]
    for usage, rows in (("public", range(1, 30, 2)), ("private", range(0, 30, 2))):
        vals = [per[i] for i in rows if with_truth[i]]
        assert res[usage]["mAP@100"] == pytest.approx(float(np.mean(vals)), rel=1e-12)
    with pytest.raises(InputError, match="separator"):
        retrieval_submission(tmp_path / "bad.csv", ["a,b"] + qids[1:], q, gids, g)
    assert not (tmp_path / "bad.csv").exists()


def test_without_numba_and_without_tagged_keys(monkeypatch):
    """The torch fallbacks (top-k metrics, selection, order keys) and the plain-key + gather path
    used when the index and mask do not fit 32 bits give the numbers of the default engine."""
    import importlib

    from hglv2.metrics import _fused

    ev = importlib.import_module("hglv2.metrics.evaluate")  # the module (the package exports the function)
    q, ql, g, gl = _tied_case(8, 40, 500)
    full = evaluate(q, ql, g, gl, reduce=False, method="sort")
    top = evaluate(q, ql, g, gl, recall_at=(1, 10), top_k=100, reduce=False)
    monkeypatch.setattr(ev, "KEY_LOW_BITS", 0)
    got = evaluate(q, ql, g, gl, reduce=False, method="sort")
    for key in full:
        np.testing.assert_array_equal(got[key], full[key], err_msg=key)
    monkeypatch.setattr(_fused, "HAVE_NUMBA", False)
    got = evaluate(q, ql, g, gl, recall_at=(1, 10), top_k=100, reduce=False)
    for key in top:
        np.testing.assert_allclose(got[key], top[key], rtol=1e-12, equal_nan=True, err_msg=key)
