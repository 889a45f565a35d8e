"""Checkpoints saved by the authors' code (elias-ramzi/SupRank) as :class:`~hglv2.models.EmbeddingModel`.

**The file.** ``suprank/engine/checkpoint.py`` saves, with ``torch.save``, a dict::

    net_state        the RetrievalNet state dict (``net.module.state_dict()`` under DDP)
    optimizer_state  {group: optimizer state dict}     scheduler  {group: scheduler state dict}
    criterion_state  [loss state dict, ...]            scaler_state  GradScaler state dict
    epoch            int                               metrics  {name: float} or None
    config           the run's omegaconf DictConfig    command  'python ...'
    RANDOM_STATE, NP_STATE, TORCH_STATE, TORCH_CUDA_STATE   the random generators' states

Only ``net_state`` is used (a bare state dict is accepted too). The file is read with
``torch.load(weights_only=True)``: no code from the file runs. The objects that are not tensors or
plain containers (the omegaconf config, numpy's generator state) are rebuilt as inert placeholders
(:func:`read_checkpoint`), so neither omegaconf nor the authors' code is needed.

**The state dict** of ``RetrievalNet`` (``suprank/models/retrieval_net.py``; keys may carry
``module.`` prefixes, which their ``adapt_checkpoint`` removes, and so do we):

==========================  =================  ==================================================
theirs                      ours               note
==========================  =================  ==================================================
``backbone.{i}.*``          ``backbone.{i}.*`` torchvision ResNet children without avgpool and fc:
                                               0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-4
``pooling.p`` (shape (1,))  ``pool.p`` (())    GeM exponent (``pooling: gem``); avg/max: no key
``standardize.weight/bias`` ``norm.weight/bias`` only with an affine LayerNorm (theirs has none)
``fc.weight``, ``fc.bias``  ``proj.*``         the projection to the embedding
``head.0.*``, ``head.3.*``  (dropped)          the same tensors again: ``head`` is
                                               Sequential(pooling, Flatten, standardize, fc,
                                               Normalize)
==========================  =================  ==================================================

Their forward pass is ours: backbone, pooling, flatten, LayerNorm (no affine), linear, L2
normalisation (GeM with eps 1e-6; in evaluation their autocast is CUDA-only). The model is built
from the recipe's ``model:`` section (``--recipe``), so the backbone, pooling and embedding size
must be those of the run that saved the checkpoint; a mismatch is reported with the first key
that does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hglv2.config import load_config
from hglv2.errors import InputError
from hglv2.models import build_model

__all__ = ["load_suprank_model", "read_checkpoint", "to_hglv2_state"]


class _Inert:
    """Placeholder for an object of the file that is not a tensor or a plain container: takes any
    constructor arguments and state and keeps them as data; runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        inst = object.__new__(cls)
        inst.args = args
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholders(names: list[str]) -> list[tuple[type, str]]:
    """One inert class per global name of the file (weights_only's allowlist maps names to objects)."""
    return [(type(name.rsplit(".", 1)[-1], (_Inert,), {}), name) for name in names]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``net_state`` of an authors' checkpoint (or a bare state dict), read with
    ``torch.load(weights_only=True)``; other objects of the file become inert placeholders."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such checkpoint file")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        with torch.serialization.safe_globals(_placeholders(names)):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of several types
        raise InputError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    state = obj.get("net_state", obj) if isinstance(obj, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise InputError(f"{p}: no 'net_state' state dict (the authors' checkpoint layout) nor a bare one")
    return state


def to_hglv2_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their ``RetrievalNet`` keys -> :class:`~hglv2.models.EmbeddingModel` keys (module table)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.replace("module.", "")  # their adapt_checkpoint
        if key.startswith("head."):
            continue  # aliases of pooling / standardize / fc
        if key == "pooling.p":
            out["pool.p"] = value.reshape(())
        elif key.startswith("pooling."):
            continue  # no other pooling state (eps is not saved)
        elif key.startswith("standardize."):
            out["norm." + key[len("standardize.") :]] = value
        elif key.startswith("fc."):
            out["proj." + key[len("fc.") :]] = value
        else:
            out[key] = value
    return out


def load_suprank_model(
    checkpoint: str | os.PathLike[str],
    recipe: str | os.PathLike[str] | dict[str, Any],
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """An authors' checkpoint in the model of ``recipe`` (a shipped name, a YAML path or a config
    dict): the model (eval mode, on ``device``) and the recipe's config."""
    cfg = load_config(recipe)
    state = to_hglv2_state(read_checkpoint(checkpoint))
    model = build_model(**{**cfg["model"], "pretrained": False})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise InputError(
            f"{checkpoint}: does not fit the model of recipe {cfg.get('name')!r} ({detail})"
        ) from None
    return model.to(device).eval(), cfg
