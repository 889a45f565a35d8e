"""Cross-batch memory (XBM, Wang et al. 2020): a FIFO of detached embeddings and their labels.

Every loss accepts the memory contents as its reference set::

    memory = CrossBatchMemory(size=4096, embedding_dim=512, label_columns=3)
    ref, ref_labels = memory(embeddings, labels)      # enqueue (detached), then read
    loss = SupAP()(embeddings, labels, ref_embeddings=ref, ref_labels=ref_labels)

By default the batch is enqueued *before* reading (as in the original XBM code), so the queries
find themselves and their batch positives in the memory; ``enqueue_first=False`` reads first.
Memory: ``size x (D + L)`` values; the contents are returned oldest first. Under DDP, enqueue the
gathered global batch (:func:`hglv2.losses.distributed.gather_batch`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses.base import as_label_matrix

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(torch.nn.Module):
    """FIFO memory of ``size`` (embedding, label row) pairs; see module docstring.

    Args:
        size: capacity (number of items).
        embedding_dim: D.
        label_columns: L (labels are stored as (size, L) int64).
        enqueue_first: enqueue the batch before returning the contents (XBM default).
    """

    def __init__(
        self, size: int, embedding_dim: int, label_columns: int = 1, enqueue_first: bool = True
    ) -> None:
        super().__init__()
        if size < 1 or embedding_dim < 1 or label_columns < 1:
            raise InputError(
                f"CrossBatchMemory: size ({size}), embedding_dim ({embedding_dim}) and "
                f"label_columns ({label_columns}) must be >= 1"
            )
        self.size = size
        self.enqueue_first = enqueue_first
        self.register_buffer("embeddings", torch.zeros(size, embedding_dim))
        self.register_buffer("labels", torch.zeros(size, label_columns, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def reset(self) -> None:
        """Empty the memory."""
        self.ptr.zero_()
        self.count.zero_()

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        """Add a batch (detached), overwriting the oldest items when full."""
        labels = as_label_matrix(labels)
        if embeddings.ndim != 2 or embeddings.size(1) != self.embeddings.size(1):
            raise InputError(
                f"embeddings: expected shape (B, {self.embeddings.size(1)}), got {tuple(embeddings.shape)}"
            )
        if labels.size(1) != self.labels.size(1) or labels.size(0) != embeddings.size(0):
            raise InputError(
                f"labels: expected shape ({embeddings.size(0)}, {self.labels.size(1)}), "
                f"got {tuple(labels.shape)}"
            )
        emb = embeddings.detach()[-self.size :].to(self.embeddings.dtype)
        lab = labels[-self.size :].to(self.labels.device, torch.long)
        n = emb.size(0)
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.embeddings.index_copy_(0, idx.to(self.embeddings.device), emb.to(self.embeddings.device))
        self.labels.index_copy_(0, idx.to(self.labels.device), lab)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def get(self) -> tuple[Tensor, Tensor]:
        """Copies of the stored ``(embeddings (M, D), labels (M, L))``, oldest first."""
        m = int(self.count)
        first = (int(self.ptr) - m) % self.size
        idx = (first + torch.arange(m, device=self.embeddings.device)) % self.size
        return self.embeddings.index_select(0, idx), self.labels.index_select(0, idx)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.enqueue_first:
            self.enqueue(embeddings, labels)
            return self.get()
        out = self.get()
        self.enqueue(embeddings, labels)
        return out

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, embedding_dim={self.embeddings.size(1)}, "
            f"label_columns={self.labels.size(1)}, enqueue_first={self.enqueue_first}"
        )
