r"""Optimisation: parameter groups (backbone / head / proxies), optimizers and learning-rate schedules.

The model's optimizer has one group per part of :class:`hglv2.models.EmbeddingModel` when their
settings differ (``optimizer.lr`` / ``weight_decay`` for the backbone, ``optimizer.head_lr`` /
``head_weight_decay`` for pooling + LayerNorm + projection), else a single group; the
decomposability loss's proxies have their own optimizer (``loss.decomposability.lr`` /
``weight_decay``). Adam, AdamW (``betas``) or SGD (``momentum``, ``nesterov``).

Schedule of step ``s`` (``w`` warm-up steps, ``T`` total steps, ``h`` steps of backbone-freeze
warm-up during which the schedule holds, as the authors' code does not step its schedulers then):

.. math:: f(s) = \frac{s + 1}{w} \ (s < w), \qquad
          f(s) = r + \frac{1 - r}{2}
                 \left(1 + \cos\left(\pi \min\left(1, \frac{s' - w}{\max(T - h - w, 1)}\right)\right)\right),
          \quad s' = \max(s - h, 0)

with ``r`` = ``schedule.min_lr / lr`` of the group when ``schedule.min_lr`` is given (the authors'
absolute ``eta_min``), else ``schedule.min_lr_ratio``; ``constant``: f = 1 after the warm-up;
``multistep``: f = gamma^(number of milestones m with s' >= m * steps per epoch). The learning
rate of a group is ``lr * f(s)`` (:class:`torch.optim.lr_scheduler.LambdaLR`, one lambda per group).

``schedule.interval: epoch`` (the authors': ``CosineAnnealingLR(T_max=max_iter)`` stepped once at
the end of each epoch, and not at the end of the backbone-freeze warm-up epochs) evaluates the
same formula with ``s`` = the number of epochs after the warm-up that are complete, ``T`` = the
number of epochs (``train.epochs``), ``w`` = ``h`` = 0: the learning rate is constant within an
epoch, and after ``h`` warm-up epochs the last epoch runs at ``f(T - h - 1)``, above the floor,
as theirs (the default). ``schedule.interval: step`` moves the learning rate at every step, over
the steps after the warm-up, down to the floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "criterion_optimizer",
    "decomposability_optimizer",
    "lr_factor",
    "model_optimizer",
    "steps_per_epoch_end",
]


def lr_factor(
    step: int,
    total: int,
    warmup: int,
    kind: str = "cosine",
    min_ratio: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    hold: int = 0,
) -> float:
    """The schedule's factor at ``step`` (module formula); ``milestones`` in steps, ``hold`` steps
    of backbone-freeze warm-up before the schedule starts."""
    if step < hold:
        return 1.0
    step, total = step - hold, max(total - hold, 1)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "multistep":
        return float(gamma ** sum(step >= m for m in milestones))
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` (with ``betas``) or ``sgd`` (``momentum``, ``nesterov``) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def _kind_options(o: dict[str, Any]) -> dict[str, Any]:
    return {"betas": o["betas"], "momentum": o["momentum"], "nesterov": o["nesterov"]}


def model_optimizer(cfg: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of the model's parameters (the ``optimizer`` section): one group, or the
    groups ``backbone`` and ``head`` when ``head_lr`` / ``head_weight_decay`` differ."""
    o = cfg["optimizer"]
    head_lr = o["lr"] if o["head_lr"] is None else o["head_lr"]
    head_wd = o["weight_decay"] if o["head_weight_decay"] is None else o["head_weight_decay"]
    params: Any = list(model.parameters())
    if (head_lr, head_wd) != (o["lr"], o["weight_decay"]) and hasattr(model, "head_parameters"):
        head = model.head_parameters()
        head_ids = {id(p) for p in head}
        params = [
            {"params": [p for p in model.parameters() if id(p) not in head_ids], "name": "backbone"},
            {"params": head, "lr": head_lr, "weight_decay": head_wd, "name": "head"},
        ]
    return build_optimizer(o["name"], params, o["lr"], o["weight_decay"], **_kind_options(o))


