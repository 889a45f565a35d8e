"""hglv2.stats against brute-force oracles and scipy (when installed) on random cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hglv2.stats import bootstrap_interval, holm, paired_test, point, resample_means, sign_flip_pvalue


def _loop_replicates(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The hierarchical bootstrap written as loops, drawing the same random numbers."""
    rng = np.random.default_rng(seed)
    n_seeds, n_q = x.shape
    seeds = np.zeros((resamples, 1), int) if n_seeds == 1 else rng.integers(0, n_seeds, (resamples, n_seeds))
    queries = rng.integers(0, n_q, (resamples, seeds.shape[1], n_q))
    out = []
    for b in range(resamples):
        per_seed = [np.nanmean(x[s, queries[b, j]]) for j, s in enumerate(seeds[b])]
        out.append(np.mean(per_seed))
    return np.array(out)


@pytest.mark.parametrize("shape", [(1, 30), (3, 20)])
def test_replicates_equal_the_loop_oracle(shape):
    rng = np.random.default_rng(1)
    x = rng.random(shape)
    x[rng.random(shape) < 0.1] = np.nan  # undefined queries are left out of each mean
    np.testing.assert_allclose(resample_means(x, 200, seed=5), _loop_replicates(x, 200, 5), rtol=1e-12)


def test_point_ignores_undefined_queries():
    x = np.array([[0.2, np.nan, 0.4], [1.0, 0.0, np.nan]])
    assert point(x) == pytest.approx((0.3 + 0.5) / 2)


def test_interval_is_deterministic_and_covers_the_mean():
    x = np.random.default_rng(2).random((2, 50))
    a, b = bootstrap_interval(x), bootstrap_interval(x)
    assert a == b
    assert a["low"] < a["mean"] < a["high"]
    assert a["method"].startswith("hierarchical")


def test_interval_matches_scipy_percentile_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    for case in range(3):
        x = np.random.default_rng(10 + case).normal(size=80)
        ours = bootstrap_interval(x, resamples=20000, seed=case)
        ref = stats.bootstrap(
            (x,), np.mean, method="percentile", n_resamples=20000, random_state=case
        ).confidence_interval
        width = ref.high - ref.low
        assert ours["low"] == pytest.approx(ref.low, abs=0.05 * width)
        assert ours["high"] == pytest.approx(ref.high, abs=0.05 * width)


def _exact_sign_flip(d: np.ndarray) -> float:
    observed = abs(d.mean())
    flips = [abs((np.array(s) * d).mean()) for s in itertools.product((-1, 1), repeat=d.size)]
    return float(np.mean(np.array(flips) >= observed - 1e-12))


def test_sign_flip_matches_the_exact_enumeration_and_scipy():
    stats = pytest.importorskip("scipy.stats")
    for case in range(3):
        d = np.random.default_rng(20 + case).normal(loc=0.3, size=10)
        exact = _exact_sign_flip(d)
        ours = sign_flip_pvalue(d, permutations=20000, seed=case)
        assert ours == pytest.approx(exact, abs=0.01)
        ref = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
        ).pvalue
        assert ref == pytest.approx(exact, abs=1e-9)


def _holm_oracle(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adj[i] = running
    return adj


def test_holm_matches_its_definition():
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 12):
        p = list(rng.random(m) ** 3)
        assert holm(p) == pytest.approx(_holm_oracle(p))
    assert holm([]) == []
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_a_clear_difference_is_significant_and_identical_losses_are_not():
    rng = np.random.default_rng(4)
    base = rng.random((2, 60))
    better = np.clip(base + 0.1 + 0.02 * rng.normal(size=base.shape), 0, 1)
    clear = paired_test(better, base)
    assert clear["p_value"] < 0.01 and clear["low"] > 0
    same = paired_test(base, base.copy())
    assert same["p_value"] == 1.0 and same["difference"] == 0.0
    noise = paired_test(base + 0.001 * rng.normal(size=base.shape), base)
    adjusted = holm([clear["p_value"], same["p_value"], noise["p_value"]])
    assert adjusted[0] < 0.05 and adjusted[1] >= 0.05
    with pytest.raises(ValueError):
        paired_test(base, base[:1])
