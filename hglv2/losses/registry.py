"""The loss registry: names used in configs -> loss factories, and :func:`build_loss`.

A training config names its loss (``loss.name``) and its optional decomposability loss
(``loss.decomposability.name``); ``hglv2 train`` and ``hglv2 benchmark`` find both here.

A *factory* is a loss class or any callable that returns a ``torch.nn.Module`` called as
``loss(embeddings, labels, ...)``. Its keyword parameters are what the config's ``kwargs`` may set;
parameters named like a key of the training *context* (``num_classes``, ``embedding_dim``, ...)
are filled from the context when ``kwargs`` does not give them, so proxy losses need no
dataset-specific numbers in the config.

Adding a loss (ours, or an adapter to a pytorch-metric-learning baseline)::

    from hglv2.losses.registry import register_loss

    @register_loss("MyLoss")
    class MyLoss(torch.nn.Module): ...

    register_loss("pml.TripletMargin", make_triplet_adapter)   # a factory function works too

Registering a name twice is an error unless ``replace=True`` (the same factory again is a no-op).

The ``pml.*`` baselines (:mod:`hglv2.losses.pml`) are registered by class name and imported on first
use: they need the optional extra ``pml`` (pytorch-metric-learning), and asking for one without it
is an :class:`~hglv2.errors.InputError` that names the extra to install.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from hglv2.errors import InputError
from hglv2.losses.ap import SmoothAP, SupAP
from hglv2.losses.contrastive import ContrastiveLoss
from hglv2.losses.decomposability import CalibrationLoss, NormalizedSoftmaxProxyLoss
from hglv2.losses.hap import SupHAP
from hglv2.losses.ndcg import SupNDCG
from hglv2.losses.recall import SupRecall

__all__ = [
    "LOSSES",
    "SEARCH_SPACES",
    "LossFactory",
    "Range",
    "build_loss",
    "loss_factory",
    "loss_names",
    "register_loss",
    "search_space",
]

LossFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Deferred:
    """A factory imported on first use: ``attribute`` of ``module``, which needs the optional
    dependency ``package`` (import name ``import_name``) of the extra ``extra``."""

    module: str
    attribute: str
    package: str
    import_name: str
    extra: str

    def resolve(self, name: str) -> LossFactory:
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != self.import_name:
                raise
            raise InputError(
                f"{self.package} is needed for loss {name!r}: pip install 'hglv2[{self.extra}]'"
            ) from None
        return getattr(module, self.attribute)

    def names(self, factory: Any) -> bool:
        """Whether ``factory`` is the object this entry imports (without importing it)."""
        return (getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)) == (
            self.module,
            self.attribute,
        )


_REGISTRY: dict[str, LossFactory | _Deferred] = {}


class _RegistryView(Mapping[str, LossFactory]):
    """Read-only view of the registry; looking a name up imports a deferred factory."""

    def __getitem__(self, name: str) -> LossFactory:
        entry = _REGISTRY[name]
        return entry.resolve(name) if isinstance(entry, _Deferred) else entry

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


LOSSES: Mapping[str, LossFactory] = _RegistryView()
"""Read-only view of the registry (name -> factory)."""


def register_loss(name: str, factory: F | None = None, *, replace: bool = False) -> Any:
    """Register ``factory`` under ``name``; without ``factory``, a decorator that does so.

    Raises:
        ValueError: ``name`` is empty or already names another factory (and not ``replace``).
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"loss name must be a non-empty string, got {name!r}")

    def add(f: F) -> F:
        if not callable(f):
            raise TypeError(f"loss {name!r}: factory {f!r} is not callable")
        old = _REGISTRY.get(name)
        same = old is f or (isinstance(old, _Deferred) and old.names(f))
        if old is not None and not same and not replace:
            raise ValueError(f"loss {name!r} is already registered ({_qualname(old)})")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def loss_names() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_REGISTRY)


def loss_factory(name: str) -> LossFactory:
    """The factory registered as ``name``; :class:`InputError` naming the known ones otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise InputError(f"loss {name!r} is unknown (available: {', '.join(loss_names())})") from None


def build_loss(name: str, kwargs: Mapping[str, Any] | None = None, **context: Any) -> nn.Module:
    """Instantiate loss ``name`` with ``kwargs``.

    ``context`` (``num_classes``, ``embedding_dim``, ...) fills the factory's parameters of those
    names that ``kwargs`` does not give; context keys the factory does not take are ignored.

    Raises:
        InputError: unknown name, or arguments the factory rejects.
    """
    factory = loss_factory(name)
    params = inspect.signature(factory).parameters
    args = dict(kwargs or {})
    for key, value in context.items():
        if key in params and key not in args:
            args[key] = value
    try:
        return factory(**args)
    except TypeError as exc:
        raise InputError(f"loss {name}: bad arguments {args} ({exc})") from None


def _qualname(f: Any) -> str:
    if isinstance(f, _Deferred):
        return f"{f.module}.{f.attribute}"
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


for _name, _factory in (
    ("SupAP", SupAP),
    ("SupHAP", SupHAP),
    ("SupRecall", SupRecall),
    ("SupNDCG", SupNDCG),
    ("SmoothAP", SmoothAP),
    ("Contrastive", ContrastiveLoss),
    ("CalibrationLoss", CalibrationLoss),
    ("NormalizedSoftmaxProxyLoss", NormalizedSoftmaxProxyLoss),
):
    register_loss(_name, _factory)
del _name, _factory
for _name, _attribute in (  # baselines: adapters to pytorch-metric-learning, imported on first use
    ("pml.Triplet", "PMLTripletLoss"),
    ("pml.Contrastive", "PMLContrastiveLoss"),
    ("pml.MultiSimilarity", "PMLMultiSimilarityLoss"),
    ("pml.FastAP", "PMLFastAPLoss"),
    ("pml.ArcFace", "PMLArcFaceLoss"),
    ("pml.ProxyNCA", "PMLProxyNCALoss"),
):
    _REGISTRY[_name] = _Deferred(
        "hglv2.losses.pml", _attribute, "pytorch-metric-learning", "pytorch_metric_learning", "pml"
    )
del _name, _attribute


@dataclass(frozen=True)
class Range:
    """A hyper-parameter's search range for ``hglv2 benchmark --tune`` (uniform in log space
    when ``log``)."""

    low: float
    high: float
    log: bool = True


_LR = Range(1e-4, 1e-2)
_STEP = {"optimizer.lr": _LR, "loss.kwargs.tau": Range(1e-3, 0.1), "loss.kwargs.rho": Range(10.0, 1000.0)}
SEARCH_SPACES: dict[str, dict[str, Range]] = {
    "SupAP": _STEP,
    "SupHAP": _STEP,
    "SupRecall": _STEP,
    "SupNDCG": _STEP,
    "SmoothAP": {"optimizer.lr": _LR, "loss.kwargs.tau": Range(1e-3, 0.1)},
    "Contrastive": {"optimizer.lr": _LR, "loss.kwargs.neg_margin": Range(0.2, 1.2, log=False)},
}
"""Per loss: dotted config key -> :class:`Range` searched by ``hglv2 benchmark --tune`` (the
optimizer's learning rate and the loss's own temperature / margin)."""


def search_space(name: str) -> dict[str, Range]:
    """The search space of loss ``name`` (:data:`SEARCH_SPACES`; the learning rate alone for a
    loss without one)."""
    return dict(SEARCH_SPACES.get(name, {"optimizer.lr": _LR}))
