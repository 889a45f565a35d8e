"""Training configuration: defaults, loading, ``--set`` overrides, validation and digests.

The one place that resolves a config, used by ``hglv2 train`` and ``hglv2 benchmark`` alike:

- :func:`load_config`: a shipped name (:func:`config_names`), a YAML path or a dict, merged over
  :data:`DEFAULTS` (unknown keys are an error) and validated;
- :func:`parse_overrides` / :func:`apply_overrides`: ``KEY=VALUE`` pairs (values in YAML) set on
  a resolved config through :func:`set_path`, then validated again;
- :func:`config_digest`: the short hash stored in checkpoints and ``metrics.json``, so a run
  resumes (or is reused) only with the config it was made with.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hglv2.errors import InputError
from hglv2.train.memory import check_memory_spec

__all__ = [
    "DEFAULTS",
    "apply_overrides",
    "config_digest",
    "config_names",
    "load_config",
    "parse_overrides",
    "set_path",
    "validate_config",
]

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {
        "kind": "synthetic",  # synthetic: generated under root; export: an existing split folder
        "root": "runs/data/synthetic",
        "image_root": None,  # default <root>/images
        "train_split": "train",
        "query_split": "query",
        "index_split": "index",  # null: query split against itself (self excluded)
        "levels": ["level0", "level1", "level2"],
        "image_size": 64,
        "resize": None,  # resize the shorter side to this before the (center/random) crop
        "augment": False,  # random resized crop + horizontal flip for training
        "num_workers": 0,
        "synthetic": {
            "hierarchy": None,  # null: data/sample/... when present, else the built-in table
            "seed": 0,
            "image_size": 64,
            "train_images": 8,
            "query_images": 2,
            "index_images": 6,
            "train_fraction": 0.5,
            "max_clusters": None,
            "landmarks_per_cluster": None,
            "jpeg_quality": 90,
        },
    },
    "model": {
        "backbone": "resnet50",
        "embedding_dim": 512,
        "pretrained": True,
        "gem_p": 3.0,
        "gem_learnable": False,
        "layernorm": True,
        "width": 32,
        "norm": "group",
    },
    "loss": {
        "name": "SupHAP",
        "kwargs": {},
        "weight": 1.0,
        "decomposability": None,  # {name, weight, kwargs, lr, weight_decay}
        "lr": None,  # the loss's own parameters (ArcFace/ProxyNCA proxies); null: optimizer.lr
        "weight_decay": None,  # null: optimizer.weight_decay
        "memory": None,  # cross-batch memory {size, weight, batch_weight, start_epoch, start_step}
    },
    "sampler": {"kind": "m_per_class", "batch_size": 64, "m": 4, "clusters_per_batch": 2},
    "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999]},
    "schedule": {"kind": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.0},
    "train": {
        "steps": None,  # total optimisation steps; or give epochs
        "epochs": 1,
        "clip_grad_norm": None,
        "amp": True,  # only on CUDA
        "eval_every": 0,  # steps; 0: only at the end
        "checkpoint_every": 0,  # steps; 0: only at the end
        "log_every": 10,
        "eval_batch_size": 256,
        "recall_at": [1, 10, 100],
        "grad_cache_chunk": 0,  # > 0: gradient caching in sub-batches of this many images per process
    },
    "benchmark": {"seeds": [0], "losses": {}},
}

_OPEN_SECTIONS = {
    ("loss", "kwargs"),
    ("benchmark", "losses"),
    ("loss", "decomposability"),
    ("loss", "memory"),
}


def config_names() -> list[str]:
    """Names of the configs shipped in ``hglv2/configs``."""
    files = importlib.resources.files("hglv2") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            raise InputError(f"config: unknown key {path!r}")
        if isinstance(base[key], dict) and tuple(path.split(".")) not in _OPEN_SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"config: {path!r} must be a mapping, got {type(value).__name__}")
            out[key] = _merge(base[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(cfg, "train.steps", 10)``; the key must exist in :data:`DEFAULTS`."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise InputError(f"config: unknown key {dotted!r}")
        node = node[k]
    if keys[-1] not in node and not any(dotted.startswith(".".join(s)) for s in _OPEN_SECTIONS):
        raise InputError(f"config: unknown key {dotted!r}")
    node[keys[-1]] = value


def load_config(source: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """Resolve a config: a shipped name (``synthetic``, ``h-gldv2``, ...), a YAML path or a dict.

    The result is :data:`DEFAULTS` updated with the file's keys (unknown keys are an error) and
    validated. Relative data paths stay relative to the working directory.
    """
    if isinstance(source, dict):
        raw, where = source, "config"
    else:
        text = str(source)
        path = Path(text)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise InputError(f"{path}: no such config file")
            body, where = path.read_text(encoding="utf-8"), str(path)
        elif text in config_names():
            body = (importlib.resources.files("hglv2") / "configs" / f"{text}.yaml").read_text("utf-8")
            where = f"{text}.yaml"
        else:
            raise InputError(f"config {text!r}: not a file and not one of {', '.join(config_names())}")
        try:
            raw = yaml.safe_load(body) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{where}: the config must be a mapping")
    try:
        cfg = _merge(DEFAULTS, raw)
    except InputError as exc:
        raise InputError(f"{where}: {str(exc).removeprefix('config: ')}") from None
    validate_config(cfg, where)
    return cfg


def validate_config(cfg: dict[str, Any], where: str = "config") -> None:
    """Check types and ranges; raise :class:`InputError` naming the field."""

    def need(cond: bool, field: str, msg: str) -> None:
        if not cond:
            raise InputError(f"{where}: {field} {msg}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    d, m, s, o, t, sch = (
        cfg["data"],
        cfg["model"],
        cfg["sampler"],
        cfg["optimizer"],
        cfg["train"],
        cfg["schedule"],
    )
    need(is_int(cfg["seed"]), "seed", "must be an integer")
    need(d["kind"] in ("synthetic", "export"), "data.kind", "must be synthetic or export")
    need(isinstance(d["root"], str) and d["root"] != "", "data.root", "must be a path")
    need(
        d["image_root"] is None
        or isinstance(d["image_root"], str)
        or (isinstance(d["image_root"], dict) and all(isinstance(v, str) for v in d["image_root"].values())),
        "data.image_root",
        "must be null, a folder or a mapping split -> folder",
    )
    need(is_int(d["image_size"]) and d["image_size"] >= 16, "data.image_size", "must be an integer >= 16")
    need(isinstance(d["levels"], list) and len(d["levels"]) >= 1, "data.levels", "must be a non-empty list")
    need(is_int(d["num_workers"]) and d["num_workers"] >= 0, "data.num_workers", "must be >= 0")
    need(
        m["backbone"] in ("resnet18", "resnet50", "tiny"),
        "model.backbone",
        "must be resnet18, resnet50 or tiny",
    )
    need(is_int(m["embedding_dim"]) and m["embedding_dim"] >= 1, "model.embedding_dim", "must be >= 1")
    need(isinstance(m["pretrained"], bool), "model.pretrained", "must be true or false")
    need(isinstance(cfg["loss"]["name"], str), "loss.name", "must be a loss name")
    need(isinstance(cfg["loss"]["kwargs"], dict), "loss.kwargs", "must be a mapping")
    need(is_num(cfg["loss"]["weight"]), "loss.weight", "must be a number")
    dec = cfg["loss"]["decomposability"]
    if dec is not None:
        need(
            isinstance(dec, dict) and isinstance(dec.get("name"), str),
            "loss.decomposability",
            "must be null or a mapping with a name",
        )
        unknown = set(dec) - {"name", "weight", "kwargs", "lr", "weight_decay"}
        need(not unknown, "loss.decomposability", f"has unknown key(s) {sorted(unknown)}")
    for key in ("lr", "weight_decay"):
        v = cfg["loss"][key]
        need(v is None or (is_num(v) and v >= 0), f"loss.{key}", "must be null or a number >= 0")
    check_memory_spec(cfg["loss"]["memory"], where)
    need(
        is_int(t["grad_cache_chunk"]) and t["grad_cache_chunk"] >= 0,
        "train.grad_cache_chunk",
        "must be an integer >= 0 (0: off)",
    )
    need(s["kind"] in ("m_per_class", "hierarchical"), "sampler.kind", "must be m_per_class or hierarchical")
    need(is_int(s["batch_size"]) and s["batch_size"] >= 2, "sampler.batch_size", "must be an integer >= 2")
    need(
        is_int(s["m"]) and s["m"] >= 1 and s["batch_size"] % s["m"] == 0,
        "sampler.m",
        "must be >= 1 and divide sampler.batch_size",
    )
    need(o["name"] in ("adam", "adamw", "sgd"), "optimizer.name", "must be adam, adamw or sgd")
    need(is_num(o["lr"]) and o["lr"] > 0, "optimizer.lr", "must be a positive number")
    need(is_num(o["weight_decay"]) and o["weight_decay"] >= 0, "optimizer.weight_decay", "must be >= 0")
    need(sch["kind"] in ("cosine", "constant"), "schedule.kind", "must be cosine or constant")
    need(is_int(sch["warmup_steps"]) and sch["warmup_steps"] >= 0, "schedule.warmup_steps", "must be >= 0")
    need(
        t["steps"] is None or (is_int(t["steps"]) and t["steps"] >= 1), "train.steps", "must be null or >= 1"
    )
    need(
        t["steps"] is not None or (is_int(t["epochs"]) and t["epochs"] >= 1),
        "train.epochs",
        "must be >= 1 (or give train.steps)",
    )
    for key in ("eval_every", "checkpoint_every", "log_every"):
        need(is_int(t[key]) and t[key] >= 0, f"train.{key}", "must be an integer >= 0")
    need(
        t["clip_grad_norm"] is None or (is_num(t["clip_grad_norm"]) and t["clip_grad_norm"] > 0),
        "train.clip_grad_norm",
        "must be null or a positive number",
    )


def config_digest(cfg: dict[str, Any]) -> str:
    """Short sha256 of the resolved config (what a checkpoint was made with)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["train.steps=100", "loss.kwargs={tau: 0.05}"]`` -> ``{"train.steps": 100, ...}``.

    Values are YAML (``null``, numbers, lists, mappings); a later pair wins over an earlier one.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.steps=100")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {pair!r}: the value is not valid YAML") from None
    return out


def apply_overrides(
    cfg: dict[str, Any], overrides: Mapping[str, Any] | None, where: str = "config (after --set)"
) -> dict[str, Any]:
    """Set each dotted key of ``overrides`` in ``cfg`` (in place) with :func:`set_path`, then
    validate the result (errors name ``where``). Returns ``cfg``."""
    for key, value in (overrides or {}).items():
        set_path(cfg, key, value)
    validate_config(cfg, where)
    return cfg
