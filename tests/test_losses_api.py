"""API, input errors and edge cases of hglv2.losses."""

import math

import pytest
import torch

from hglv2.errors import InputError
from hglv2.losses import (
    CalibrationLoss,
    CrossBatchMemory,
    NormalizedSoftmaxProxyLoss,
    SmoothAP,
    SupAP,
    SupHAP,
    SupNDCG,
    SupRecall,
    WeightedSum,
)

RANK_LOSSES = [SupAP, SupHAP, SupRecall, SupNDCG, SmoothAP]


def _batch(B=16, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    lab = torch.stack([torch.arange(B) // 4, torch.arange(B) // 8, torch.arange(B) // 16], 1)
    return emb, lab


@pytest.mark.parametrize("cls", RANK_LOSSES)
def test_returns_scalar_with_gradient(cls):
    emb, lab = _batch()
    emb.requires_grad_(True)
    loss = cls()(emb, lab)
    assert loss.ndim == 0 and loss.requires_grad
    assert 0.0 <= loss.item() <= 1.0
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [SupAP, SupRecall, SmoothAP])
def test_binary_losses_accept_1d_labels(cls):
    emb, lab = _batch()
    assert torch.allclose(cls()(emb, lab[:, 0]), cls()(emb, lab))


@pytest.mark.parametrize("cls", RANK_LOSSES)
def test_memory_bank_call(cls):
    emb, lab = _batch()
    mem, mem_lab = _batch(B=32, seed=1)
    loss = cls()(emb, lab, ref_embeddings=mem, ref_labels=mem_lab)
    assert loss.ndim == 0 and math.isfinite(loss.item())


@pytest.mark.parametrize("cls", RANK_LOSSES + [CalibrationLoss])
def test_pytorch_metric_learning_call_spelling(cls):
    """pytorch-metric-learning's ``ref_emb=`` and ``indices_tuple=None`` work; a miner's tuple is an error."""
    emb, lab = _batch()
    mem, mem_lab = _batch(B=32, seed=1)
    loss = cls()
    want = loss(emb, lab, ref_embeddings=mem, ref_labels=mem_lab)
    assert torch.equal(loss(emb, lab, ref_emb=mem, ref_labels=mem_lab), want)
    assert torch.equal(loss(emb, lab, indices_tuple=None, ref_emb=mem, ref_labels=mem_lab), want)
    assert torch.equal(loss(emb, lab, None), loss(emb, lab))  # pml's positional indices_tuple=None
    weighted = WeightedSum([cls(), CalibrationLoss()], [0.5, 0.5])
    assert torch.equal(
        weighted(emb, lab, ref_emb=mem, ref_labels=mem_lab),
        weighted(emb, lab, ref_embeddings=mem, ref_labels=mem_lab),
    )
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([4]))
    with pytest.raises(InputError, match="indices_tuple .*miner"):
        loss(emb, lab, indices_tuple=pairs)
    with pytest.raises(InputError, match="indices_tuple .*miner"):
        loss(emb, lab, pairs)  # positional, where pml puts it
    with pytest.raises(InputError, match="not both"):
        loss(emb, lab, ref_embeddings=mem, ref_emb=mem, ref_labels=mem_lab)


@pytest.mark.parametrize("cls", RANK_LOSSES + [CalibrationLoss])
def test_bad_inputs_raise_input_error(cls):
    emb, lab = _batch()
    loss = cls()
    with pytest.raises(InputError, match="rows"):
        loss(emb, lab[:-1])
    with pytest.raises(InputError, match="integer"):
        loss(emb, lab.float())
    with pytest.raises(InputError, match="integer"):
        loss(emb, lab > 0)
    bad = emb.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputError, match="row 3"):
        loss(bad, lab)
    bad[3, 1] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        loss(bad, lab)
    with pytest.raises(InputError, match="together"):
        loss(emb, lab, ref_embeddings=emb)
    with pytest.raises(InputError, match="dimension"):
        loss(emb, lab, ref_embeddings=emb[:, :4], ref_labels=lab)
    with pytest.raises(InputError, match="label columns"):
        loss(emb, lab, ref_embeddings=emb, ref_labels=lab[:, :2])
    with pytest.raises(InputError, match="shape"):
        loss(emb[0], lab[0])
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("cls", RANK_LOSSES)
def test_query_without_other_positive_is_defined(cls):
    emb, _ = _batch(B=6)
    lab = torch.arange(6)[:, None].repeat(1, 3)  # every query alone in its class at every level
    lab[:, 2] = 0  # ... except the coarsest level for the hierarchical losses
    loss = cls()(emb, lab if cls in (SupHAP, SupNDCG) else lab[:, 0])
    assert math.isfinite(loss.item())
    # a reference set with no positive at all for some queries: they are left out, no NaN
    ref, ref_lab = _batch(B=8, seed=3)
    ref_lab = ref_lab + 100
    ref_lab[:2] = lab[:2]
    loss = cls()(emb, lab, ref_embeddings=ref, ref_labels=ref_lab)
    assert math.isfinite(loss.item())
    none = cls()(emb, lab, ref_embeddings=ref, ref_labels=ref_lab + 1000)
    assert none.item() == 0.0


