"""The pytorch-metric-learning baselines: built from a config name, equal to pml called directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners

from hglv2.errors import InputError
from hglv2.losses import build_loss, loss_names
from hglv2.losses.pml import PMLProxyAdapter

PAIR_LOSSES = {
    "pml.Triplet": (
        {"margin": 0.05},
        lambda: losses.TripletMarginLoss(0.05, distance=distances.DotProductSimilarity()),
    ),
    "pml.Contrastive": ({}, lambda: losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)),
    "pml.MultiSimilarity": ({"beta": 40.0}, lambda: losses.MultiSimilarityLoss(alpha=2, beta=40.0, base=0.5)),
    "pml.FastAP": ({}, lambda: losses.FastAPLoss(num_bins=10)),
}


def _batch(seed: int, b: int = 24, d: int = 8, classes: int = 5, levels: int = 3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    fine = torch.randint(0, classes, (b,), generator=g) * 7 + 100  # sparse, non-contiguous ids
    labels = torch.stack([fine, fine // 14, torch.zeros_like(fine)], 1)[:, :levels]
    return emb, labels


def test_all_baselines_are_registered():
    names = set(loss_names())
    for name in (
        "pml.Triplet",
        "pml.Contrastive",
        "pml.MultiSimilarity",
        "pml.FastAP",
        "pml.ArcFace",
        "pml.ProxyNCA",
    ):
        assert name in names


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
@pytest.mark.parametrize("seed", range(4))
def test_pair_losses_equal_pml(name, seed):
    kwargs, direct = PAIR_LOSSES[name]
    emb, labels = _batch(seed)
    emb.requires_grad_(True)
    ours = build_loss(name, kwargs)(emb, labels)  # (B, L) labels: column 0
    (g_ours,) = torch.autograd.grad(ours, emb)
    ref = direct()(emb, labels[:, 0])
    (g_ref,) = torch.autograd.grad(ref, emb)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=0)
    # labels (B,) give the same, and level 1 is pml on column 1
    assert float(build_loss(name, kwargs)(emb, labels[:, 0]).detach()) == float(ours.detach())
    lvl1 = build_loss(name, {**kwargs, "level": 1})(emb, labels)
    assert float(lvl1) == float(direct()(emb, labels[:, 1]))


@pytest.mark.parametrize("name", ["pml.Triplet", "pml.Contrastive", "pml.MultiSimilarity"])
def test_reference_set_is_pml_ref_emb(name):
    kwargs, direct = PAIR_LOSSES[name]
    emb, labels = _batch(1)
    ref, ref_labels = _batch(2, b=40)
    ours = build_loss(name, kwargs)(emb, labels, ref_embeddings=ref, ref_labels=ref_labels)
    theirs = direct()(emb, labels[:, 0], ref_emb=ref, ref_labels=ref_labels[:, 0])
    assert float(ours) == float(theirs)


def test_triplet_mining_is_the_authors_batch_easy_hard_miner():
    emb, labels = _batch(3)
    ours = build_loss("pml.Triplet", {"mining": True})(emb, labels)
    miner = miners.BatchEasyHardMiner()
    y = labels[:, 0]
    theirs = losses.TripletMarginLoss(0.05, distance=distances.DotProductSimilarity())(emb, y, miner(emb, y))
    assert float(ours) == float(theirs)


def test_per_sample_losses_refuse_a_reference_set():
    emb, labels = _batch(0)
    for name, ctx in (("pml.FastAP", {}), ("pml.ArcFace", {"num_classes": 5, "embedding_dim": 8})):
        with pytest.raises(InputError, match="reference set"):
            build_loss(name, {}, **ctx)(emb, labels, ref_embeddings=emb, ref_labels=labels)


@pytest.mark.parametrize(
    ("name", "direct"),
    [
        ("pml.ArcFace", lambda c, d: losses.ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=30.0)),
        ("pml.ProxyNCA", lambda c, d: losses.ProxyNCALoss(c, d, softmax_scale=9.0)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_proxy_losses_equal_pml(name, direct, seed):
    emb, labels = _batch(seed)
    class_ids = torch.arange(5) * 7 + 100
    torch.manual_seed(seed)
    ours = build_loss(name, {}, num_classes=5, embedding_dim=8, class_ids=class_ids, unused_context=1)
    assert isinstance(ours, PMLProxyAdapter)
    theirs = direct(5, 8)
    theirs.load_state_dict(ours.loss.state_dict())
    emb.requires_grad_(True)
    value = ours(emb, labels)
    dense = torch.searchsorted(class_ids, labels[:, 0])
    expected = theirs(emb, dense)
    assert float(value) == float(expected)
    value.backward()
    expected.backward()
    group = ours.param_group(lr=1e-4)
    assert group["lr"] == 1e-4 and len(group["params"]) == 1
    torch.testing.assert_close(group["params"][0].grad, next(theirs.parameters()).grad, rtol=0, atol=0)


def test_proxy_nca_is_the_authors_proxy_nca_pp():
    """softmax_scale 9 == the authors' ProxyNCA++ (scale 3 before squared distances), from its formula."""
    emb, labels = _batch(5, dtype=torch.float64)
    loss = build_loss("pml.ProxyNCA", {}, num_classes=5, embedding_dim=8, class_ids=torch.arange(5) * 7 + 100)
    p = F.normalize(loss.loss.proxies.detach().double(), dim=1)
    x = F.normalize(emb, dim=1)
    d = ((3 * x[:, None] - 3 * p[None]) ** 2).sum(-1)
    y = torch.searchsorted(torch.arange(5) * 7 + 100, labels[:, 0])
    expected = F.cross_entropy(-d, y)
    torch.testing.assert_close(loss(emb, labels).double(), expected, rtol=1e-5, atol=1e-6)


