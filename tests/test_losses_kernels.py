"""The compiled CPU kernels of the rank operator == the chunked torch formulation (values and gradients).

The torch path (``KERNELS_ENABLED = False``; also the CUDA path) evaluates the sigmoid over every
column with the others masked; the kernels visit only the band of less relevant items per level.
Both must give the same ranks, rank+ and gradients, with ties, several levels and scores spread
over several kernel blocks and beyond the band cut.
"""

import pytest
import torch

import hglv2.losses.rank as rank_mod
from hglv2.losses import StepConfig, pair_ranks, sup_ap, sup_hap, sup_ndcg

pytestmark = pytest.mark.skipif(not rank_mod._rk.HAVE_NUMBA, reason="numba not installed")


def _both(fn, monkeypatch):
    """fn() with the kernels, then with the torch path."""
    out = []
    for enabled in (True, False):
        monkeypatch.setattr(rank_mod, "KERNELS_ENABLED", enabled)
        out.append(fn())
    return out


def _case(seed, B, N, L, spread, ties):
    g = torch.Generator().manual_seed(seed)
    if ties:  # coarse grid: exact ties, differences of 0 and of the order of delta
        scores = torch.randint(-12, 13, (B, N), generator=g).to(torch.float64) / 40 * spread
    else:
        scores = torch.randn(B, N, generator=g, dtype=torch.float64) * spread
    levels = torch.randint(0, L + 1, (B, N), generator=g)
    table = torch.rand(B, L + 1, generator=g, dtype=torch.float64)
    table[:, 0] = 0
    return scores, levels, table


@pytest.mark.parametrize("L", [1, 2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("spread", [0.05, 3.0])  # one block / several blocks and beyond the cut
@pytest.mark.parametrize("approximation", ["suprank", "exact"])
def test_pair_ranks_kernel_equals_torch(monkeypatch, L, ties, spread, approximation):
    for seed in range(1):
        scores, levels, table = _case(seed, B=7, N=40, L=L, spread=spread, ties=ties)
        cfg = StepConfig(approximation)
        w = torch.rand(
            levels.gt(0).sum().item(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )

        def run(tab=table, scores=scores, levels=levels, cfg=cfg, w=w):
            s = scores.clone().requires_grad_(True)
            q, k, rank, plus = pair_ranks(s, levels, tab, cfg, chunk_size=4096)
            grad = torch.autograd.grad((rank * w).sum(), s)[0] if rank.requires_grad else None
            return q, k, rank.detach(), plus, grad

        for tab in (table, None):
            (q1, k1, r1, p1, g1), (q2, k2, r2, p2, g2) = _both(lambda tab=tab: run(tab), monkeypatch)
            assert torch.equal(q1, q2) and torch.equal(k1, k2)
            torch.testing.assert_close(r1, r2, rtol=1e-13, atol=1e-12)
            torch.testing.assert_close(p1, p2, rtol=1e-13, atol=1e-12)
            if g1 is not None:
                torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [1, 2, 3, 4])
@pytest.mark.parametrize("loss", [sup_ap, sup_hap, sup_ndcg])
def test_losses_kernel_equals_torch_float64(monkeypatch, L, loss):
    g = torch.Generator().manual_seed(L)
    B, D = 48, 8
    emb = torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    emb = torch.where(torch.rand(B, 1, generator=g) < 0.2, emb[:1], emb)  # duplicates: exact ties
    base = torch.randint(0, 12, (B,), generator=g)
    lab = torch.stack([base // (2**c) for c in range(L)], 1)
    ref = torch.randn(20, D, generator=g, dtype=torch.float64)
    ref_lab = torch.randint(0, 6, (20, L), generator=g)

    def run(with_ref):
        e = emb.clone().requires_grad_(True)
        v = loss(e, lab, ref, ref_lab) if with_ref else loss(e, lab)
        return v.detach(), torch.autograd.grad(v, e)[0]

    for with_ref in (False, True):
        (v1, g1), (v2, g2) = _both(lambda w=with_ref: run(w), monkeypatch)
        torch.testing.assert_close(v1, v2, rtol=1e-13, atol=1e-12)
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


def test_float32_kernel_close_to_torch(monkeypatch):
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(128, 64, generator=g), dim=1)
    cls = torch.randint(0, 32, (128,), generator=g)
    lab = torch.stack([cls, cls // 4, cls % 2], 1)

    def run():
        e = emb.clone().requires_grad_(True)
        v = sup_hap(e, lab)
        return v.detach(), torch.autograd.grad(v, e)[0]

    (v1, g1), (v2, g2) = _both(run, monkeypatch)
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


def test_kernels_keep_torch_thread_count():
    before = torch.get_num_threads()
    emb = torch.nn.functional.normalize(torch.randn(16, 4), dim=1).requires_grad_(True)
    sup_hap(emb, torch.randint(0, 3, (16, 2))).backward()
    assert torch.get_num_threads() == before