def test_autocast_bf16_matches_float32():
    emb, lab = _batch(B=32, D=16)
    lin = torch.nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = lin(emb)
        loss = SupHAP()(x, lab)
    assert x.dtype == torch.bfloat16 and loss.dtype == torch.float32
    ref = SupHAP()(x.float(), lab)
    assert torch.allclose(loss, ref, atol=1e-6)
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_unknown_options_raise():
    with pytest.raises(InputError):
        SupAP(approximation="bogus")
    with pytest.raises(InputError):
        SupHAP(relevance="bogus")
    with pytest.raises(InputError):
        SupAP(tau=0)
    emb, lab = _batch()
    with pytest.raises(InputError, match="alpha"):
        SupHAP(alpha=[1.0, 2.0])(emb, lab)
    with pytest.raises(InputError, match="level"):
        SupAP(level=5)(emb, lab)


def test_calibration_loss_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses

    emb, lab = _batch(B=24, D=4, seed=2)
    ref = losses.ContrastiveLoss(pos_margin=0.9, neg_margin=0.6, distance=distances.DotProductSimilarity())(
        emb, lab[:, 0]
    )
    ours = CalibrationLoss()(emb, lab)
    assert pml is not None
    assert torch.allclose(ours, ref, atol=1e-6)
    # hinge: positives below 0.9 and negatives above 0.6 only
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert CalibrationLoss()(e, torch.tensor([0, 0, 1])).item() == 0.0


def test_proxy_loss_and_param_group():
    emb, lab = _batch(B=16, D=8)
    loss = NormalizedSoftmaxProxyLoss(num_classes=4, embedding_dim=8)
    value = loss(emb, lab)
    logits = emb @ torch.nn.functional.normalize(loss.proxies, dim=1).t() / 0.05
    assert torch.allclose(value, torch.nn.functional.cross_entropy(logits, lab[:, 0]))
    group = loss.param_group(lr=0.01)
    assert group["params"][0] is loss.proxies and group["lr"] == 0.01
    opt = torch.optim.SGD([{"params": [torch.zeros(1)]}, group], lr=1.0)
    assert opt.param_groups[1]["lr"] == 0.01
    with pytest.raises(InputError, match="class ids"):
        loss(emb, lab + 10)


def test_weighted_sum():
    emb, lab = _batch()
    combo = WeightedSum([SupAP(), CalibrationLoss()], [0.9, 0.1])
    expected = 0.9 * SupAP()(emb, lab) + 0.1 * CalibrationLoss()(emb, lab)
    assert torch.allclose(combo(emb, lab), expected)
    proxy = NormalizedSoftmaxProxyLoss(4, 8)
    combo = WeightedSum([SupAP(), proxy], [0.9, 0.1])
    mem, mem_lab = _batch(B=32, seed=5)
    expected = 0.9 * SupAP()(emb, lab, mem, mem_lab) + 0.1 * proxy(emb, lab)
    assert torch.allclose(combo(emb, lab, mem, mem_lab), expected)
    with pytest.raises(InputError):
        WeightedSum([SupAP()], [0.5, 0.5])


