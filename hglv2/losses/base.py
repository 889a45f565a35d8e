"""Shared plumbing of the rank losses: input checks, relevance levels, relevance tables, reduction.

Conventions (DESIGN.md): labels are integers of shape (B,) or (B, L), column 0 the finest level.
The relevance *level* of a (query, item) pair is the number of equal label columns (0 = negative);
negative labels mean "unknown" and match nothing.
When no reference set is given, the batch itself is the reference set and the query counts as its
own positive (the SupRank/HAPPIER reference code's quick path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hglv2.errors import InputError
from hglv2.losses.rank import StepConfig
from hglv2.relevance import check_relevance, level_weights, pair_levels, relevance_columns

__all__ = [
    "LossBase",
    "RankLossBase",
    "as_label_matrix",
    "check_inputs",
    "pml_arguments",
    "level_matrix",
    "relevance_table",
    "reduce_queries",
]


def as_label_matrix(labels: object, name: str = "labels") -> Tensor:
    """Return ``labels`` as an integer tensor of shape (B, L); (B,) becomes (B, 1).

    Raises:
        InputError: labels are not integers, or not 1-D/2-D.
    """
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name}: cannot be read as an integer tensor ({exc})") from None
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    if labels.ndim == 1:
        labels = labels.unsqueeze(1)
    if labels.ndim != 2 or labels.size(1) < 1:
        raise InputError(f"{name}: expected shape (B,) or (B, L), got {tuple(labels.shape)}")
    return labels


def _check_embeddings(emb: object, name: str) -> Tensor:
    if not isinstance(emb, Tensor):
        raise InputError(f"{name}: expected a torch tensor, got {type(emb).__name__}")
    if not emb.is_floating_point():
        raise InputError(f"{name}: expected floating-point embeddings, got dtype {emb.dtype}")
    if emb.ndim != 2:
        raise InputError(f"{name}: expected shape (B, D), got {tuple(emb.shape)}")
    if emb.numel() and not bool(torch.isfinite(emb.detach()).all()):
        bad = (~torch.isfinite(emb.detach())).any(1).nonzero()[0, 0].item()
        raise InputError(f"{name}: row {bad} contains NaN or inf")
    return emb


def check_inputs(
    embeddings: Tensor,
    labels: object,
    ref_embeddings: Tensor | None = None,
    ref_labels: object | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate a loss call and return ``(embeddings, labels, ref_embeddings, ref_labels)``.

    Labels come back as (B, L) / (N, L) int tensors on the embeddings' device; without a reference
    set the batch is its own reference set.

    Raises:
        InputError: wrong dtypes, shapes that do not match, NaN/inf embeddings, or only one of
            ``ref_embeddings`` / ``ref_labels`` given.
    """
    embeddings = _check_embeddings(embeddings, "embeddings")
    labels = as_label_matrix(labels, "labels").to(embeddings.device)
    if labels.size(0) != embeddings.size(0):
        raise InputError(f"labels: {labels.size(0)} rows but embeddings has {embeddings.size(0)} rows")
    if (ref_embeddings is None) != (ref_labels is None):
        raise InputError("ref_embeddings and ref_labels must be given together")
    if ref_embeddings is None:
        return embeddings, labels, embeddings, labels
    ref_embeddings = _check_embeddings(ref_embeddings, "ref_embeddings")
    ref_labels = as_label_matrix(ref_labels, "ref_labels").to(embeddings.device)
    if ref_labels.size(0) != ref_embeddings.size(0):
        raise InputError(
            f"ref_labels: {ref_labels.size(0)} rows but ref_embeddings has {ref_embeddings.size(0)} rows"
        )
    if ref_embeddings.size(1) != embeddings.size(1):
        raise InputError(
            f"ref_embeddings: dimension {ref_embeddings.size(1)} != embeddings dimension {embeddings.size(1)}"
        )
    if ref_labels.size(1) != labels.size(1):
        raise InputError(f"ref_labels: {ref_labels.size(1)} label columns but labels has {labels.size(1)}")
    if ref_embeddings.device != embeddings.device:
        raise InputError(f"ref_embeddings on {ref_embeddings.device} but embeddings on {embeddings.device}")
    return embeddings, labels, ref_embeddings, ref_labels


def level_matrix(labels: Tensor, ref_labels: Tensor) -> Tensor:
    """Relevance levels (:func:`hglv2.relevance.pair_levels`) as a (B, N) int8 tensor.

    Args:
        labels: (B, L) integer labels.
        ref_labels: (N, L) integer labels.

    Returns:
        (B, N) int8 tensor with values in 0..L (0 = negative). Built column by column, so peak
        memory is O(B x N) bytes.
    """
    out = torch.zeros(labels.size(0), ref_labels.size(0), dtype=torch.int8, device=labels.device)
    return pair_levels(labels, ref_labels, out)


