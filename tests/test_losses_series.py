"""The series sweeps of the rank kernels (:mod:`hglv2.losses._rank_kernels`) against their definitions.

``sigmoid(-d) = x / (1 + x)`` and ``sigmoid'(d) = x / (1 + x)^2`` with ``x = e^{-d}`` become
polynomials ``sum_n c_n x^n``; ``x^n = e^{-n d}`` factorises over a target and an item, so the
kernels carry ``sum_j w_j e^{-n d_j}`` along sorted sweeps. Checked here: the coefficients against
40-digit arithmetic, one sweep against a brute-force double sum, and whole rows that take the
series path (forced, or chosen by the work estimate on large rows) against the torch path.
"""

import math

import mpmath
import numpy as np
import pytest
import torch

import hglv2.losses.rank as rank_mod
from hglv2.losses import StepConfig, pair_ranks, sup_hap
from tests.fixtures.numerics import EPS64, assert_rows_close

_rk = rank_mod._rk
pytestmark = pytest.mark.skipif(not _rk.HAVE_NUMBA, reason="numba not installed")


def _grad_bound() -> float:
    """Error of a series gradient relative to its row's largest entry: the sweeps' running sums
    round at ``EPS64`` of the row's scale, and the alternating sigma' coefficients amplify that by
    ``sum |c'_n|``; four times that product (the largest ratio seen over many weight draws was a
    tenth of the product)."""
    if not _rk.HAVE_NUMBA:
        return 0.0
    return 4 * EPS64 * float(np.abs(_rk.series_coefficients(np.dtype(np.float64))[1]).sum())


GRAD_BOUND = _grad_bound()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cut", [0.0, 1.0])
def test_series_coefficients_relative_error(dtype, cut):
    coefs = _rk.series_coefficients(np.dtype(dtype), cut)
    tol = _rk.SERIES_TOL[np.dtype(dtype)]
    a = math.exp(-cut)
    xs = [a * i / 256 for i in range(1, 257)] + [1e-300, 1e-30, 1e-8, a * (1 - 1e-12)]
    with mpmath.workdps(40):
        for x in map(mpmath.mpf, xs):
            for f, exact in ((0, x / (1 + x)), (1, x / (1 + x) ** 2)):
                approx = sum(mpmath.mpf(float(c)) * x ** (n + 1) for n, c in enumerate(coefs[f]))
                # truncation below tol, plus the rounding of the coefficients to float64
                bound = tol + 2**-52 * float(np.abs(coefs[f]).sum())
                assert abs(approx - exact) / exact < bound, (dtype, cut, f, float(x))


def _brute_sweep(xs, ws, xq, lo, hi, sign, inv_tau, coef):
    out = np.zeros((coef.shape[0], xq.size))
    n = np.arange(1, coef.shape[1] + 1)
    for q in range(xq.size):
        for s in range(lo[q], max(lo[q], hi[q])):
            d = sign * (xq[q] - xs[s]) * inv_tau
            out[:, q] += ws[s] * (coef * np.exp(-n * d)).sum(1)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_series_sweep_equals_double_sum(seed):
    rng = np.random.default_rng(seed)
    S, Q = int(rng.integers(0, 60)), int(rng.integers(1, 60))
    spread = [0.02, 0.3, 8.0][seed % 3]  # one tau, tens of tau, far beyond the underflow limit
    sign = 1.0 if seed % 2 else -1.0
    xs = np.sort(np.round(rng.normal(0, spread, S), 3)) * sign  # rounded: ties among sources
    xq = np.sort(np.round(rng.normal(0, spread, Q), 3)) * sign  # ... and among queries
    xs, xq = xs[np.argsort(sign * xs, kind="stable")], xq[np.argsort(sign * xq, kind="stable")]
    ws = rng.normal(size=S) if seed % 4 else np.ones(S)
    # members: sources at least 0.01 behind the query (hi), dropping those over `width` behind (lo)
    width = [np.inf, 0.05, 0.5][seed % 3]
    hi = np.array([np.sum(sign * (x - xs) >= 0.01) for x in xq], dtype=np.int64)
    lo = np.array([np.sum(sign * (x - xs) > width) for x in xq], dtype=np.int64)
    coefs = _rk.series_coefficients(np.dtype(np.float64))
    out = np.empty((2, Q))
    acc = np.empty(coefs.shape[1])
    _rk._series_sweep(xs, ws, xq, lo, hi, sign, 100.0, coefs, coefs.shape[1], out, acc)
    ref = _brute_sweep(xs, ws, xq, lo, hi, sign, 100.0, coefs)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(ws).sum()))


