"""The loss registry: names -> factories, context filling, errors, registration rules."""

from __future__ import annotations

import pytest
import torch

import hglv2.losses as losses
from hglv2.errors import InputError
from hglv2.losses import registry


@pytest.fixture
def scratch_registry():
    """The registry, restored to its entries after the test."""
    saved = dict(registry._REGISTRY)
    yield registry._REGISTRY
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_shipped_losses_are_registered_and_build():
    expected = {
        "SupAP": losses.SupAP,
        "SupHAP": losses.SupHAP,
        "SupRecall": losses.SupRecall,
        "SupNDCG": losses.SupNDCG,
        "SmoothAP": losses.SmoothAP,
        "Contrastive": losses.ContrastiveLoss,
        "CalibrationLoss": losses.CalibrationLoss,
        "NormalizedSoftmaxProxyLoss": losses.NormalizedSoftmaxProxyLoss,
    }
    assert expected.items() <= dict(losses.LOSSES).items()
    assert losses.loss_names() == sorted(losses.LOSSES)
    emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    lab = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [2, 1], [2, 1], [3, 1], [3, 1]])
    for name, cls in expected.items():
        loss = losses.build_loss(name, {}, num_classes=4, embedding_dim=4, unused_context=1)
        assert type(loss) is cls
        value = loss(emb, lab)
        assert value.ndim == 0 and torch.isfinite(value)


def test_context_fills_only_missing_parameters():
    loss = losses.build_loss("NormalizedSoftmaxProxyLoss", {"num_classes": 7}, num_classes=3, embedding_dim=5)
    assert tuple(loss.proxies.shape) == (7, 5)
    c = losses.build_loss("Contrastive", {"neg_margin": 0.5}, num_classes=3)
    assert (c.pos_margin, c.neg_margin) == (0.0, 0.5)


def test_unknown_name_and_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match=r"loss 'SupAp' is unknown \(available: .*SupAP"):
        losses.build_loss("SupAp", {})
    with pytest.raises(InputError, match="loss SupAP: bad arguments"):
        losses.build_loss("SupAP", {"no_such_option": 1})
    with pytest.raises(InputError, match="unknown"):
        losses.loss_factory(["not", "a", "name"])  # type: ignore[arg-type]


def test_registration_rules(scratch_registry):
    @losses.register_loss("Scaled")
    class Scaled(torch.nn.Module):
        def __init__(self, scale: float = 1.0, embedding_dim: int = 0) -> None:
            super().__init__()
            self.scale, self.embedding_dim = scale, embedding_dim

    assert losses.LOSSES["Scaled"] is Scaled
    built = losses.build_loss("Scaled", {"scale": 2.0}, embedding_dim=9, num_classes=3)
    assert (built.scale, built.embedding_dim) == (2.0, 9)
    losses.register_loss("Scaled", Scaled)  # the same factory again: no-op
    with pytest.raises(ValueError, match="already registered"):
        losses.register_loss("Scaled", losses.SupAP)
    with pytest.raises(ValueError, match="already registered"):
        losses.register_loss("SupAP", Scaled)

    def make_ap(tau: float = 0.01) -> torch.nn.Module:  # a factory function (e.g. a pml adapter)
        return losses.SupAP(tau=tau)

    losses.register_loss("Scaled", make_ap, replace=True)
    assert isinstance(losses.build_loss("Scaled", {"tau": 0.05}, num_classes=3), losses.SupAP)
    with pytest.raises(TypeError):
        losses.register_loss("NotCallable", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        losses.register_loss("", Scaled)
    with pytest.raises(TypeError):
        losses.LOSSES["x"] = Scaled  # type: ignore[index]


def test_registry_restored_after_scratch_test():
    assert "Scaled" not in losses.LOSSES