def relevance_table(
    levels: Tensor,
    num_levels: int,
    relevance: str = "pop",
    alpha: float | Sequence[float] = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Per-query relevance of each level (:mod:`hglv2.relevance`), the query counted as its own item
    as in the HAPPIER training code.

    Args:
        levels: (B, N) int8 relevance levels (see :func:`level_matrix`).
        num_levels: L, the number of label columns.
        relevance: ``"pop"`` or ``"map"``; ``alpha``: level weight exponent (or L weights).

    Returns:
        ``(table, norm)``: (B, L + 1) relevance per level and (B,) sum of the relevances of the
        reference items (the H-AP normaliser), both in ``dtype``.
    """
    check_relevance(relevance)
    weights = level_weights(num_levels, alpha).tolist()
    counts = torch.stack([(levels == lvl).sum(1) for lvl in range(num_levels + 1)], dim=1).to(dtype)
    table = torch.stack(relevance_columns(counts.unbind(1), weights, relevance), dim=1)
    norm = (table * counts).sum(1)
    return table, norm


def reduce_queries(per_query_metric: Tensor, valid: Tensor, reduction: str, anchor: Tensor) -> Tensor:
    """Turn per-query metric values into ``1 - metric``, averaged over the valid queries.

    Queries without any positive in the reference set are *left out* of the mean (their metric is
    undefined); if no query is valid the loss is ``0`` (still connected to the graph through
    ``anchor`` so ``backward()`` works). ``reduction="none"`` returns the (B,) per-query losses,
    0 for invalid queries.
    """
    loss = torch.where(valid, 1.0 - per_query_metric, torch.zeros_like(per_query_metric))
    if reduction == "none":
        return loss
    if reduction != "mean":
        raise InputError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    n_valid = valid.sum()
    if int(n_valid) == 0:
        return anchor.sum() * 0.0
    return loss.sum() / n_valid


def similarity(embeddings: Tensor, ref_embeddings: Tensor) -> Tensor:
    """(B, N) dot-product scores in float32 (float64 kept), computed outside autocast.

    bf16/fp16 inputs (or an active autocast region) are upcast, so rank sums run in float32.
    """
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        return embeddings.to(dtype) @ ref_embeddings.to(dtype).t()


def pml_arguments(
    loss_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Accept pytorch-metric-learning's call spelling, or say clearly why not.

    pytorch-metric-learning calls ``loss(embeddings, labels, indices_tuple=None, ref_emb=None,
    ref_labels=None)``. Here ``ref_emb`` is an alias of ``ref_embeddings``; a miner's
    ``indices_tuple`` (by keyword, or a tuple where ``ref_embeddings`` goes) is refused with an
    :class:`~hglv2.errors.InputError`: a rank loss ranks every reference item for each query, so
    there is no subset of pairs to mine. ``indices_tuple=None`` is accepted.
    """
    if "ref_emb" in kwargs:
        if kwargs.get("ref_embeddings") is not None:
            raise InputError(f"{loss_name}: give ref_embeddings or its alias ref_emb, not both")
        kwargs = dict(kwargs)
        kwargs["ref_embeddings"] = kwargs.pop("ref_emb")
    mined = kwargs.get("indices_tuple")
    if mined is None and len(args) > 2 and isinstance(args[2], (tuple, list)):
        mined = args[2]
    if mined is not None:
        raise InputError(
            f"{loss_name}: indices_tuple (a pytorch-metric-learning miner's pairs or triplets) is not "
            "supported: a rank loss ranks every reference item for each query; call "
            "loss(embeddings, labels) or pass a reference set as ref_embeddings=/ref_emb=, ref_labels="
        )
    if "indices_tuple" in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k != "indices_tuple"}
    return args, kwargs


class LossBase(torch.nn.Module):
    """Common call signature ``loss(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

    pytorch-metric-learning's spelling is accepted too (:func:`pml_arguments`): ``ref_emb=`` for
    ``ref_embeddings=``, ``indices_tuple=None``; a miner's tuple is an error.

    A loss with a functional form sets ``functional`` (e.g. ``staticmethod(sup_ap)``) and returns
    that function's keyword options from :meth:`loss_options`; ``forward`` and ``extra_repr``
    follow from them. Losses without one (proxies, wrappers) override :meth:`compute` instead.
    ``takes_ref_embeddings`` tells :class:`~hglv2.losses.WeightedSum` whether to pass the
    reference set (memory bank / gathered batch) on.
    """

    takes_ref_embeddings: bool = True
    functional: Callable[..., Tensor] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = pml_arguments(type(self).__name__, args, kwargs)
        return super().__call__(*args, **kwargs)

    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments passed to :attr:`functional` (besides the tensors)."""
        return {}

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return self.compute(embeddings, labels, ref_embeddings, ref_labels)

    def compute(
        self, embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None, ref_labels: Tensor | None
    ) -> Tensor:
        """The loss value: :attr:`functional` called with :meth:`loss_options` unless overridden."""
        if self.functional is None:
            raise NotImplementedError(f"{type(self).__name__} must set `functional` or override compute")
        return self.functional(embeddings, labels, ref_embeddings, ref_labels, **self.loss_options())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.loss_options().items())


class RankLossBase(LossBase):
    """A loss on SupRank ranks: its step functions (``config``), ``chunk_size`` and ``reduction``.

    Subclasses call :meth:`set_rank_options` and name their own options (attributes passed to
    :attr:`functional` before these) in :attr:`own_options`.
    """

    own_options: tuple[str, ...] = ()

    def set_rank_options(
        self,
        approximation: str,
        tau: float,
        rho: float,
        delta: float,
        start: float,
        offset: float | None,
        chunk_size: int,
        reduction: str,
    ) -> None:
        self.config = StepConfig(approximation, tau, rho, delta, start, offset)
        self.chunk_size = chunk_size
        self.reduction = reduction

    def loss_options(self) -> dict[str, Any]:
        own = {name: getattr(self, name) for name in self.own_options}
        return {**own, "config": self.config, "chunk_size": self.chunk_size, "reduction": self.reduction}
