"""Embedding models: GeM, normalisation, pretrained weights that cannot be had."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from hglv2.errors import InputError, NetworkError
from hglv2.models import GeM, build_model


def test_gem_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 5) + 0.1
    assert torch.allclose(GeM(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    p = 3.0
    brute = torch.stack([torch.stack([(c.flatten() ** p).mean() ** (1 / p) for c in img]) for img in x])
    assert torch.allclose(GeM(p)(x), brute, atol=1e-6)
    # between average (p = 1) and max pooling, increasing in p
    g3, g8 = GeM(3.0)(x), GeM(8.0)(x)
    assert (x.mean(dim=(2, 3)) <= g3 + 1e-6).all() and (g3 <= g8 + 1e-6).all()
    assert (g8 <= x.amax(dim=(2, 3)) + 1e-6).all()
    g = GeM(2.0, learnable=True)
    assert [n for n, _ in g.named_parameters()] == ["p"]
    g(x).sum().backward()
    assert g.p.grad is not None


@pytest.mark.parametrize("layernorm", [False, True])
def test_tiny_model_outputs_unit_vectors(layernorm):
    torch.manual_seed(0)
    model = build_model(backbone="tiny", pretrained=False, embedding_dim=16, width=8, layernorm=layernorm)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 16) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_resnet_random_init_needs_no_download(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    model = build_model(backbone="resnet18", pretrained=False, embedding_dim=8)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 8)


def test_missing_pretrained_weights_fail_cleanly(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(NetworkError, match=r"ImageNet weights of resnet18.*pretrained: false"):
        build_model(backbone="resnet18", pretrained=True)


def test_bad_model_settings():
    with pytest.raises(InputError, match="backbone"):
        build_model(backbone="vgg", pretrained=False)
    with pytest.raises(InputError, match="no pretrained weights"):
        build_model(backbone="tiny", pretrained=True)
    with pytest.raises(InputError, match="embedding_dim"):
        build_model(backbone="tiny", pretrained=False, embedding_dim=0)