def test_cross_batch_memory_fifo():
    mem = CrossBatchMemory(size=5, embedding_dim=2, label_columns=1)
    assert len(mem) == 0
    out, out_lab = mem(torch.ones(2, 2), torch.tensor([0, 1]))
    assert out.shape == (2, 2) and out_lab[:, 0].tolist() == [0, 1]
    for step in range(1, 4):
        e = torch.full((2, 2), float(step + 1))
        out, out_lab = mem(e, torch.tensor([2 * step, 2 * step + 1]))
    # 8 items enqueued into 5 slots: the last 5, oldest first
    assert out_lab[:, 0].tolist() == [3, 4, 5, 6, 7]
    assert out[:, 0].tolist() == [2.0, 3.0, 3.0, 4.0, 4.0]
    assert len(mem) == 5
    big = torch.arange(14.0).view(7, 2)
    out, out_lab = mem(big, torch.arange(7))
    assert out_lab[:, 0].tolist() == [2, 3, 4, 5, 6]
    # detached, and reading first when asked
    x = torch.randn(3, 2, requires_grad=True)
    out, _ = mem(x, torch.arange(3))
    assert not out.requires_grad
    first = CrossBatchMemory(4, 2, enqueue_first=False)
    out, _ = first(torch.ones(2, 2), torch.tensor([0, 1]))
    assert out.shape == (0, 2)
    state = mem.state_dict()
    clone = CrossBatchMemory(size=5, embedding_dim=2)
    clone.load_state_dict(state)
    assert torch.equal(clone.get()[1], mem.get()[1])
    with pytest.raises(InputError):
        mem(torch.ones(2, 3), torch.tensor([0, 1]))


def test_memory_bank_loss_equals_explicit_concatenation():
    emb, lab = _batch(B=16)
    old, old_lab = _batch(B=16, seed=9)
    mem = CrossBatchMemory(size=64, embedding_dim=8, label_columns=3)
    mem(old, old_lab)
    ref, ref_lab = mem(emb, lab)
    emb.requires_grad_(True)
    a = SupHAP()(emb, lab, ref, ref_lab)
    b = SupHAP()(emb, lab, torch.cat([old, emb.detach()]), torch.cat([old_lab, lab]))
    assert torch.allclose(a, b)


def test_negative_labels_are_unknown_and_match_nothing():
    emb, lab = _batch(B=16)
    unknown = lab.clone()
    unknown[:4, 0] = -1  # first class: landmark unknown
    per_query = SupAP(reduction="none")(emb, unknown)
    assert (per_query[:4] == 0).all()  # no positive at all, not even itself: left out
    # the others are unchanged (the unknown items were negatives for them anyway)
    assert torch.allclose(per_query[4:], SupAP(reduction="none")(emb, lab)[4:])
    mean = SupAP()(emb, unknown)
    assert torch.allclose(mean, per_query[4:].mean())
    # for the hierarchy, the unknown column is simply not shared
    hap = SupHAP(reduction="none")(emb, unknown)
    assert torch.isfinite(hap).all() and (hap[:4] > 0).all()


def test_distributed_helpers_without_process_group_are_identity():
    from hglv2.losses import DistributedLoss, gather_batch

    emb, lab = _batch()
    all_emb, all_lab = gather_batch(emb, lab)
    assert all_emb is emb and torch.equal(all_lab, lab)
    assert torch.allclose(DistributedLoss(SupAP())(emb, lab), SupAP()(emb, lab))


def test_chunk_size_does_not_change_results():
    emb, lab = _batch(B=40, D=8, seed=11)
    for cls in (SupAP, SupHAP, SupNDCG, SupRecall, SmoothAP):
        values = [cls(chunk_size=c)(emb, lab) for c in (1, 100, 1 << 20)]
        assert all(torch.allclose(v, values[0], atol=1e-6) for v in values)