def decomposability_optimizer(cfg: dict[str, Any], dec: nn.Module) -> torch.optim.Optimizer | None:
    """The decomposability loss's own optimizer (its trainable parameters, e.g. proxies), or None
    when it has none: same kind and betas as the model's, ``lr`` defaulting to the model's and
    ``weight_decay`` to 0 (``loss.decomposability.lr`` / ``.weight_decay``)."""
    o, dc = cfg["optimizer"], cfg["loss"]["decomposability"]
    params = [p for p in dec.parameters() if p.requires_grad]
    if not params:
        return None
    return build_optimizer(
        o["name"], params, dc.get("lr", o["lr"]), dc.get("weight_decay", 0.0), **_kind_options(o)
    )


def build_scheduler(
    cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    min_lr: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``schedule`` section as a :class:`LambdaLR` over ``optimizer`` (one lambda per group).

    ``min_lr``: the cosine floor of this optimizer as an absolute learning rate (default
    ``schedule.min_lr``; None: ``schedule.min_lr_ratio`` of each group's learning rate).
    With ``schedule.interval: epoch`` the scheduler is to be stepped once per epoch after the
    warm-up epochs (:func:`steps_per_epoch_end`), else once per step.
    """
    sch, t = cfg["schedule"], cfg["train"]
    floor = sch["min_lr"] if min_lr is None else min_lr
    if sch.get("interval", "step") == "epoch":
        total_steps = t["epochs"] if t["steps"] is None else -(-t["steps"] // max(steps_per_epoch, 1))
        hold, warmup, milestones = 0, 0, list(sch["milestones"])
    else:
        hold, warmup = t["freeze_backbone_epochs"] * steps_per_epoch, sch["warmup_steps"]
        milestones = [m * steps_per_epoch for m in sch["milestones"]]
    lambdas: list[Callable[[int], float]] = []
    for group in optimizer.param_groups:
        ratio = sch["min_lr_ratio"] if floor is None else min(floor / group["lr"], 1.0)
        lambdas.append(
            partial(
                lr_factor,
                total=total_steps,
                warmup=warmup,
                kind=sch["kind"],
                min_ratio=ratio,
                milestones=milestones,
                gamma=sch["gamma"],
                hold=hold,
            )
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def steps_per_epoch_end(cfg: dict[str, Any], epochs_done: int) -> bool:
    """Whether the schedulers step at the end of epoch ``epochs_done`` (1-based): with
    ``schedule.interval: epoch``, after every epoch past the backbone-freeze warm-up (the authors'
    ``suprank/engine/train.py``)."""
    return (
        cfg["schedule"].get("interval", "step") == "epoch"
        and epochs_done > cfg["train"]["freeze_backbone_epochs"]
    )


def criterion_optimizer(cfg: dict[str, Any], criterion: nn.Module) -> torch.optim.Optimizer | None:
    """The main loss's own optimizer (its trainable parameters: the proxies of ArcFace / ProxyNCA),
    or None when it has none: same kind and options as the model's; ``loss.lr`` /
    ``loss.weight_decay`` default to the head group's (``optimizer.head_lr`` /
    ``head_weight_decay``, else ``lr`` / ``weight_decay``), as the authors put these proxies on
    their head optimizer (``suprank/config/loss/arcface.yaml``, ``proxy_nca_pp.yaml``:
    ``optimizer: ${optimizer.opt.head}``)."""
    o, lc = cfg["optimizer"], cfg["loss"]
    if hasattr(criterion, "param_group"):
        params = criterion.param_group()["params"]
    else:
        params = [p for p in criterion.parameters() if p.requires_grad]
    if not params:
        return None
    head_lr = o["lr"] if o.get("head_lr") is None else o["head_lr"]
    head_wd = o["weight_decay"] if o.get("head_weight_decay") is None else o["head_weight_decay"]
    lr = head_lr if lc.get("lr") is None else lc["lr"]
    wd = head_wd if lc.get("weight_decay") is None else lc["weight_decay"]
    return build_optimizer(o["name"], params, lr, wd, **_kind_options(o))
