r"""Baselines through pytorch-metric-learning (pml): thin adapters to our loss call signature.

The comparison rows of the SupRank paper (triplet, FastAP, multi-similarity, ArcFace, ProxyNCA,
contrastive) are pml's losses, not rewritten here. Each adapter only maps

``loss(embeddings, labels, ref_embeddings=None, ref_labels=None)`` (labels (B,) or (B, L))

to pml's ``loss(embeddings, labels_1d, ref_emb=..., ref_labels=...)``, with the labels' column
``level`` (0, the finest, by default), and is registered under ``pml.<Name>`` in the loss
registry (config key ``loss.name``; :mod:`hglv2.losses.registry` imports this module on first use,
so pytorch-metric-learning, the optional extra ``pml``, is needed only then). Hyper-parameters
default to the authors' configs (``suprank/config/loss/<file>.yaml`` of elias-ramzi/SupRank, named
per class) in pml's units.

Proxy losses (:class:`PMLArcFaceLoss`, :class:`PMLProxyNCALoss`) own learnable class proxies: the
trainer gives them their own optimizer (:meth:`PMLProxyAdapter.param_group`), and when built with
``class_ids`` (the sorted training class ids, filled in by the trainer) they map dataset labels
to the contiguous ``0 .. num_classes - 1`` that pml expects. Per-sample losses ignore a reference
set (``takes_ref_embeddings = False``, as in the authors' code, so a memory bank does not apply).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

try:
    from pytorch_metric_learning import distances, losses, miners
except ModuleNotFoundError as exc:  # the optional extra `pml`
    if (exc.name or "").split(".")[0] != "pytorch_metric_learning":
        raise
    raise ModuleNotFoundError(
        "pytorch-metric-learning is needed for the pml.* losses: pip install 'hglv2[pml]'", name=exc.name
    ) from None
from torch import Tensor, nn

from hglv2.errors import InputError
from hglv2.losses.base import check_inputs

__all__ = [
    "PMLArcFaceLoss",
    "PMLContrastiveLoss",
    "PMLFastAPLoss",
    "PMLMultiSimilarityLoss",
    "PMLAdapter",
    "PMLProxyAdapter",
    "PMLProxyNCALoss",
    "PMLTripletLoss",
]


class PMLAdapter(nn.Module):
    """Calls the pml loss ``loss`` (optionally with ``miner``) on label column ``level``.

    Without a reference set pml's own batch semantics apply (a query is not its own pair); with
    one, pml's ``ref_emb`` / ``ref_labels`` (every (query, reference) pair, as the authors' memory
    bank calls it).
    """

    takes_ref_embeddings = True

    def __init__(self, loss: nn.Module, level: int = 0, miner: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(level, int) or level < 0:
            raise InputError(f"level: must be an integer >= 0, got {level!r}")
        self.loss = loss
        self.miner = miner
        self.level = level

    def _column(self, labels: Tensor) -> Tensor:
        if self.level >= labels.size(1):
            raise InputError(f"level: {self.level} out of range for labels with {labels.size(1)} columns")
        return labels[:, self.level]

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        has_ref = ref_embeddings is not None
        if has_ref and not self.takes_ref_embeddings:
            raise InputError(f"{type(self).__name__}: this loss does not take a reference set")
        emb, lab, ref, ref_lab = check_inputs(embeddings, labels, ref_embeddings, ref_labels)
        y = self._column(lab)
        if not has_ref:
            tuples = self.miner(emb, y) if self.miner is not None else None
            return self.loss(emb, y, tuples)
        ry = self._column(ref_lab)
        tuples = self.miner(emb, y, ref, ry) if self.miner is not None else None
        return self.loss(emb, y, tuples, ref_emb=ref, ref_labels=ry)

    def extra_repr(self) -> str:
        return f"level={self.level}"


class PMLProxyAdapter(PMLAdapter):
    """A pml loss with class proxies; see the module docstring (``class_ids``, ``param_group``)."""

    takes_ref_embeddings = False

    def __init__(
        self,
        loss: nn.Module,
        num_classes: int,
        level: int = 0,
        class_ids: Sequence[int] | Tensor | None = None,
    ):
        super().__init__(loss, level)
        self.num_classes = num_classes
        ids = None
        if class_ids is not None:
            ids = torch.as_tensor(class_ids, dtype=torch.long).flatten()
            if ids.numel() != self.num_classes:
                raise InputError(f"class_ids: {ids.numel()} ids for num_classes={self.num_classes}")
            if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
                raise InputError("class_ids: must be sorted and unique")
        self.register_buffer("class_ids", ids, persistent=False)

    def param_group(self, **optimizer_options: Any) -> dict[str, Any]:
        """``{"params": [the proxies], **optimizer_options}``, for the optimizer's own group."""
        return {"params": [p for p in self.loss.parameters() if p.requires_grad], **optimizer_options}

    def _column(self, labels: Tensor) -> Tensor:
        y = super()._column(labels).long().contiguous()
        if self.class_ids is not None:
            ids = self.class_ids.to(y.device)
            dense = torch.searchsorted(ids, y).clamp(max=max(ids.numel() - 1, 0))
            unknown = ids[dense] != y if ids.numel() else torch.ones_like(y, dtype=torch.bool)
            if bool(unknown.any()):
                raise InputError(f"labels: class id {int(y[unknown][0])} has no proxy (not a training class)")
            y = dense
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise InputError(
                f"labels: class ids must be in 0..{self.num_classes - 1} (got {int(y.min())}..{int(y.max())})"
            )
        return y


