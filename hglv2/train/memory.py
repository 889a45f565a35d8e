r"""The memory bank in training: a cross-batch memory (XBM) whose loss is averaged with the batch loss.

As the authors run it (``suprank/engine/base_training_loop.py`` and ``suprank/config/memory/*.yaml``
of elias-ramzi/SupRank): every step enqueues the batch (detached) into a FIFO of ``size`` items
*before* reading it (:class:`hglv2.losses.CrossBatchMemory`'s default, so the queries find their
batch positives in it); from epoch ``start_epoch`` on (their ``activate: 5``; here also a
``start_step``) the loss becomes

.. math:: L = \frac{w_b\, \mathcal{L}(E, Y) + w_m\, \mathcal{L}(E, Y; M_E, M_Y)}{w_b + w_m}

with the same criterion on the batch and on the memory contents as reference set (their
``factor_true_loss`` = ``batch_weight`` and ``factor`` = ``weight``, both 1). Before the start the
memory fills but the loss is the batch loss alone. Under DDP the memory holds the gathered global
batches (the same on every process), so W processes compute what one process computes.

Config: ``loss.memory: {size, weight: 1.0, batch_weight: 1.0, start_epoch: 0, start_step: 0}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from hglv2.config import MEMORY_DEFAULTS, check_memory_spec
from hglv2.errors import InputError
from hglv2.losses.memory import CrossBatchMemory

__all__ = ["MemoryBank", "build_memory_bank"]


class MemoryBank(nn.Module):
    """XBM for training; see the module docstring.

    Args:
        size, embedding_dim, label_columns: of the FIFO (:class:`CrossBatchMemory`).
        weight, batch_weight: ``w_m`` and ``w_b`` of the module formula (``w_b + w_m > 0``).
        start_epoch, start_step: the memory loss counts from the first step with
            ``epoch >= start_epoch`` and ``step >= start_step`` (0-based).
    """

    def __init__(
        self,
        size: int,
        embedding_dim: int,
        label_columns: int,
        weight: float = 1.0,
        batch_weight: float = 1.0,
        start_epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        self.memory = CrossBatchMemory(size, embedding_dim, label_columns, enqueue_first=True)
        self.weight = float(weight)
        self.batch_weight = float(batch_weight)
        self.start_epoch = int(start_epoch)
        self.start_step = int(start_step)

    def active(self, epoch: int, step: int) -> bool:
        return epoch >= self.start_epoch and step >= self.start_step

    def loss(
        self, criterion: nn.Module, embeddings: Tensor, labels: Tensor, epoch: int, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Enqueue the batch, then the batch loss, averaged with the memory loss once active.

        Returns ``(loss, logs)`` with the logs ``batch_loss`` and ``memory_loss`` (when active).
        """
        mem_emb, mem_labels = self.memory(embeddings, labels)
        batch_loss = criterion(embeddings, labels)
        logs = {"batch_loss": float(batch_loss.detach())}
        if not self.active(epoch, step):
            return batch_loss, logs
        mem_loss = criterion(
            embeddings, labels, ref_embeddings=mem_emb.to(embeddings.dtype), ref_labels=mem_labels
        )
        logs["memory_loss"] = float(mem_loss.detach())
        total = (self.batch_weight * batch_loss + self.weight * mem_loss) / (self.batch_weight + self.weight)
        return total, logs

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, batch_weight={self.batch_weight}, "
            f"start_epoch={self.start_epoch}, start_step={self.start_step}"
        )


def build_memory_bank(
    spec: Mapping[str, Any] | None, criterion: nn.Module, embedding_dim: int, label_columns: int
) -> MemoryBank | None:
    """The ``loss.memory`` section as a :class:`MemoryBank` (None when the section is null).

    Raises:
        InputError: unknown keys, bad values, or a criterion that takes no reference set (the
            proxy and per-sample losses, which the authors' loop skips silently).
    """
    if spec is None:
        return None
    check_memory_spec(spec)
    s = {**MEMORY_DEFAULTS, **spec}
    if not getattr(criterion, "takes_ref_embeddings", True):
        raise InputError(f"loss.memory: loss {type(criterion).__name__} takes no reference set")
    return MemoryBank(
        int(s["size"]),
        embedding_dim,
        label_columns,
        s["weight"],
        s["batch_weight"],
        s["start_epoch"],
        s["start_step"],
    )
