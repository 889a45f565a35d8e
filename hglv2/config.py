"""Run configuration: recipes (``hglv2/configs``), defaults, loading, ``--set`` overrides,
validation and digests.

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
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hglv2.errors import InputError

__all__ = [
    "DEFAULTS",
    "MEMORY_DEFAULTS",
    "RESULT_NEUTRAL",
    "SCHEMA",
    "config_errors",
    "yaml_load",
    "apply_overrides",
    "config_digest",
    "config_names",
    "load_config",
    "parse_overrides",
    "check_memory_spec",
    "set_path",
    "validate_config",
]

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {
        "kind": "synthetic",  # synthetic: generated under root; export: an existing split folder
        "root": "runs/data/synthetic",
        "image_root": None,  # null: <root>/manifest.json's image_root (hglv2 convert), else <root>/images
        "train_split": "train",
        "query_split": "query",
        "index_split": "index",  # null: query split against itself (self excluded)
        "test_sets": None,  # null: (query_split, index_split); or a list of {query, index, levels}
        "levels": ["level0", "level1", "level2"],
        "image_size": 64,
        "resize": None,  # evaluation: resize to this before the center crop (see eval_resize)
        "eval_resize": "shorter",  # shorter: Resize(resize) (shorter side); square: Resize((r, r))
        "train_resize": None,  # training: resize the shorter side to this before the random crop
        "augment": False,  # random resized crop + horizontal flip for training
        "crop_scale": [0.5, 1.0],  # RandomResizedCrop scale (area fraction)
        "crop_ratio": [0.75, 4.0 / 3.0],  # RandomResizedCrop aspect ratios
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
        "pooling": "gem",  # gem, avg or max
        "gem_p": 3.0,
        "gem_learnable": False,
        "layernorm": True,
        "layernorm_affine": True,
        "freeze_batchnorm": False,  # BatchNorm layers stay in eval mode (statistics frozen)
        "width": 32,
        "norm": "group",
    },
    "loss": {
        "name": "SupHAP",
        "kwargs": {},
        "weight": 1.0,
        "decomposability": None,  # {name, weight, kwargs, lr, weight_decay, min_lr}
        "lr": None,  # the loss's own parameters (ArcFace/ProxyNCA proxies); null: the head's
        "weight_decay": None,  # null: the head's
        "memory": None,  # cross-batch memory {size, weight, batch_weight, start_epoch, start_step}
    },
    "sampler": {
        "kind": "m_per_class",
        "batch_size": 64,
        "m": 4,
        "clusters_per_batch": 2,
        "max_per_class": None,  # at most this many images of a class per epoch
        "batches_per_super_tuple": None,  # hierarchical: the authors' epoch (T batches per cluster pair)
    },
    "optimizer": {
        "name": "adam",
        "lr": 1e-4,  # the backbone's (and the head's unless head_lr is given)
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "momentum": 0.9,  # sgd
        "nesterov": False,  # sgd
        "head_lr": None,  # pooling + LayerNorm + projection; null: lr
        "head_weight_decay": None,  # null: weight_decay
    },
    "schedule": {
        "kind": "cosine",  # cosine, constant or multistep
        "warmup_steps": 0,
        "min_lr_ratio": 0.0,
        "min_lr": None,  # cosine floor as an absolute learning rate (overrides min_lr_ratio)
        "milestones": [],  # multistep: epochs at which the learning rate is multiplied by gamma
        "gamma": 0.1,
    },
    "train": {
        "steps": None,  # total optimisation steps; or give epochs
        "epochs": 1,
        "freeze_backbone_epochs": 0,  # warm-up: only the head (and proxies) learn for these epochs
        "clip_grad_norm": None,
        "amp": True,  # only on CUDA
        "eval_every": 0,  # steps; 0: only at the end
        "checkpoint_every": 0,  # steps; 0: only at the end
        "log_every": 10,
        "eval_batch_size": 256,
        "recall_at": [1, 10, 100],
        "gap_batches": 0,  # decomposability gap over this many batches each epoch; 0: off
        "grad_cache_chunk": 0,  # > 0: gradient caching in sub-batches of this many images per process
    },
    "benchmark": {"seeds": [0], "losses": {}},
}

# optional keys: left out of the config identity while they hold their default (a config that does
# not use them has the digest of one that does not know them)
_OPTIONAL_KEYS = (
    "data.test_sets",
    "data.eval_resize",
    "data.train_resize",
    "data.crop_scale",
    "data.crop_ratio",
    "model.pooling",
    "model.layernorm_affine",
    "model.freeze_batchnorm",
    "sampler.max_per_class",
    "sampler.batches_per_super_tuple",
    "optimizer.momentum",
    "optimizer.nesterov",
    "optimizer.head_lr",
    "optimizer.head_weight_decay",
    "schedule.min_lr",
    "schedule.milestones",
    "schedule.gamma",
    "train.freeze_backbone_epochs",
    "train.gap_batches",
    "loss.lr",
    "loss.weight_decay",
    "loss.memory",
    "train.grad_cache_chunk",
)

# settings that cannot change a run's results (data-loader processes; how often it logs and
# checkpoints; the decomposability-gap measurement, which runs under its own RNG state): not part of
# the config identity, so a run resumes after they change
RESULT_NEUTRAL = ("data.num_workers", "train.log_every", "train.checkpoint_every", "train.gap_batches")

_OPEN_SECTIONS = {
    ("loss", "kwargs"),
    ("benchmark", "losses"),
    ("loss", "decomposability"),
    ("loss", "memory"),
}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 reads
    it as a string because it has no dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 number syntax (``1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


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
            where = str(path)
            try:
                body = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
            except OSError as exc:
                raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        elif text in config_names():
            body = (importlib.resources.files("hglv2") / "configs" / f"{text}.yaml").read_text("utf-8")
            where = f"{text}.yaml"
        else:
            raise InputError(f"config {text!r}: not a file and not one of {', '.join(config_names())}")
        try:
            raw = yaml_load(body) or {}
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int | None = None) -> tuple[Any, str]:
    if lo is None:
        return _is_int, "must be an integer"
    return (lambda v: _is_int(v) and v >= lo), f"must be an integer >= {lo}"


def _opt(check: tuple[Any, str]) -> tuple[Any, str]:
    return (lambda v: v is None or check[0](v)), f"must be null or {check[1].removeprefix('must be ')}"


def _num(lo: float | None = None, strict: bool = False, hi: float | None = None) -> tuple[Any, str]:
    def ok(v: Any) -> bool:
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if strict else v < lo):
            return False
        return hi is None or v <= hi

    parts = []
    if lo is not None:
        parts.append(f"{'>' if strict else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return ok, "must be a number" + (" " + " and ".join(parts) if parts else "")


def _one_of(*values: Any) -> tuple[Any, str]:
    return (lambda v: v in values), "must be one of " + ", ".join(str(v) for v in values)


_BOOL = (lambda v: isinstance(v, bool)), "must be true or false"
_NAME_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _run_name(v: Any) -> bool:
    """A relative run name (folder under runs/): segments of [A-Za-z0-9._-], none starting with a dot."""
    return isinstance(v, str) and all(_NAME_SEGMENT.fullmatch(seg) for seg in v.split("/"))


def _pair(lo: float, hi: float | None = None) -> tuple[Any, str]:
    def ok(v: Any) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == 2
            and all(_is_num(x) and x > lo and (hi is None or x <= hi) for x in v)
            and v[0] <= v[1]
        )

    rng = f"in ({lo:g}, {hi:g}]" if hi is not None else f"> {lo:g}"
    return ok, f"must be [low, high] with low <= high, both {rng}"


# the schema: dotted key -> (check, message); one message per bad key
SCHEMA: dict[str, tuple[Any, str]] = {
    "name": (_run_name, "must be a relative run name (letters, digits, ._-; segments split by /; no ..)"),
    "seed": _int(0),
    "data.kind": _one_of("synthetic", "export"),
    "data.root": ((lambda v: isinstance(v, str) and v != ""), "must be a path"),
    "data.image_root": (
        lambda v: (
            v is None
            or (isinstance(v, str) and v != "")
            or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))
        ),
        "must be null, a folder or a mapping split -> folder",
    ),
    "data.train_split": ((lambda v: isinstance(v, str) and v != ""), "must be a split name"),
    "data.query_split": ((lambda v: isinstance(v, str) and v != ""), "must be a split name"),
    "data.index_split": (
        (lambda v: v is None or (isinstance(v, str) and v != "")),
        "must be null or a split",
    ),
    "data.test_sets": (
        lambda v: (
            v is None
            or (
                isinstance(v, list)
                and len(v) >= 1
                and all(
                    isinstance(t, dict)
                    and set(t) <= {"name", "query", "index", "levels"}
                    and isinstance(t.get("query"), str)
                    and (t.get("index") is None or isinstance(t.get("index"), str))
                    and (
                        t.get("levels") is None
                        or (
                            isinstance(t["levels"], list)
                            and t["levels"]
                            and all(isinstance(x, str) for x in t["levels"])
                        )
                    )
                    for t in v
                )
            )
        ),
        "must be null or a non-empty list of {name, query, index, levels} (query a split name)",
    ),
    "data.levels": (
        lambda v: isinstance(v, list) and len(v) >= 1 and all(isinstance(x, str) and x for x in v),
        "must be a non-empty list of column names",
    ),
    "data.image_size": _int(16),
    "data.resize": _opt(_int(16)),
    "data.eval_resize": _one_of("shorter", "square"),
    "data.train_resize": _opt(_int(16)),
    "data.augment": _BOOL,
    "data.crop_scale": _pair(0.0, 1.0),
    "data.crop_ratio": _pair(0.0),
    "data.num_workers": _int(0),
    "data.synthetic.hierarchy": (
        (lambda v: v is None or (isinstance(v, str) and v != "")),
        "must be null or a path",
    ),
    "data.synthetic.seed": _int(0),
    "data.synthetic.image_size": _int(16),
    "data.synthetic.train_images": _int(1),
    "data.synthetic.query_images": _int(1),
    "data.synthetic.index_images": _int(1),
    "data.synthetic.train_fraction": (
        (lambda v: _is_num(v) and 0 < v < 1),
        "must be a number in (0, 1)",
    ),
    "data.synthetic.max_clusters": _opt(_int(1)),
    "data.synthetic.landmarks_per_cluster": _opt(_int(1)),
    "data.synthetic.jpeg_quality": ((lambda v: _is_int(v) and 1 <= v <= 100), "must be an integer in 1..100"),
    "model.backbone": _one_of("resnet18", "resnet34", "resnet50", "resnet101", "tiny"),
    "model.embedding_dim": _int(1),
    "model.pretrained": _BOOL,
    "model.pooling": _one_of("gem", "avg", "max"),
    "model.gem_p": _num(0.0, strict=True),
    "model.gem_learnable": _BOOL,
    "model.layernorm": _BOOL,
    "model.layernorm_affine": _BOOL,
    "model.freeze_batchnorm": _BOOL,
    "model.width": _int(8),
    "model.norm": _one_of("group", "batch"),
    "loss.name": ((lambda v: isinstance(v, str) and v != ""), "must be a loss name"),
    "loss.kwargs": ((lambda v: isinstance(v, dict)), "must be a mapping"),
    "loss.weight": _num(),
    "loss.lr": _opt(_num(0.0, strict=True)),
    "loss.weight_decay": _opt(_num(0.0)),
    "sampler.kind": _one_of("m_per_class", "hierarchical"),
    "sampler.batch_size": _int(2),
    "sampler.m": _int(1),
    "sampler.clusters_per_batch": _int(1),
    "sampler.max_per_class": _opt(_int(1)),
    "sampler.batches_per_super_tuple": _opt(_int(1)),
    "optimizer.name": _one_of("adam", "adamw", "sgd"),
    "optimizer.lr": _num(0.0, strict=True),
    "optimizer.weight_decay": _num(0.0),
    "optimizer.betas": (
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
        "must be two numbers in [0, 1)",
    ),
    "optimizer.momentum": _num(0.0, hi=1.0),
    "optimizer.nesterov": _BOOL,
    "optimizer.head_lr": _opt(_num(0.0, strict=True)),
    "optimizer.head_weight_decay": _opt(_num(0.0)),
    "schedule.kind": _one_of("cosine", "constant", "multistep"),
    "schedule.warmup_steps": _int(0),
    "schedule.min_lr_ratio": _num(0.0, hi=1.0),
    "schedule.min_lr": _opt(_num(0.0)),
    "schedule.milestones": (
        lambda v: isinstance(v, list) and all(_is_int(x) and x >= 1 for x in v) and v == sorted(set(v)),
        "must be a list of increasing epochs >= 1",
    ),
    "schedule.gamma": _num(0.0, strict=True, hi=1.0),
    "train.steps": _opt(_int(1)),
    "train.epochs": _int(1),
    "train.freeze_backbone_epochs": _int(0),
    "train.clip_grad_norm": _opt(_num(0.0, strict=True)),
    "train.amp": _BOOL,
    "train.eval_every": _int(0),
    "train.checkpoint_every": _int(0),
    "train.log_every": _int(0),
    "train.eval_batch_size": _int(1),
    "train.recall_at": (
        lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_int(k) and 1 <= k <= 10**9 for k in v),
        "must be a non-empty list of integers >= 1",
    ),
    "train.gap_batches": _int(0),
    "train.grad_cache_chunk": _int(0),
    "benchmark.seeds": (
        lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_int(x) and x >= 0 for x in v),
        "must be a non-empty list of integers >= 0",
    ),
    "benchmark.losses": ((lambda v: isinstance(v, dict)), "must be a mapping of label -> loss settings"),
}

_DECOMPOSABILITY_KEYS = {"name", "weight", "kwargs", "lr", "weight_decay", "min_lr"}


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for k in dotted.split("."):
        node = node[k]
    return node


def config_errors(cfg: dict[str, Any]) -> list[str]:
    """Every problem of a resolved config, one message per bad key (``"train.steps must be ..."``)."""
    errors: list[str] = []
    bad: set[str] = set()
    for key, (check, message) in SCHEMA.items():
        try:
            value = _get(cfg, key)
        except (KeyError, TypeError):
            errors.append(f"{key} is missing")
            bad.add(key)
            continue
        try:
            ok = bool(check(value))
        except Exception:  # a check that cannot even look at the value: a wrong type
            ok = False
        if not ok:
            errors.append(f"{key} {message} (got {value!r})")
            bad.add(key)

    def cross(keys: tuple[str, ...], cond: bool, message: str) -> None:
        if not bad.intersection(keys) and not cond:
            errors.append(message)
            bad.update(keys)

    s, t = cfg.get("sampler", {}), cfg.get("train", {})
    cross(
        ("sampler.m", "sampler.batch_size"),
        s.get("batch_size", 0) % max(s.get("m", 1), 1) == 0 and s.get("m", 1) <= s.get("batch_size", 0),
        f"sampler.m must divide sampler.batch_size (got {s.get('m')!r} and {s.get('batch_size')!r})",
    )
    if s.get("kind") == "hierarchical":
        cross(
            ("sampler.m", "sampler.batch_size", "sampler.clusters_per_batch"),
            s["batch_size"] % (s["m"] * s["clusters_per_batch"]) == 0,
            "sampler.batch_size must be a multiple of sampler.clusters_per_batch * sampler.m",
        )
    cross(
        ("sampler.batches_per_super_tuple", "sampler.kind"),
        s.get("batches_per_super_tuple") is None or s.get("kind") == "hierarchical",
        "sampler.batches_per_super_tuple needs sampler.kind: hierarchical",
    )
    if t.get("steps") is None:
        cross(
            ("train.freeze_backbone_epochs", "train.epochs"),
            t["freeze_backbone_epochs"] < t["epochs"],
            "train.freeze_backbone_epochs must be smaller than train.epochs",
        )
    dec = cfg.get("loss", {}).get("decomposability")
    if dec is not None:
        if not isinstance(dec, dict) or not isinstance(dec.get("name"), str):
            errors.append("loss.decomposability must be null or a mapping with a name")
        else:
            unknown = set(dec) - _DECOMPOSABILITY_KEYS
            if unknown:
                errors.append(f"loss.decomposability has unknown key(s) {sorted(unknown)}")
            for key, (check, message) in (
                ("weight", _num()),
                ("lr", _num(0.0, strict=True)),
                ("weight_decay", _num(0.0)),
                ("min_lr", _num(0.0)),
            ):
                if key in dec and not check(dec[key]):
                    errors.append(f"loss.decomposability.{key} {message} (got {dec[key]!r})")
            if "kwargs" in dec and not isinstance(dec["kwargs"], (dict, type(None))):
                errors.append("loss.decomposability.kwargs must be a mapping")
    try:
        check_memory_spec(cfg.get("loss", {}).get("memory"), where="")
    except InputError as exc:
        errors.append(str(exc).removeprefix(": "))
    return errors


def validate_config(cfg: dict[str, Any], where: str = "config") -> None:
    """Check every key's type and range (:data:`SCHEMA` plus the cross-key rules) before any work
    starts; raise one :class:`InputError` listing every bad key (``where: key must ...; key2 ...``)."""
    errors = config_errors(cfg)
    if errors:
        raise InputError(f"{where}: " + "; ".join(errors))


def _identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with the result-neutral settings at their defaults, then the optional keys left
    out where they hold their default."""
    out = copy.deepcopy(cfg)

    def parent(dotted: str) -> tuple[Any, Any, str]:
        *parents, last = dotted.split(".")
        node, default = out, DEFAULTS
        for k in parents:
            node, default = node.get(k) if isinstance(node, dict) else None, default[k]
        return node, default, last

    for dotted in RESULT_NEUTRAL:
        node, default, last = parent(dotted)
        if isinstance(node, dict) and last in node:
            node[last] = copy.deepcopy(default[last])
    for dotted in _OPTIONAL_KEYS:
        node, default, last = parent(dotted)
        if isinstance(node, dict) and last in node and node[last] == default[last]:
            del node[last]
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def config_digest(cfg: dict[str, Any]) -> str:
    """Short sha256 of the config's identity (what a checkpoint was made with).

    The identity is the resolved config with the result-neutral settings (:data:`RESULT_NEUTRAL`)
    set to their defaults, and the optional keys (:data:`_OPTIONAL_KEYS`) left out while they hold
    their default.
    """
    return _hash(_identity(cfg))


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
            out[key.strip()] = yaml_load(value)
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


