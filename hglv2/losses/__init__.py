"""Rank losses: the SupRank family (SupAP, SupRecall, SupHAP, SupNDCG), Smooth-AP, the
decomposability losses, the contrastive baseline, a cross-batch memory, a distributed all-gather
and the registry that maps config names to losses (:mod:`hglv2.losses.registry`).

Every loss has the call signature ``loss(embeddings, labels, ref_embeddings=None, ref_labels=None)``
(pytorch-metric-learning style) and the rank losses return the mean over queries of
``1 - surrogate metric`` as a 0-d tensor. The functional cores (``sup_ap``, ``sup_hap``, ...) take
the same arguments plus the options as keywords.
"""

from hglv2.losses.ap import SmoothAP, SupAP, sup_ap
from hglv2.losses.contrastive import ContrastiveLoss, contrastive_loss
from hglv2.losses.decomposability import (
    CalibrationLoss,
    NormalizedSoftmaxProxyLoss,
    WeightedSum,
    calibration_loss,
)
from hglv2.losses.distributed import DistributedLoss, all_gather_embeddings, all_gather_labels, gather_batch
from hglv2.losses.hap import SupHAP, sup_hap
from hglv2.losses.memory import CrossBatchMemory
from hglv2.losses.ndcg import SupNDCG, sup_ndcg
from hglv2.losses.rank import STEP_DEFAULTS, StepConfig, heaviside, pair_ranks, sigmoid_step, suprank_step
from hglv2.losses.recall import SupRecall, sup_recall
from hglv2.losses.registry import LOSSES, build_loss, loss_factory, loss_names, register_loss

__all__ = [
    "SupAP",
    "SupHAP",
    "SupRecall",
    "SupNDCG",
    "SmoothAP",
    "CalibrationLoss",
    "NormalizedSoftmaxProxyLoss",
    "WeightedSum",
    "CrossBatchMemory",
    "DistributedLoss",
    "gather_batch",
    "all_gather_embeddings",
    "all_gather_labels",
    "sup_ap",
    "sup_hap",
    "sup_recall",
    "sup_ndcg",
    "calibration_loss",
    "STEP_DEFAULTS",
    "StepConfig",
    "pair_ranks",
    "suprank_step",
    "sigmoid_step",
    "heaviside",
    "ContrastiveLoss",
    "contrastive_loss",
    "LOSSES",
    "build_loss",
    "loss_factory",
    "loss_names",
    "register_loss",
]