def test_arcface_is_the_authors_arcface():
    """pml's ArcFace with margin degrees(m) is the authors' ArcFace (s=30, m=0.5, not easy_margin)."""
    emb, labels = _batch(6, dtype=torch.float64)
    ids = torch.arange(5) * 7 + 100
    loss = build_loss("pml.ArcFace", {}, num_classes=5, embedding_dim=8, class_ids=ids)
    w = F.normalize(loss.loss.W.detach().double().t(), dim=1)  # pml stores W as (D, C)
    cos = F.normalize(emb, dim=1) @ w.t()
    m = 0.5
    sine = (1 - cos**2).clamp(0, 1).sqrt()
    phi = torch.where(
        cos > math.cos(math.pi - m), cos * math.cos(m) - sine * math.sin(m), cos - math.sin(math.pi - m) * m
    )
    y = torch.searchsorted(ids, labels[:, 0])
    onehot = F.one_hot(y, 5).double()
    expected = F.cross_entropy(30.0 * (onehot * phi + (1 - onehot) * cos), y)
    torch.testing.assert_close(loss(emb, labels).double(), expected, rtol=1e-5, atol=1e-6)


def test_proxy_losses_reject_unknown_classes_and_bad_args():
    emb, labels = _batch(0)
    loss = build_loss("pml.ArcFace", {}, num_classes=5, embedding_dim=8, class_ids=torch.arange(5) * 7 + 100)
    bad = labels.clone()
    bad[3, 0] = 101
    with pytest.raises(InputError, match="class id 101"):
        loss(emb, bad)
    no_ids = build_loss("pml.ProxyNCA", {}, num_classes=5, embedding_dim=8)
    with pytest.raises(InputError, match=r"0\.\.4"):
        no_ids(emb, labels)  # raw ids 100.. without class_ids
    with pytest.raises(InputError, match="num_classes"):
        build_loss("pml.ArcFace", {}, num_classes=0, embedding_dim=8)
    with pytest.raises(InputError, match="bad arguments"):
        build_loss("pml.Triplet", {"margn": 0.1})
    with pytest.raises(InputError, match="level"):
        build_loss("pml.Triplet", {"level": 5})(emb, labels)