MEMORY_DEFAULTS: dict[str, Any] = {
    "size": None,  # required: number of (embedding, labels) items kept
    "weight": 1.0,  # the authors' `factor`
    "batch_weight": 1.0,  # the authors' `factor_true_loss`
    "start_epoch": 0,  # the authors' `activate`
    "start_step": 0,
}


def check_memory_spec(spec: Any, where: str = "config") -> None:
    """Validate ``loss.memory`` (null or a mapping of :data:`MEMORY_DEFAULTS`' keys)."""
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise InputError(f"{where}: loss.memory must be null or a mapping")
    unknown = set(spec) - set(MEMORY_DEFAULTS)
    if unknown:
        raise InputError(f"{where}: loss.memory has unknown key(s) {sorted(unknown)}")
    s = {**MEMORY_DEFAULTS, **spec}

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

    if not (is_int(s["size"]) and s["size"] >= 1):
        raise InputError(f"{where}: loss.memory.size must be an integer >= 1")
    for key in ("start_epoch", "start_step"):
        if not (is_int(s[key]) and s[key] >= 0):
            raise InputError(f"{where}: loss.memory.{key} must be an integer >= 0")
    for key in ("weight", "batch_weight"):
        if not (is_num(s[key]) and s[key] >= 0):
            raise InputError(f"{where}: loss.memory.{key} must be a number >= 0")
    if s["weight"] + s["batch_weight"] <= 0:
        raise InputError(f"{where}: loss.memory.weight + batch_weight must be > 0")