class PMLTripletLoss(PMLAdapter):
    """pml ``TripletMarginLoss`` on dot-product similarities, all triplets of the batch.

    Authors (``triplet.yaml``, ``losses/triplet_loss.py``): margin 0.05, ``DotProductSimilarity``;
    ``mining=True`` is their ``triplet_mining.yaml`` (pml ``BatchEasyHardMiner``).
    """

    def __init__(self, margin: float = 0.05, mining: bool = False, level: int = 0) -> None:
        loss = losses.TripletMarginLoss(margin=margin, distance=distances.DotProductSimilarity())
        super().__init__(loss, level, miners.BatchEasyHardMiner() if mining else None)


class PMLContrastiveLoss(PMLAdapter):
    """pml ``ContrastiveLoss`` with pml's defaults (Euclidean distance of normalised embeddings,
    ``pos_margin`` 0, ``neg_margin`` 1, each term averaged over its non-zero pairs)."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, level: int = 0) -> None:
        super().__init__(losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), level)


class PMLMultiSimilarityLoss(PMLAdapter):
    """pml ``MultiSimilarityLoss``; alpha 2, beta 50, base 0.5 (pml's defaults, the MS paper's
    values; the authors' repository has no multi-similarity config)."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, level: int = 0) -> None:
        super().__init__(losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base), level)


class PMLFastAPLoss(PMLAdapter):
    """pml ``FastAPLoss``, 10 bins (authors' ``fastap.yaml`` / ``losses/fast_ap_loss.py``: pml's
    default). pml's FastAP takes no reference set, so neither does this adapter."""

    takes_ref_embeddings = False

    def __init__(self, num_bins: int = 10, level: int = 0) -> None:
        super().__init__(losses.FastAPLoss(num_bins=num_bins), level)


class PMLArcFaceLoss(PMLProxyAdapter):
    """pml ``ArcFaceLoss``: scale 30, additive angular margin 0.5 rad (authors' ``arcface.yaml``;
    ``arcface_LM.yaml`` for landmarks and ``arcface_sop.yaml`` use 0.3 rad). pml takes the margin
    in **degrees**: ``margin`` here is pml's (default ``degrees(0.5)`` = 28.65)."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = math.degrees(0.5),
        scale: float = 30.0,
        level: int = 0,
        class_ids: Sequence[int] | Tensor | None = None,
    ) -> None:
        _check_proxy_args(num_classes, embedding_dim)
        loss = losses.ArcFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale)
        super().__init__(loss, num_classes, level, class_ids)


class PMLProxyNCALoss(PMLProxyAdapter):
    r"""pml ``ProxyNCALoss`` with ``softmax_scale`` 9, i.e. ProxyNCA++ as the authors run it
    (``proxy_nca_pp.yaml``, ``losses/proxy_nca_pp_loss.py``: scale 3 on the normalised embeddings
    and proxies before squared distances, temperature 1/9):

    .. math:: L = -\log \frac{\exp(-9 \|\hat x - \hat p_y\|^2)}{\sum_c \exp(-9 \|\hat x - \hat p_c\|^2)}
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        softmax_scale: float = 9.0,
        level: int = 0,
        class_ids: Sequence[int] | Tensor | None = None,
    ) -> None:
        _check_proxy_args(num_classes, embedding_dim)
        loss = losses.ProxyNCALoss(num_classes, embedding_dim, softmax_scale=softmax_scale)
        super().__init__(loss, num_classes, level, class_ids)


def _check_proxy_args(num_classes: int, embedding_dim: int) -> None:
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise InputError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
    if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
        raise InputError(f"embedding_dim: must be an integer >= 1, got {embedding_dim!r}")
