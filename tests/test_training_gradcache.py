"""Gradient caching gives the gradients of the direct computation (float64, tiny models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hglv2.errors import InputError
from hglv2.losses import build_loss
from hglv2.train.gradcache import grad_cache_backward


class TinyNet(nn.Module):
    """conv -> norm -> ReLU -> (dropout) -> pool -> linear -> L2 normalise."""

    def __init__(self, norm: str = "group", dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8) if norm == "group" else nn.BatchNorm2d(8)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        x = self.drop(F.relu(self.norm(self.conv(x))))
        return F.normalize(self.fc(x.mean((2, 3))), dim=1)


def _data(b=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 6, 6, generator=g, dtype=torch.float64)
    fine = torch.randint(0, 3, (b,), generator=g)
    return images, torch.stack([fine, fine // 2, torch.zeros_like(fine)], 1)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _direct(model, images, loss_fn, chunk=None):
    """backward(loss) after one forward of the batch (or of its chunks, in order, with graph)."""
    model.zero_grad()
    if chunk is None:
        emb = model(images)
    else:
        emb = torch.cat([model(images[a : a + chunk]) for a in range(0, len(images), chunk)])
    loss = loss_fn(emb)
    loss.backward()
    return float(loss), _grads(model)


def _cached(model, images, loss_fn, chunk):
    model.zero_grad()
    loss = grad_cache_backward(model, images, loss_fn, chunk)
    return float(loss.detach()), _grads(model)


def _assert_same(a, b, atol=1e-12):
    assert a[0] == pytest.approx(b[0], abs=atol)
    assert a[1].keys() == b[1].keys() and a[1]
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("loss_name", ["SupAP", "SupHAP", "pml.Triplet", "pml.Contrastive"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 64])
def test_identical_gradients_to_the_direct_computation(loss_name, chunk):
    torch.manual_seed(0)
    model = TinyNet().double()
    images, labels = _data()
    crit = build_loss(loss_name, {})

    def loss_fn(emb):
        return crit(emb, labels)

    _assert_same(_cached(model, images, loss_fn, chunk), _direct(model, images, loss_fn))


def test_frozen_batchnorm_is_exact_and_its_statistics_do_not_move():
    torch.manual_seed(1)
    model = TinyNet(norm="batch").double()
    model.norm.running_mean.uniform_(-0.1, 0.1)
    model.train()
    model.norm.eval()  # frozen BatchNorm (the authors' ResNets)
    images, labels = _data(12, seed=1)
    crit = build_loss("SupAP", {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _assert_same(
        _cached(model, images, lambda e: crit(e, labels), 5),
        _direct(model, images, lambda e: crit(e, labels)),
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_training_batchnorm_updates_running_statistics_once():
    torch.manual_seed(2)
    images, labels = _data(12, seed=2)
    crit = build_loss("SupHAP", {})
    ref = TinyNet(norm="batch").double().train()
    cached = TinyNet(norm="batch").double().train()
    cached.load_state_dict(ref.state_dict())
    # the gradient of ghost batch norm (each chunk normalised by its own statistics) ...
    res = _cached(cached, images, lambda e: crit(e, labels), 5)
    expected = _direct(ref, images, lambda e: crit(e, labels), chunk=5)
    _assert_same(res, expected)
    # ... and the running statistics of one pass over the chunks (not two)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(cached.norm, name), getattr(ref.norm, name), rtol=0, atol=1e-14)
    assert int(cached.norm.num_batches_tracked) == 3


def test_dropout_masks_are_replayed():
    images, labels = _data(11, seed=3)
    crit = build_loss("SupAP", {})
    torch.manual_seed(3)
    model = TinyNet(dropout=0.5).double().train()
    torch.manual_seed(123)
    expected = _direct(model, images, lambda e: crit(e, labels), chunk=4)
    after_direct = torch.get_rng_state()
    torch.manual_seed(123)
    res = _cached(model, images, lambda e: crit(e, labels), 4)
    _assert_same(res, expected)
    assert torch.equal(torch.get_rng_state(), after_direct)  # one forward's worth of draws


def test_loss_parameters_get_their_gradient_and_tuples_pass_through():
    torch.manual_seed(4)
    model = TinyNet().double()
    images, labels = _data(9, seed=4)
    crit = build_loss("pml.ArcFace", {}, num_classes=3, embedding_dim=6).double()

    def loss_fn(emb):
        return crit(emb, labels), {"extra": 1}

    crit.zero_grad()
    out = grad_cache_backward(model, images, loss_fn, 2)
    assert out[1] == {"extra": 1}
    g_cached = crit.loss.W.grad.clone()
    grads_cached = _grads(model)
    crit.zero_grad()
    direct = _direct(model, images, lambda e: loss_fn(e)[0])
    _assert_same((float(out[0].detach()), grads_cached), direct)
    torch.testing.assert_close(g_cached, crit.loss.W.grad, rtol=0, atol=1e-12)


def test_bad_chunk_and_empty_batch():
    model = TinyNet().double()
    images, labels = _data()
    with pytest.raises(InputError, match="grad_cache_chunk"):
        grad_cache_backward(model, images, lambda e: e.sum(), 0)
    with pytest.raises(InputError, match="empty batch"):
        grad_cache_backward(model, images[:0], lambda e: e.sum(), 2)
