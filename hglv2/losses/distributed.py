"""All-gather for rank losses under DDP: every rank sees the global batch as its reference set.

``gather_batch(embeddings, labels)`` concatenates the shards of all ranks (rank order) with
gradients flowing back to each rank's local shard: the backward pass sums, over ranks, the
gradients of every rank's loss with respect to the gathered tensor and keeps the local slice. With
each rank computing ``loss(local_embeddings, local_labels, ref_embeddings=all, ref_labels=all)``
and DDP averaging the gradients, training matches one process on the concatenated batch (mean over
queries): the local embedding gradient is ``world_size`` times that of the global mean loss, and
DDP's average divides it back. Shards may have different sizes. Without an initialised process
group (or with one rank) the inputs are returned unchanged. Works with gloo (CPU) and nccl.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from hglv2.losses.base import LossBase, as_label_matrix

__all__ = ["all_gather_embeddings", "all_gather_labels", "gather_batch", "DistributedLoss"]


def _active(group: object | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _gather_padded(tensor: Tensor, group: object | None) -> tuple[list[Tensor], list[int]]:
    world = dist.get_world_size(group)
    n = torch.tensor([tensor.size(0)], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s) for s in sizes]
    m = max(counts)
    padded = tensor
    if tensor.size(0) < m:
        pad = tensor.new_zeros((m - tensor.size(0),) + tuple(tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [o[:c] for o, c in zip(out, counts, strict=True)], counts


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group: object | None) -> Tensor:  # type: ignore[override]
        parts, counts = _gather_padded(tensor, group)
        ctx.group = group
        ctx.counts = counts
        ctx.rank = dist.get_rank(group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None


def all_gather_embeddings(embeddings: Tensor, group: object | None = None) -> Tensor:
    """(sum_r B_r, D) embeddings of all ranks, differentiable w.r.t. the local shard."""
    if not _active(group):
        return embeddings
    return _AllGather.apply(embeddings, group)


def all_gather_labels(labels: Tensor, group: object | None = None) -> Tensor:
    """(sum_r B_r, L) labels of all ranks (no gradient)."""
    if not _active(group):
        return labels
    parts, _ = _gather_padded(labels, group)
    return torch.cat(parts)


def gather_batch(embeddings: Tensor, labels: Tensor, group: object | None = None) -> tuple[Tensor, Tensor]:
    """``(all_embeddings, all_labels)``: the global batch, gradients flowing to the local shard."""
    labels = as_label_matrix(labels).to(embeddings.device)
    return all_gather_embeddings(embeddings, group), all_gather_labels(labels, group)


class DistributedLoss(LossBase):
    """Wrap a loss so the local queries are ranked against the global (gathered) batch.

    ``DistributedLoss(SupAP())(embeddings, labels)``; an explicit reference set (e.g. a memory
    bank that already holds the global batch) is passed through unchanged.
    """

    def __init__(self, loss: torch.nn.Module, group: object | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.group = group

    def compute(
        self, embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None, ref_labels: Tensor | None
    ) -> Tensor:
        if ref_embeddings is None:
            ref_embeddings, ref_labels = gather_batch(embeddings, labels, self.group)
        return self.loss(embeddings, labels, ref_embeddings, ref_labels)
