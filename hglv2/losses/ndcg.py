r"""SupNDCG: the SupRank surrogate of NDCG with gain ``2^l - 1`` (``l`` = relevance level).

.. math::

    \mathrm{SupNDCG}_q = \frac{\sum_{k:\ l_k \ge 1} (2^{l_k} - 1) / \log_2(1 + \mathrm{rank}(k))}
                              {\mathrm{IDCG}_q},
    \qquad
    \mathrm{IDCG}_q = \sum_{i=1}^{N} \frac{2^{l_{(i)}} - 1}{\log_2(1 + i)}

``rank`` is the SupRank surrogate rank (exact step for items at least as relevant, surrogate for
less relevant ones), ``l_{(i)}`` the levels sorted in decreasing order (the ideal ranking), over the
full reference set (query included when the batch is its own reference set). Loss: mean over
queries of ``1 - SupNDCG_q``; with ``approximation="exact"`` it is exactly ``1 - NDCG``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hglv2.losses.base import RankLossBase, check_inputs, level_matrix, reduce_queries, similarity
from hglv2.losses.rank import DEFAULT_CHUNK, STEP_DEFAULTS, StepConfig, pair_ranks

__all__ = ["sup_ndcg", "SupNDCG", "ideal_dcg"]


def ideal_dcg(levels: Tensor, num_levels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) ideal DCG of each row of (B, N) levels, gain ``2^l - 1``, from the level counts."""
    N = levels.size(1)
    pos = torch.arange(1, N + 1, device=levels.device, dtype=dtype)
    cum = torch.cat([pos.new_zeros(1), torch.cumsum(1.0 / torch.log2(1.0 + pos), 0)])
    out = torch.zeros(levels.size(0), device=levels.device, dtype=dtype)
    before = torch.zeros(levels.size(0), device=levels.device, dtype=torch.long)
    for lvl in range(num_levels, 0, -1):
        c = (levels == lvl).sum(1)
        out = out + (2.0**lvl - 1.0) * (cum[before + c] - cum[before])
        before = before + c
    return out


def sup_ndcg(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    config: StepConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reduction: str = "mean",
) -> Tensor:
    """``1 - SupNDCG`` averaged over queries (see module docstring). Labels (B, L)."""
    embeddings, labels, ref_embeddings, ref_labels = check_inputs(
        embeddings, labels, ref_embeddings, ref_labels
    )
    scores = similarity(embeddings, ref_embeddings)
    levels = level_matrix(labels, ref_labels)
    pair_q, pair_k, rank, _ = pair_ranks(scores, levels, None, config, chunk_size, need_plus=False)
    gain = torch.pow(2.0, levels[pair_q, pair_k].to(scores.dtype)) - 1.0
    dcg = scores.new_zeros(scores.size(0)).index_add(0, pair_q, gain / torch.log2(1.0 + rank))
    idcg = ideal_dcg(levels, labels.size(1), scores.dtype)
    valid = idcg > 0
    return reduce_queries(dcg / idcg.clamp(min=1e-30), valid, reduction, embeddings)


class SupNDCG(RankLossBase):
    """``SupNDCG()(embeddings, labels, ...)`` -> ``1 - SupNDCG`` (gain ``2^l - 1``)."""

    def __init__(
        self,
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
        self.set_rank_options(approximation, tau, rho, delta, start, offset, chunk_size, reduction)

    functional = staticmethod(sup_ndcg)
