r"""Optimisation: optimizers of the model and of the decomposability loss's proxies, and the
learning-rate schedule (linear warm-up, then cosine decay or constant).

.. math:: f(s) = \frac{s + 1}{w} \ (s < w), \qquad
          f(s) = r + \frac{1 - r}{2}
                 \left(1 + \cos\left(\pi \min\left(1, \frac{s - w}{\max(T - w, 1)}\right)\right)\right)

for step ``s``, ``w`` warm-up steps, ``T`` total steps and ``r`` = ``schedule.min_lr_ratio``
(``schedule.kind: constant``: f(s) = 1 after the warm-up); the learning rate of step ``s`` is
``lr * f(s)`` (:class:`torch.optim.lr_scheduler.LambdaLR`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "criterion_optimizer",
    "decomposability_optimizer",
    "lr_factor",
    "model_optimizer",
]


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine", min_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` (with ``betas``) or ``sgd`` (momentum 0.9) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)


def model_optimizer(cfg: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of the model's parameters (the ``optimizer`` section)."""
    o = cfg["optimizer"]
    return build_optimizer(o["name"], model.parameters(), o["lr"], o["weight_decay"], o["betas"])


def decomposability_optimizer(cfg: dict[str, Any], dec: nn.Module) -> torch.optim.Optimizer | None:
    """The decomposability loss's own optimizer (its trainable parameters, e.g. proxies), or None
    when it has none: same kind and betas as the model's, ``lr`` defaulting to the model's and
    ``weight_decay`` to 0 (``loss.decomposability.lr`` / ``.weight_decay``)."""
    o, dc = cfg["optimizer"], cfg["loss"]["decomposability"]
    params = [p for p in dec.parameters() if p.requires_grad]
    if not params:
        return None
    return build_optimizer(o["name"], params, dc.get("lr", o["lr"]), dc.get("weight_decay", 0.0), o["betas"])


def criterion_optimizer(cfg: dict[str, Any], criterion: nn.Module) -> torch.optim.Optimizer | None:
    """The main loss's own optimizer (its trainable parameters: the proxies of ArcFace / ProxyNCA),
    or None when it has none: same kind and betas as the model's, ``loss.lr`` / ``loss.weight_decay``
    defaulting to the model's (the authors put these proxies on their head optimizer,
    ``suprank/config/loss/arcface.yaml``, ``proxy_nca_pp.yaml``)."""
    o, lc = cfg["optimizer"], cfg["loss"]
    if hasattr(criterion, "param_group"):
        params = criterion.param_group()["params"]
    else:
        params = [p for p in criterion.parameters() if p.requires_grad]
    if not params:
        return None
    lr = o["lr"] if lc.get("lr") is None else lc["lr"]
    wd = o["weight_decay"] if lc.get("weight_decay") is None else lc["weight_decay"]
    return build_optimizer(o["name"], params, lr, wd, o["betas"])
