"""Exact retrieval metrics: binary per hierarchy level (AP, mAP@R, mAP@100, R@k, P@k) and
hierarchical (H-AP, NDCG, ASI), a streaming evaluator, the official GLDv2 metrics and the
Revisited Oxford/Paris protocol.

>>> from hglv2.metrics import evaluate
>>> res = evaluate(embeddings, labels)          # labels (N, L), column 0 finest
>>> res["H-AP"], res["AP_level0"], res["R@1_level0"]
"""

from hglv2.metrics.evaluate import evaluate
from hglv2.metrics.labels import pair_levels, relevance_table
from hglv2.metrics.ranking import (
    asi,
    average_precision,
    hierarchical_ap,
    map_at_k,
    map_at_r,
    ndcg,
    precision_at_k,
    rank_relevant,
    recall_at_k,
)

__all__ = [
    "asi",
    "average_precision",
    "evaluate",
    "hierarchical_ap",
    "map_at_k",
    "map_at_r",
    "ndcg",
    "pair_levels",
    "precision_at_k",
    "rank_relevant",
    "recall_at_k",
    "relevance_table",
]