def _case(seed, B, N, L, spread, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(B, N, generator=g, dtype=torch.float64) * spread).to(dtype)
    scores[:, : N // 8] = scores[:, N // 8 : N // 4]  # exact ties between items of any levels
    levels = torch.randint(0, L + 1, (B, N), generator=g)
    table = torch.rand(B, L + 1, generator=g, dtype=torch.float64)
    table[:, 0] = 0
    return scores, levels, table


def _ranks_and_grad(scores, levels, table, w, cfg=None):
    s = scores.clone().requires_grad_(True)
    cfg = cfg or StepConfig("suprank")
    q, k, rank, plus = pair_ranks(s, levels, table, cfg, chunk_size=1 << 20)
    return q, k, rank.detach(), plus, torch.autograd.grad((rank * w).sum(), s)[0]


@pytest.mark.parametrize("cut", [0.0, 1.0])  # only ties in the direct window / a window of one tau
@pytest.mark.parametrize("spread", [0.05, 3.0])
@pytest.mark.parametrize("L", [1, 3])
def test_forced_series_rows_equal_torch(monkeypatch, cut, spread, L):
    """Every row on the series path (work estimate set to zero), against the torch path."""
    monkeypatch.setattr(_rk, "SERIES_COST", 0.0)
    monkeypatch.setattr(_rk, "SERIES_CUT", cut)
    scores, levels, table = _case(0, B=6, N=80, L=L, spread=spread)
    w = torch.rand(levels.gt(0).sum().item(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w -= 0.2  # some negative weights
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(rank_mod, "KERNELS_ENABLED", enabled)
        out.append(_ranks_and_grad(scores, levels, table, w))
    (q1, k1, r1, p1, g1), (q2, k2, r2, p2, g2) = out
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    torch.testing.assert_close(r1, r2, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(p1, p2, rtol=1e-13, atol=1e-12)
    assert_rows_close(g1, g2, GRAD_BOUND)


def test_large_rows_choose_the_series_and_equal_torch(monkeypatch):
    """Rows of 3,000 items with ~1,500 targets: the work estimate picks the series by itself."""
    scores, levels, table = _case(1, B=2, N=3000, L=3, spread=0.05)
    lv = levels.to(torch.int8).numpy()
    n_t = (lv > 0).sum(1)
    direct = np.array([np.sum([(lv[r] < m).sum() for m in lv[r][lv[r] > 0]]) for r in range(2)])
    terms = _rk.series_coefficients(np.dtype(np.float64)).shape[1]
    events = 2 * np.array([lv[r][lv[r] > 0].sum() for r in range(2)]) + 3 * (lv < 3).sum(1)
    assert (n_t > 1000).all() and (direct > _rk.SERIES_COST * terms * events).all()
    w = torch.rand(int(n_t.sum()), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(rank_mod, "KERNELS_ENABLED", enabled)
        out.append(_ranks_and_grad(scores, levels, table, w))
    (_, _, r1, p1, g1), (_, _, r2, p2, g2) = out
    torch.testing.assert_close(r1, r2, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(p1, p2, rtol=1e-13, atol=1e-12)
    assert_rows_close(g1, g2, GRAD_BOUND)


def test_float32_large_batch_sup_hap_close_to_torch(monkeypatch):
    """float32 SupHAP at B = 384 (series rows) against the torch path, both in float32."""
    g = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(384, 128, generator=g), dim=1)
    cls = torch.arange(384) // 4
    lab = torch.stack([cls, cls // 8, cls % 2], 1)
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(rank_mod, "KERNELS_ENABLED", enabled)
        e = emb.clone().requires_grad_(True)
        v = sup_hap(e, lab)
        out.append((v.detach(), torch.autograd.grad(v, e)[0]))
    (v1, g1), (v2, g2) = out
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "cfg",
    [
        StepConfig(tau=0.002, delta=0.0),  # no window above the target; ties at sigmoid(0)
        StepConfig(tau=0.05, delta=0.2, rho=10.0, start=0.3, offset=None),  # wide window, other steps
    ],
    ids=["delta0-small-tau", "wide"],
)
def test_forced_series_rows_equal_torch_for_other_step_parameters(monkeypatch, cfg):
    monkeypatch.setattr(_rk, "SERIES_COST", 0.0)
    scores, levels, table = _case(2, B=5, N=120, L=2, spread=0.1)
    w = torch.rand(levels.gt(0).sum().item(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(rank_mod, "KERNELS_ENABLED", enabled)
        out.append(_ranks_and_grad(scores, levels, table, w, cfg))
    (_, _, r1, p1, g1), (_, _, r2, p2, g2) = out
    torch.testing.assert_close(r1, r2, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(p1, p2, rtol=1e-13, atol=1e-12)
    assert_rows_close(g1, g2, GRAD_BOUND)
