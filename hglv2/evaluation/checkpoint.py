"""A trained model from a run folder or a checkpoint file.

Accepted: a run folder of ``hglv2 train`` (``config.yaml`` with ``model.pt``, or else
``checkpoints/last.pt``), or one of those files inside a run folder (the config is found beside
or above it), or any file with a ``--config``. Files are read with ``torch.load(weights_only=True)``
(no pickle code runs); a trainer checkpoint's ``model`` entry or a bare state dict are accepted.
The model is built by the trainer's own code (:func:`hglv2.models.build_model` with the config's
``model:`` section; ImageNet weights are not fetched since the trained weights replace them).
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


def _find_config(path: Path) -> Path | None:
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def default_eval_dir(run_or_file: str | os.PathLike[str], data: str | os.PathLike[str]) -> Path:
    """Where the embeddings of ``data`` go by default: ``<run>/eval/<data folder name>``, the run
    being the folder itself, or the folder of a checkpoint file (above ``checkpoints/``)."""
    ckpt = Path(run_or_file)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    if run.name == "checkpoints":
        run = run.parent
    return run / "eval" / Path(data).resolve().name


def resolve_checkpoint(
    run_or_file: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """(weights file, config file) of a run folder or checkpoint file."""
    p = Path(run_or_file)
    if p.is_dir():
        weights = next((p / f for f in ("model.pt", "checkpoints/last.pt") if (p / f).is_file()), None)
        if weights is None:
            raise InputError(f"{p}: no model.pt or checkpoints/last.pt in this run folder")
        cfg = Path(config) if config else p / "config.yaml"
    elif p.is_file():
        weights = p
        cfg = Path(config) if config else _find_config(p)
        if cfg is None:
            raise InputError(f"{p}: no config.yaml beside or above the checkpoint; give --config")
    else:
        raise InputError(f"{p}: no such run folder or checkpoint file")
    if not cfg.is_file():
        raise InputError(f"{cfg}: no such config file")
    return weights, cfg


def load_trained_model(
    run_or_file: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    config: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained :class:`~hglv2.models.EmbeddingModel` (eval mode, on ``device``) and its config."""
    weights, cfg_path = resolve_checkpoint(run_or_file, config)
    cfg = load_config(cfg_path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of several types
        raise InputError(f"{weights}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{weights}: not a model state dict or trainer checkpoint")
    model = build_model(**{**cfg["model"], "pretrained": False})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{weights}: does not fit the model of {cfg_path.name} ({first})") from None
    return model.to(device).eval(), cfg
