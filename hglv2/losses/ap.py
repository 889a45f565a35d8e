r"""SupAP (SupRank surrogate of Average Precision) and the Smooth-AP baseline.

For a query ``q`` with positive set ``P_q`` in the reference set (the query itself included when
the batch is its own reference set),

.. math::

    \mathrm{SupAP}_q = \frac{1}{|P_q|} \sum_{k \in P_q} \frac{\mathrm{rank}^+(k)}{\mathrm{rank}(k)},
    \qquad \mathcal{L} = \frac{1}{|Q|} \sum_{q \in Q} (1 - \mathrm{SupAP}_q)

with ``rank`` the SupRank surrogate rank and ``rank+`` the exact rank among positives
(:mod:`hglv2.losses.rank`). ``SmoothAP`` (Brown et al., ECCV 2020) uses ``sigma(t / 0.01)`` for
every step of both ranks. Positives are items with the same label in column ``level`` (default 0).
Queries with no positive in the reference set are left out of the mean.
"""

from __future__ import annotations

from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses.base import RankLossBase, check_inputs, level_matrix, reduce_queries, similarity
from hglv2.losses.rank import DEFAULT_CHUNK, STEP_DEFAULTS, StepConfig, pair_ranks

__all__ = ["sup_ap", "SupAP", "SmoothAP"]


def sup_ap(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    level: int = 0,
    config: StepConfig | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reduction: str = "mean",
) -> Tensor:
    """``1 - SupAP`` averaged over queries (see module docstring).

    Args:
        embeddings: (B, D) query embeddings (usually L2-normalised).
        labels: (B,) or (B, L) integer labels; column ``level`` defines the positives.
        ref_embeddings, ref_labels: (N, D) / (N,) or (N, L) reference set; default: the batch.
        config: step functions; ``StepConfig(approximation="exact")`` gives exactly ``1 - AP``.
        chunk_size: score elements processed at once (memory bound).
        reduction: ``"mean"`` (0-d tensor) or ``"none"`` ((B,) per-query losses).
    """
    embeddings, labels, ref_embeddings, ref_labels = check_inputs(
        embeddings, labels, ref_embeddings, ref_labels
    )
    if not 0 <= level < labels.size(1):
        raise InputError(f"level: {level} out of range for labels with {labels.size(1)} columns")
    scores = similarity(embeddings, ref_embeddings)
    levels = level_matrix(labels[:, level : level + 1], ref_labels[:, level : level + 1])
    pair_q, _, rank, rank_plus = pair_ranks(scores, levels, None, config, chunk_size)
    n_pos = levels.sum(1, dtype=scores.dtype)
    ap = scores.new_zeros(scores.size(0)).index_add(0, pair_q, rank_plus / rank)
    valid = n_pos > 0
    ap = ap / n_pos.clamp(min=1)
    return reduce_queries(ap, valid, reduction, embeddings)


class SupAP(RankLossBase):
    """``SupAP()(embeddings, labels, ref_embeddings=None, ref_labels=None)`` -> ``1 - SupAP``.

    Step defaults: :data:`~hglv2.losses.rank.STEP_DEFAULTS` (the SupRank code's).
    ``approximation="exact"`` uses the Heaviside step everywhere (true ``1 - AP``, no gradient).
    """

    def __init__(
        self,
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
        self.set_rank_options(approximation, tau, rho, delta, start, offset, chunk_size, reduction)
        self.level = level

    own_options = ("level",)
    functional = staticmethod(sup_ap)


class SmoothAP(SupAP):
    """Smooth-AP (Brown et al. 2020): every step is ``sigmoid(t / tau)``, ``tau=0.01``."""

    def __init__(
        self,
        tau: float = STEP_DEFAULTS.tau,
        level: int = 0,
        chunk_size: int = DEFAULT_CHUNK,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            tau=tau, level=level, approximation="sigmoid", chunk_size=chunk_size, reduction=reduction
        )

    def extra_repr(self) -> str:
        return f"tau={self.config.tau}, level={self.level}"
