"""The contrastive loss, the classic pair-based baseline of the benchmark."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "contrastive_loss"]


def contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, pos_margin: float = 0.0, neg_margin: float = 1.0
) -> torch.Tensor:
    r"""Contrastive loss (Hadsell et al. 2006) on Euclidean distances of L2-normalised embeddings.

    .. math:: L = \frac{\sum_{(i,j) \in P} [d_{ij} - m_+]_+}{|\{(i,j) \in P: d_{ij} > m_+\}|}
              + \frac{\sum_{(i,j) \in N} [m_- - d_{ij}]_+}{|\{(i,j) \in N: d_{ij} < m_-\}|}

    over ordered pairs i != j, positives P sharing the finest label (column 0), negatives N not;
    each term is averaged over its non-zero pairs (0 when there are none), as pytorch-metric-
    learning's ``ContrastiveLoss`` with its defaults. embeddings (B, D), labels (B,) or (B, L).
    """
    lab = labels[:, 0] if labels.dim() == 2 else labels
    x = F.normalize(embeddings.float(), dim=-1)
    sq = (2.0 - 2.0 * x @ x.T).clamp(min=0.0)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    d = torch.where(eye, torch.ones_like(sq), sq).sqrt()  # no sqrt(0) on the diagonal
    same = lab[:, None] == lab[None, :]
    pos = (d - pos_margin).clamp(min=0)[same & ~eye]
    neg = (neg_margin - d).clamp(min=0)[~same]

    def avg_nonzero(v: torch.Tensor) -> torch.Tensor:
        n = (v > 0).sum()
        return v.sum() / n.clamp(min=1)

    return avg_nonzero(pos) + avg_nonzero(neg)


class ContrastiveLoss(nn.Module):
    """Module wrapper of :func:`contrastive_loss` (the classic baseline of the benchmark)."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, **_: Any) -> torch.Tensor:
        return contrastive_loss(embeddings, labels, self.pos_margin, self.neg_margin)
