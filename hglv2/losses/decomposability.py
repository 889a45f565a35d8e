r"""Decomposability losses of the SupRank paper and a weighted sum to combine them.

* :class:`CalibrationLoss` (ROADMAP): a contrastive hinge on dot-product similarities,

  .. math::

      \mathcal{L}_{cal} = \operatorname{mean}_{(i,j) \in \mathcal{P}^{>0}} [m^+ - s_{ij}]_+
          + \operatorname{mean}_{(i,j) \in \mathcal{N}^{>0}} [s_{ij} - m^-]_+

  with ``m+ = 0.9`` (positives below it are pushed up) and ``m- = 0.6`` (negatives above it are
  pushed down); each mean runs over the pairs with a non-zero hinge (pytorch-metric-learning's
  ``ContrastiveLoss`` with ``DotProductSimilarity`` and its average-non-zero reducer, which the
  SupRank code uses). Without a reference set the pairs are all ``i != j`` of the batch; with one,
  all (query, reference) pairs.
* :class:`NormalizedSoftmaxProxyLoss` (HAPPIER / SupRank "NSM"): one learnable proxy per training
  class, ``L = CE(<e, w_c / ||w_c||> / T, y)`` with ``T = 0.05``; its proxies belong in their own
  optimizer parameter group (:meth:`NormalizedSoftmaxProxyLoss.param_group`).
* :class:`WeightedSum`: ``sum_i w_i L_i`` (paper default ``0.9 * SupAP + 0.1 * calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses.base import LossBase, check_inputs, similarity

__all__ = ["calibration_loss", "CalibrationLoss", "NormalizedSoftmaxProxyLoss", "WeightedSum"]


def _avg_non_zero(x: Tensor) -> Tensor:
    nz = x > 0
    n = nz.sum()
    if int(n) == 0:
        return x.sum() * 0.0
    return x.sum() / n


def calibration_loss(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    pos_margin: float = 0.9,
    neg_margin: float = 0.6,
    level: int = 0,
) -> Tensor:
    """Calibration hinge loss (see module docstring); labels (B,) or (B, L), column ``level``."""
    no_ref = ref_embeddings is None
    embeddings, labels, ref_embeddings, ref_labels = check_inputs(
        embeddings, labels, ref_embeddings, ref_labels
    )
    if not 0 <= level < labels.size(1):
        raise InputError(f"level: {level} out of range for labels with {labels.size(1)} columns")
    s = similarity(embeddings, ref_embeddings)
    same = (labels[:, level, None] == ref_labels[None, :, level]) & (labels[:, level, None] >= 0)
    if no_ref:
        eye = torch.eye(s.size(0), dtype=torch.bool, device=s.device)
        pos = same & ~eye
    else:
        pos = same
    pos_loss = torch.where(pos, F.relu(pos_margin - s), 0.0)
    neg_loss = torch.where(~same, F.relu(s - neg_margin), 0.0)
    return _avg_non_zero(pos_loss) + _avg_non_zero(neg_loss)


class CalibrationLoss(LossBase):
    """``CalibrationLoss(pos_margin=0.9, neg_margin=0.6)(embeddings, labels, ...)``."""

    def __init__(self, pos_margin: float = 0.9, neg_margin: float = 0.6, level: int = 0) -> None:
        super().__init__()
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.level = level

    functional = staticmethod(calibration_loss)

    def loss_options(self) -> dict[str, Any]:
        return {"pos_margin": self.pos_margin, "neg_margin": self.neg_margin, "level": self.level}


class NormalizedSoftmaxProxyLoss(LossBase):
    """Normalized-softmax proxy loss: ``CE(e @ normalize(W).T / temperature, labels[:, level])``.

    Args:
        num_classes: number of training classes; labels must be in ``0 .. num_classes - 1``.
        embedding_dim: D.
        temperature: 0.05 (the HAPPIER / SupRank setting).

    The proxies ``W`` (num_classes, D) are initialised like ``nn.Linear`` (uniform in
    ``+-1/sqrt(D)``). Give them their own optimizer group with :meth:`param_group`.
    The reference set, if passed, is ignored (the loss is per sample).
    """

    takes_ref_embeddings = False

    def __init__(
        self, num_classes: int, embedding_dim: int, temperature: float = 0.05, level: int = 0
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise InputError(f"num_classes ({num_classes}) and embedding_dim ({embedding_dim}) must be >= 1")
        if not temperature > 0:
            raise InputError(f"temperature: must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.temperature = temperature
        self.level = level
        bound = 1.0 / math.sqrt(embedding_dim)
        self.proxies = torch.nn.Parameter(torch.empty(num_classes, embedding_dim).uniform_(-bound, bound))

    def param_group(self, **optimizer_options: Any) -> dict[str, Any]:
        """``{"params": [proxies], **optimizer_options}``, for the optimizer's own group."""
        return {"params": [self.proxies], **optimizer_options}

    def compute(
        self, embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None, ref_labels: Tensor | None
    ) -> Tensor:
        embeddings, labels, _, _ = check_inputs(embeddings, labels)
        if embeddings.size(1) != self.proxies.size(1):
            raise InputError(
                f"embeddings: dimension {embeddings.size(1)} != proxy dimension {self.proxies.size(1)}"
            )
        if not 0 <= self.level < labels.size(1):
            raise InputError(f"level: {self.level} out of range for {labels.size(1)} label columns")
        y = labels[:, self.level].long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise InputError(
                f"labels: class ids must be in 0..{self.num_classes - 1} (got {int(y.min())}.."
                f"{int(y.max())}); map training labels to contiguous ids first"
            )
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = embeddings.to(dtype) @ F.normalize(self.proxies.to(dtype), dim=1).t()
            return F.cross_entropy(logits / self.temperature, y)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.proxies.size(1)}, "
            f"temperature={self.temperature}, level={self.level}"
        )


class WeightedSum(LossBase):
    """``WeightedSum([SupAP(), CalibrationLoss()], [0.9, 0.1])`` -> ``sum_i w_i L_i``.

    The reference set is passed to the losses whose ``takes_ref_embeddings`` is true.
    """

    def __init__(self, losses: Sequence[torch.nn.Module], weights: Sequence[float] = (0.9, 0.1)) -> None:
        super().__init__()
        if len(losses) != len(weights) or not losses:
            raise InputError(f"WeightedSum: {len(losses)} losses but {len(weights)} weights")
        self.losses = torch.nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def compute(
        self, embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None, ref_labels: Tensor | None
    ) -> Tensor:
        total = None
        for w, loss in zip(self.weights, self.losses, strict=True):
            if getattr(loss, "takes_ref_embeddings", True) and ref_embeddings is not None:
                value = loss(embeddings, labels, ref_embeddings, ref_labels)
            else:
                value = loss(embeddings, labels)
            total = w * value if total is None else total + w * value
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
