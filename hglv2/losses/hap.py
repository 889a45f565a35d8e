r"""SupHAP: the SupRank surrogate of Hierarchical Average Precision (H-AP, HAPPIER).

With relevance levels ``l_j`` (number of equal label columns) and per-query relevances
``rel_j = rel_q(l_j)`` (``pop``: ``w(l) / N_q(l)``; ``map``: ``sum_{m<=l} w(m) / N_q(>=m)``;
``w(l) = l**alpha``; the query counts as its own most relevant item, as in the HAPPIER training
code),

.. math::

    \mathrm{H\text{-}rank}(k) = \mathrm{rel}_k + \sum_{j \ne k} H(s_j - s_k)\,
        \min(\mathrm{rel}_j, \mathrm{rel}_k),
    \qquad
    \mathrm{SupHAP}_q = \frac{1}{\sum_j \mathrm{rel}_j}
        \sum_{k:\ \mathrm{rel}_k > 0} \frac{\mathrm{H\text{-}rank}(k)}{\mathrm{rank}(k)}

``rank(k)`` is the SupRank surrogate rank (exact step for items at least as relevant as ``k``,
surrogate for less relevant ones); ``H-rank`` is exact and gradient-free. The loss is the mean over
queries of ``1 - SupHAP_q``; with ``approximation="exact"`` it is exactly ``1 - H-AP``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hglv2.losses.base import (
    RankLossBase,
    check_inputs,
    level_matrix,
    reduce_queries,
    relevance_table,
    similarity,
)
from hglv2.losses.rank import DEFAULT_CHUNK, STEP_DEFAULTS, StepConfig, pair_ranks
from hglv2.relevance import check_relevance

__all__ = ["sup_hap", "SupHAP"]


def sup_hap(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    relevance: str = "pop",
    alpha: float | Sequence[float] = 1.0,
    config: StepConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reduction: str = "mean",
) -> Tensor:
    """``1 - SupHAP`` averaged over queries (see module docstring).

    Args:
        embeddings: (B, D) query embeddings.
        labels: (B, L) integer labels, column 0 the finest level ((B,) means L = 1).
        ref_embeddings, ref_labels: (N, D) / (N, L) reference set; default: the batch.
        relevance: ``"pop"`` or ``"map"``; ``alpha``: level weight exponent (or L weights).
        config: step functions; ``approximation="exact"`` gives exactly ``1 - H-AP``.
        reduction: ``"mean"`` or ``"none"``.
    """
    embeddings, labels, ref_embeddings, ref_labels = check_inputs(
        embeddings, labels, ref_embeddings, ref_labels
    )
    scores = similarity(embeddings, ref_embeddings)
    levels = level_matrix(labels, ref_labels)
    table, norm = relevance_table(levels, labels.size(1), relevance, alpha, scores.dtype)
    pair_q, _, rank, hrank = pair_ranks(scores, levels, table, config, chunk_size)
    hap = scores.new_zeros(scores.size(0)).index_add(0, pair_q, hrank / rank)
    valid = norm > 0
    hap = hap / norm.clamp(min=1e-30)
    return reduce_queries(hap, valid, reduction, embeddings)


class SupHAP(RankLossBase):
    """``SupHAP(relevance="pop", alpha=1.0)(embeddings, labels, ...)`` -> ``1 - SupHAP``.

    Step defaults: :data:`~hglv2.losses.rank.STEP_DEFAULTS` (the SupRank code's).
    """

    def __init__(
        self,
        relevance: str = "pop",
        alpha: float | Sequence[float] = 1.0,
        tau: float = STEP_DEFAULTS.tau,
        rho: float = STEP_DEFAULTS.rho,
        delta: float = STEP_DEFAULTS.delta,
        start: float = STEP_DEFAULTS.start,
        offset: float | None = STEP_DEFAULTS.offset,
        approximation: str = "suprank",
        chunk_size: int = DEFAULT_CHUNK,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.relevance = check_relevance(relevance)
        self.alpha = alpha
        self.set_rank_options(approximation, tau, rho, delta, start, offset, chunk_size, reduction)

    own_options = ("relevance", "alpha")
    functional = staticmethod(sup_hap)
