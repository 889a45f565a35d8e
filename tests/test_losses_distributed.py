"""DDP: two gloo processes on CPU give the loss and gradients of one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist

from hglv2.losses import CrossBatchMemory, DistributedLoss, SupAP, SupHAP, gather_batch

WORLD = 2
EQUAL = [(0, 12), (12, 24)]
UNEQUAL = [(0, 9), (9, 24)]  # exercises the padded all-gather


def _data():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(24, 8, generator=g, dtype=torch.float64)
    lab = torch.stack([torch.arange(24) // 3, torch.arange(24) // 6, torch.arange(24) // 12], 1)
    perm = torch.randperm(24, generator=g)
    return emb[perm], lab[perm]


def _losses():
    return {"ap": SupAP(), "hap": SupHAP()}


def _task(rank: int, out_dir: str) -> None:
    """One rank (in the session's gloo pool: the process group is already up)."""
    emb, lab = _data()
    results = {}
    for split, shards in (("equal", EQUAL), ("unequal", UNEQUAL)):
        a, b = shards[rank]
        for name, loss in _losses().items():
            x = emb[a:b].clone().requires_grad_(True)
            value = DistributedLoss(loss)(torch.nn.functional.normalize(x, dim=1), lab[a:b])
            value.backward()
            results[f"{split}_{name}_loss"] = value.detach()
            results[f"{split}_{name}_grad"] = x.grad
    # a memory bank fed with the gathered global batch, used as the reference set
    a, b = EQUAL[rank]
    mem = CrossBatchMemory(64, 8, 3).double()
    x = emb[a:b].clone().requires_grad_(True)
    e = torch.nn.functional.normalize(x, dim=1)
    ref, ref_lab = mem(*gather_batch(e, lab[a:b]))
    value = SupAP()(e, lab[a:b], ref, ref_lab)
    value.backward()
    results.update(mem_loss=value.detach(), mem_grad=x.grad, mem_labels=ref_lab)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_matches_single_process(tmp_path, gloo_pool):
    assert gloo_pool.world == WORLD
    gloo_pool.run(_task, str(tmp_path))
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    emb, lab = _data()
    for name, loss in _losses().items():
        # one process, whole batch (query counted as its own positive)
        x = emb.clone().requires_grad_(True)
        value = loss(torch.nn.functional.normalize(x, dim=1), lab)
        (grad,) = torch.autograd.grad(value, x)
        # equal shards: DDP's objective mean_r L_r is the global mean; DDP averages the local
        # gradients (each the gradient of sum_r L_r w.r.t. the local shard) over the W ranks
        dist_value = sum(o[f"equal_{name}_loss"] for o in outs) / WORLD
        assert torch.allclose(dist_value, value, atol=1e-12)
        dist_grad = torch.cat([o[f"equal_{name}_grad"] for o in outs]) / WORLD
        assert torch.allclose(dist_grad, grad, atol=1e-12)
        # unequal shards: each rank ranks its queries against the full batch, gradients of sum_r L_r
        e = torch.nn.functional.normalize(x, dim=1)
        per_rank = [loss(e[a:b], lab[a:b], e, lab) for a, b in UNEQUAL]
        for o, v in zip(outs, per_rank, strict=True):
            assert torch.allclose(o[f"unequal_{name}_loss"], v, atol=1e-12)
        (grad,) = torch.autograd.grad(sum(per_rank), x)
        assert torch.allclose(torch.cat([o[f"unequal_{name}_grad"] for o in outs]), grad, atol=1e-12)
    # memory bank: every rank stores the global batch; queries see it detached
    for o, (a, b) in zip(outs, EQUAL, strict=True):
        x = emb.clone().requires_grad_(True)
        e = torch.nn.functional.normalize(x, dim=1)
        assert torch.equal(o["mem_labels"], lab)
        v = SupAP()(e[a:b], lab[a:b], e.detach(), lab)
        (grad,) = torch.autograd.grad(v, x)
        assert torch.allclose(o["mem_loss"], v, atol=1e-12)
        assert torch.allclose(o["mem_grad"], grad[a:b], atol=1e-12)
