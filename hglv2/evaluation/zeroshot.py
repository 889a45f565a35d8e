"""open_clip image and text features for the hierarchy vote (:mod:`hglv2.hierarchy.vote`).

- **Model and weights** (:func:`load_clip`): an open_clip architecture by name (``ViT-L-14`` by
  default; a JSON config registers another) and its weights from a local file (``weights``) or
  from open_clip's cache for a pretrained tag (``laion2b_s32b_b82k``). Nothing is downloaded unless
  ``download=True``; missing weights are an :class:`~hglv2.errors.InputError` saying how to get
  them. ``random_seed`` builds untrained weights instead (tests and demos: the votes mean nothing).
- **Images** are read by :class:`hglv2.dataset.HGLDv2Dataset` from official or prepared tar shards
  (or an image folder in the ``a/b/c/<id>.jpg`` layout), decoded with the model's preprocessing
  and embedded by the one embedder (:func:`hglv2.evaluation.embed.embed_images`: batches with a
  tqdm bar, float16 autocast on CUDA).
- **Resumable per shard** (:func:`image_features`): the features of each tar shard's images are
  written to ``cache_dir/<model key>/<shard>.npz`` (atomically) as soon as the shard is done; a
  rerun reads the finished shards and embeds only the rest. Data-loader workers are torch's,
  which exit when the command does.
- **Deterministic**: eval mode, a fixed image order (shard, then id), the same preprocessing;
  features are L2-normalised float32.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hglv2.errors import InputError
from hglv2.evaluation.embed import embed_images
from hglv2.fileio import atomic_path, write_parquet
from hglv2.schema import image_relpath

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "laion2b_s32b_b82k"
EXTRA_HINT = "pip install 'hglv2[vote]'"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise InputError(f"the vote needs open_clip: {EXTRA_HINT}") from None
    return open_clip


@dataclass
class ClipModel:
    """A loaded open_clip model with its preprocessing, tokenizer and a key naming its weights."""

    model: Any
    preprocess: Any
    tokenizer: Any
    key: str
    name: str
    weights: str


def register_config(path: str | os.PathLike[str]) -> str:
    """Register an open_clip model config (JSON); returns its model name (the file's stem)."""
    path = Path(path)
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON model config ({exc})") from None
    _open_clip().add_model_config(path)
    return path.stem


def cached_weights(
    name: str, pretrained: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """The weights file of a pretrained tag in open_clip's cache (Hugging Face hub cache, or the
    URL cache ``~/.cache/clip``), or None; never downloads."""
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise InputError(f"open_clip has no pretrained tag {pretrained!r} for {name} (known: {known})")
    hub = cfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hub.split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        for fname in (filename,) if filename else WEIGHT_FILES:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    url = cfg.get("url") or ""
    if url:
        root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        hit = root / os.path.basename(url)
        if hit.is_file():
            return hit
    return None


@contextlib.contextmanager
def _quiet_random_init(quiet: bool):
    """Silence open_clip's "no pretrained weights loaded" warning when random weights are asked for."""
    import logging

    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def load_clip(
    name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    *,
    weights: str | os.PathLike[str] | None = None,
    download: bool = False,
    random_seed: int | None = None,
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClipModel:
    """The model in eval mode on ``device``; see the module docstring for where weights come from."""
    open_clip = _open_clip()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here (use --device cpu)")
    if name not in open_clip.list_models():
        raise InputError(f"open_clip has no model {name!r} (register a JSON config with --model-config)")
    if random_seed is not None:
        source, desc = None, f"random:{random_seed}"
    elif weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"{path}: no such weights file (--weights)")
        source, desc = str(path), _stamp(path)
    else:
        hit = cached_weights(name, pretrained, cache_dir)
        if hit is None and not download:
            raise InputError(
                f"no weights for {name} {pretrained} in open_clip's cache: pass --weights FILE, or "
                f"--download to fetch them once from open_clip's hub"
            )
        source = str(hit) if hit is not None else pretrained
        desc = _stamp(hit) if hit is not None else f"{pretrained}"
    try:
        with torch.random.fork_rng(devices=[]), _quiet_random_init(random_seed is not None):
            torch.manual_seed(0 if random_seed is None else random_seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=source,
                device=device,
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise InputError(f"open_clip could not load {name} from {desc}: {str(exc).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    key = hashlib.sha256(f"{name}\x1f{desc}".encode()).hexdigest()[:16]
    return ClipModel(model, preprocess, open_clip.get_tokenizer(name), key, name, desc)


def text_features(
    clip: ClipModel, texts: Sequence[str], device: str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """(T, D) L2-normalised float32 features of the prompts."""
    out = []
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(list(texts[i : i + batch_size])).to(device)
            out.append(_normalise(clip.model.encode_text(tokens)))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _autocast(device: str):
    return (
        torch.autocast("cuda", dtype=torch.float16)
        if str(device).startswith("cuda")
        else contextlib.nullcontext()
    )


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)


def _root_groups(
    root: Path, ids: list[str], transform, folder: Path, chunk: int
) -> list[tuple[str, Any, np.ndarray]]:
    """The images of ``ids`` that one folder holds: ``(cache name, dataset, item indices)`` per tar
    shard (or per ``chunk`` images of an image folder). Each folder has its own tar index (the
    official train, index and test folders all hold an ``images_000.tar``)."""
    from hglv2.dataset import HGLDv2Dataset, index_tar_shards

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    shards = sorted(root.glob("*.tar")) if root.is_dir() else ([root] if root.suffix == ".tar" else [])
    if shards:
        cache = folder / f"tar_index-{tag}.parquet"
        where = index_tar_shards(shards, cache=cache)
        here = [i for i in ids if i in where]
    else:
        if not root.is_dir():
            raise InputError(f"{root}: no tar shards and not an image folder (--images)")
        here = [i for i in ids if (root / image_relpath(i)).is_file()]
    if not here:
        return []
    split = folder / f"images-{tag}.parquet"
    write_parquet(pa.table({"id": here, "path": [image_relpath(i) for i in here]}), split)
    if shards:
        ds = HGLDv2Dataset(split, shards, levels=[], transform=transform, layout="tar", tar_index=cache)
        loc = np.array([where[i][0] for i in here], dtype=np.int64)
        return [
            (_shard_key(shards[k]), ds, np.flatnonzero(loc == k))
            for k in range(len(shards))
            if (loc == k).any()
        ]
    ds = HGLDv2Dataset(split, root, levels=[], transform=transform, layout="folder")
    n = len(here)
    return [
        (f"{root.name}-{tag}-{i // chunk:05d}", ds, np.arange(i, min(n, i + chunk)))
        for i in range(0, n, chunk)
    ]


def _groups(
    ids: list[str], roots: Sequence[Path], transform, folder: Path, chunk: int = 4096
) -> tuple[list[tuple[str, Any, np.ndarray]], list[str]]:
    """The groups of every folder (an id held by several folders is read from the first), and the
    ids found in none."""
    left, groups = list(ids), []
    for root in roots:
        found = _root_groups(Path(root), left, transform, folder, chunk)
        taken = {g[1].ids[i] for g in found for i in g[2]}
        left = [i for i in left if i not in taken]
        groups += found
    return groups, left


def _small(img, side: int):
    img = img.copy()
    img.thumbnail((side, side))
    return img


def read_images(
    ids: Sequence[str], roots: Sequence[str | os.PathLike[str]], side: int = 128
) -> dict[str, Any]:
    """The images ``ids`` from tar shards or an image folder, as PIL images at most ``side`` px;
    missing or unreadable images are left out (the review page's thumbnails)."""
    import tempfile

    ids = sorted(set(ids))
    if not ids:
        return {}
    with tempfile.TemporaryDirectory(prefix="hglv2-images-") as tmp:
        groups, _ = _groups(ids, [Path(r) for r in roots], functools.partial(_small, side=side), Path(tmp))
        out = {}
        for _, ds, idx in groups:
            for i in idx.tolist():
                with contextlib.suppress(InputError):  # unreadable: no thumbnail
                    item = ds[i]
                    out[item["id"]] = item["image"]
        return out


def _shard_key(path: Path) -> str:
    """A cache name per shard: shards of several folders share names (``images_000.tar``)."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
    return f"{Path(path).parent.name}-{Path(path).stem}-{digest}"


def image_features(
    clip: ClipModel,
    ids: Sequence[str],
    roots: Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Features of the images ``ids`` (sorted, unique): ``(ids embedded, (N, D) float32, counts)``.

    Each shard goes through the one embedder (:func:`hglv2.evaluation.embed.embed_images`: a
    progress bar per shard, AMP on CUDA, an unreadable image is an error naming it). Images found
    in no shard are skipped and counted (``counts["skipped"]``); ``counts["shards_cached"]`` shards
    were read from the cache instead of embedded.
    """
    ids = sorted(set(ids))
    counts = {"images": len(ids), "skipped": 0, "shards": 0, "shards_cached": 0, "embedded": 0}
    if not ids:
        return [], np.zeros((0, 0), np.float32), counts
    folder = Path(cache_dir) / clip.key
    folder.mkdir(parents=True, exist_ok=True)
    groups, missing = _groups(ids, [Path(r) for r in roots], clip.preprocess, folder)
    counts["skipped"] = len(missing)
    got_ids: list[str] = []
    feats: list[np.ndarray] = []
    encoder = _ImageEncoder(clip.model)
    for name, ds, idx in groups:
        wanted = [ds.ids[i] for i in idx]
        cached = _read_shard(folder / f"{name}.npz", wanted)
        counts["shards"] += 1
        if cached is None:
            cached = embed_images(
                encoder,
                torch.utils.data.Subset(ds, idx.tolist()),
                batch_size=batch_size,
                device=device,
                num_workers=workers,
                progress=progress,
                desc=f"vote: {name}",
            )
            counts["embedded"] += len(wanted)
            _write_shard(folder / f"{name}.npz", wanted, cached)
        else:
            counts["shards_cached"] += 1
        got_ids += wanted
        feats.append(cached)
    dim = next((f.shape[1] for f in feats if f.ndim == 2 and f.shape[0]), 0)
    arr = np.concatenate([f.reshape(-1, dim) for f in feats]) if feats else np.zeros((0, dim), np.float32)
    order = np.argsort(np.array(got_ids, dtype=object), kind="stable") if got_ids else np.zeros(0, int)
    return [got_ids[i] for i in order], arr[order], counts


class _ImageEncoder(torch.nn.Module):
    """open_clip's image tower as a module for :func:`hglv2.evaluation.embed.embed_images`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.model.encode_image(x).float()
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _write_shard(path: Path, wanted: list[str], feats: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, wanted=np.array(wanted), feats=feats)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _read_shard(path: Path, wanted: list[str]):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if z["wanted"].tolist() != wanted:
                return None
            return z["feats"]
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------------------------
# the vote's features


@dataclass(frozen=True)
class ModelSettings:
    """Which model embeds, from which weights, where (the vote's model options)."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    weights: str | None = None
    download: bool = False
    random_seed: int | None = None
    device: str = "cpu"
    batch_size: int = 128
    workers: int = 0
    progress: bool = True


@dataclass
class VoteFeatures:
    """What :func:`vote_features` returns: prompt and image features, and how they were made."""

    text: np.ndarray
    ids: list[str]
    images: np.ndarray
    counts: dict[str, Any]
    model: dict[str, str]


def vote_features(
    texts: Sequence[str],
    ids: Sequence[str],
    roots: Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    settings: ModelSettings = ModelSettings(),
) -> VoteFeatures:
    """Load the model, embed the prompts and the images (resumable per shard); ``counts`` adds
    ``seconds`` and ``images_per_s`` of the image step."""
    import time

    clip = load_clip(
        settings.model,
        settings.pretrained,
        weights=settings.weights,
        download=settings.download,
        random_seed=settings.random_seed,
        device=settings.device,
    )
    t0 = time.perf_counter()
    got, feats, counts = image_features(
        clip,
        ids,
        roots,
        cache_dir,
        device=settings.device,
        batch_size=settings.batch_size,
        workers=settings.workers,
        progress=settings.progress,
    )
    seconds = time.perf_counter() - t0
    rate = counts["embedded"] / seconds if seconds > 0 and counts["embedded"] else None
    counts.update(seconds=seconds, images_per_s=rate)
    text = text_features(clip, texts, settings.device)
    return VoteFeatures(text, got, feats, counts, {"name": clip.name, "weights": clip.weights})
