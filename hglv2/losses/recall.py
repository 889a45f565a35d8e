r"""SupRecall@k: the SupRank surrogate of the recall rate at several cut-offs.

.. math::

    \mathrm{SupRecall}_q = \frac{1}{|K|} \sum_{k \in K}
        \frac{\sum_{p \in P_q} \sigma\big((k - \mathrm{rank}(p)) / T\big)}{\min(|P_q|, k)}

with ``rank`` the SupRank surrogate rank, ``K = (1, 2, 4, 8, 16)`` and the sigmoid temperature
``T = 1`` (the SupRank code's defaults). Positives: same label in column ``level`` (default 0),
query itself included when the batch is the reference set. Loss: mean over queries of
``1 - SupRecall_q``. (Not an upper bound of ``1 - R@k``: the outer sigmoid is a smooth count.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses.base import RankLossBase, check_inputs, level_matrix, reduce_queries, similarity
from hglv2.losses.rank import DEFAULT_CHUNK, STEP_DEFAULTS, StepConfig, pair_ranks

__all__ = ["sup_recall", "SupRecall"]


def sup_recall(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    at_k: Sequence[int] = (1, 2, 4, 8, 16),
    temperature: float = 1.0,
    level: int = 0,
    config: StepConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reduction: str = "mean",
) -> Tensor:
    """``1 - SupRecall`` averaged over queries (see module docstring)."""
    embeddings, labels, ref_embeddings, ref_labels = check_inputs(
        embeddings, labels, ref_embeddings, ref_labels
    )
    ks = [int(k) for k in at_k]
    if not ks or min(ks) < 1:
        raise InputError(f"at_k: expected positive integers, got {list(at_k)}")
    if not temperature > 0:
        raise InputError(f"temperature: must be > 0, got {temperature}")
    if not 0 <= level < labels.size(1):
        raise InputError(f"level: {level} out of range for labels with {labels.size(1)} columns")
    scores = similarity(embeddings, ref_embeddings)
    levels = level_matrix(labels[:, level : level + 1], ref_labels[:, level : level + 1])
    pair_q, _, rank, _ = pair_ranks(scores, levels, None, config, chunk_size, need_plus=False)
    n_pos = levels.sum(1, dtype=scores.dtype)
    recall = scores.new_zeros(scores.size(0))
    for k in ks:
        hits = scores.new_zeros(scores.size(0)).index_add(0, pair_q, torch.sigmoid((k - rank) / temperature))
        recall = recall + hits / n_pos.clamp(min=1, max=k)
    recall = recall / len(ks)
    return reduce_queries(recall, n_pos > 0, reduction, embeddings)


class SupRecall(RankLossBase):
    """``SupRecall(at_k=(1, 2, 4, 8, 16), temperature=1.0)(embeddings, labels, ...)``."""

    def __init__(
        self,
        at_k: Sequence[int] = (1, 2, 4, 8, 16),
        temperature: float = 1.0,
        tau: float = STEP_DEFAULTS.tau,
        rho: float = STEP_DEFAULTS.rho,
        delta: float = STEP_DEFAULTS.delta,
        start: float = STEP_DEFAULTS.start,
        offset: float | None = STEP_DEFAULTS.offset,
        level: int = 0,
        approximation: str = "suprank",
        chunk_size: int = DEFAULT_CHUNK,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.at_k = tuple(int(k) for k in at_k)
        self.temperature = temperature
        self.level = level
        self.set_rank_options(approximation, tau, rho, delta, start, offset, chunk_size, reduction)

    own_options = ("at_k", "temperature", "level")
    functional = staticmethod(sup_recall)
