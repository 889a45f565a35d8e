"""Evaluation protocols for a trained model.

- :func:`evaluate_splits`: a split folder (``hglv2 export``, ``hglv2 convert``, the synthetic
  data): embed the ``query`` split (and the ``gallery`` split, else queries against themselves),
  write the embeddings and labels (``.npy``) and compute :func:`hglv2.metrics.evaluate`.
- :func:`evaluate_revisited`: Revisited Oxford / Paris (``<data>/gnd_<name>.pkl`` and
  ``<data>/jpg/<image>.jpg``): queries cropped to their ``bbx``, every image resized to
  ``imsize`` x ``imsize`` (224, as the authors' ``suprank/evaluate_landmark.py``; 0 keeps the
  size), mAP of the Medium and Hard setups (:func:`hglv2.metrics.revisited.revisited_map`).
- :func:`landmark_table`: the paper's landmark table for one checkpoint: ROxf-M, ROxf-H, RPar-M,
  RPar-H, then on GLDv2 (query vs index) mAP@100, H-AP, ASI and NDCG (as the authors' table:
  ``mAP@100_level0``, ``H-AP_multi``, ``ASI_multi``, ``NDCG_multi``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hglv2.errors import InputError
from hglv2.evaluation.checkpoint import load_trained_model
from hglv2.evaluation.embed import ImageList, embed_images
from hglv2.fileio import atomic_path
from hglv2.models import resolve_device
from hglv2.splits import manifest_image_root
from hglv2.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

REVISITED = ("roxford5k", "rparis6k")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _save_embeddings(out: Path, name: str, emb: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Write ``<name>_embeddings.npy`` and ``<name>_labels.npy`` under ``out``; returns their paths."""
    files = {"embeddings": out / f"{name}_embeddings.npy", "labels": out / f"{name}_labels.npy"}
    _save_npy(files["embeddings"], emb)
    _save_npy(files["labels"], labels)
    return {k: str(v) for k, v in files.items()}


def _image_root(data: Path, image_root: str | os.PathLike[str] | None) -> Path:
    if image_root is None:
        return manifest_image_root(data, option="--image-root")
    root = Path(image_root)
    if not root.is_dir():
        raise InputError(f"{root}: no such image folder")
    return root


def _pick_splits(data: Path, query: str | None, gallery: str | None) -> tuple[str, str | None]:
    def exists(s: str) -> bool:
        return (data / f"{s}.parquet").is_file()

    if query is None:
        query = next((s for s in ("query", "test", "val") if exists(s)), None)
        if query is None:
            raise InputError(f"{data}: no query, test or val split; name one with --query")
        if gallery is None and query == "query" and exists("index"):
            gallery = "index"
    for s in (query, gallery):
        if s is not None and not exists(s):
            raise InputError(f"{data / (s + '.parquet')}: no such split")
    return query, gallery


def evaluate_splits(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    query: str | None = None,
    gallery: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    model_and_config: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    **metric_options: Any,
) -> dict[str, Any]:
    """Embed the query (and gallery) split of ``data`` with the trained model; returns
    ``{"query", "gallery", "files", "results"}`` (results of :func:`evaluate_convention`).

    With ``out_dir``, writes ``<split>_embeddings.npy`` (N, D) float32 and ``<split>_labels.npy``
    (N, L) int64 there, reusable with ``hglv2 evaluate -e ... -l ...``. A query and a gallery split
    with different numbers of level columns are compared on their common finest levels.
    ``metric_options`` go to :func:`~hglv2.metrics.conventions.evaluate_convention`
    (``recall_at``, ``relevance``, ``alpha``, ``hap_convention``, ``ndcg_at``...); ``recall_at``
    absent or None: the run's ``train.recall_at``, as its own evaluations used (returned as
    ``"recall_at"``).
    """
    from hglv2.dataset import HGLDv2Dataset
    from hglv2.metrics.conventions import evaluate_convention

    dev = resolve_device(device)
    model, cfg = model_and_config or load_trained_model(checkpoint, dev, config)
    if metric_options.get("recall_at") is None:
        metric_options["recall_at"] = tuple(cfg["train"]["recall_at"])
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data}: no such data folder")
    embed_options = dict(batch_size=batch_size, num_workers=num_workers, amp=amp, progress=progress)
    if query is None and gallery is None and (data / "query_fine.parquet").is_file():
        return evaluate_dyml_sets(
            None,
            data,
            image_root=image_root,
            out_dir=out_dir,
            device=device,
            model_and_config=(model, cfg),
            **embed_options,
            **metric_options,
        )
    query, gallery = _pick_splits(data, query, gallery)
    if gallery == query:  # one split against itself: each query excluded from its own ranking
        gallery = None
    root = _image_root(data, image_root)
    transform = build_transform(cfg, train=False)
    embs, labs = {}, {}
    for split in (query, gallery):
        if split is None:
            continue
        ds = HGLDv2Dataset(data / f"{split}.parquet", root, transform=transform)
        embs[split] = embed_images(model, ds, device=dev, desc=split, **embed_options)
        labs[split] = ds.labels
    files = {}
    if out_dir is not None:
        for split in embs:
            files[split] = _save_embeddings(Path(out_dir), split, embs[split], labs[split])
    q_lab = labs[query]
    if gallery is not None:
        g_lab = labs[gallery]
        if g_lab.shape[1] != q_lab.shape[1]:
            n = min(g_lab.shape[1], q_lab.shape[1])  # e.g. a 1-level test set against a 3-level one
            q_lab, g_lab = q_lab[:, :n], g_lab[:, :n]
        res = evaluate_convention(embs[query], q_lab, embs[gallery], g_lab, **metric_options)
    else:
        res = evaluate_convention(embs[query], q_lab, **metric_options)
    recall_at = list(metric_options["recall_at"])
    return {"query": query, "gallery": gallery, "files": files, "recall_at": recall_at, "results": res}


def split_paths(data: Path, split: str) -> list[str]:
    """The ``path`` column of split ``split`` under ``data``."""
    import pyarrow.parquet as pq

    return pq.read_table(data / f"{split}.parquet", columns=["path"])["path"].to_pylist()


def _file_hashes(root: Path, paths: Sequence[str]) -> list[str]:
    import hashlib

    out = []
    for p in paths:
        try:
            out.append(hashlib.sha256((root / p).read_bytes()).hexdigest())
        except FileNotFoundError:
            raise InputError(f"{root / p}: image not found") from None
    return out


def copies_in_gallery(
    image_root: str | os.PathLike[str], query_paths: Sequence[str], gallery_paths: Sequence[str]
) -> np.ndarray:
    """For each query image, the index of the first gallery image with the same file content
    (sha256), or -1: DyML's galleries hold a copy of every query under another name."""
    root = Path(image_root)
    first: dict[str, int] = {}
    for j, h in enumerate(_file_hashes(root, gallery_paths)):
        first.setdefault(h, j)
    return np.array([first.get(h, -1) for h in _file_hashes(root, query_paths)], dtype=np.int64)


def per_query_with_copies(
    q_emb: np.ndarray,
    q_labels: np.ndarray,
    g_emb: np.ndarray,
    g_labels: np.ndarray,
    copy: np.ndarray,
    **metric_options: Any,
) -> tuple[dict[str, Any], int]:
    """Per-query values (``reduce=False``) of queries against a gallery, a query's own copy
    (``copy``, :func:`copies_in_gallery`) left out of its ranking, and the number of gallery items
    each query is ranked against: when every query has a copy, each is ranked from its copy with
    that copy excluded by index (the authors' drop of the first neighbour); otherwise the plain
    query vs gallery values."""
    from hglv2.metrics.conventions import evaluate_convention

    if len(copy) and (copy >= 0).all():
        per = evaluate_convention(g_emb, g_labels, reduce=False, **metric_options)
        return {k: np.asarray(v)[copy] for k, v in per.items()}, len(g_emb) - 1
    return evaluate_convention(q_emb, q_labels, g_emb, g_labels, reduce=False, **metric_options), len(g_emb)


def evaluate_with_copies(
    q_emb: np.ndarray,
    q_labels: np.ndarray,
    g_emb: np.ndarray,
    g_labels: np.ndarray,
    copy: np.ndarray,
    **metric_options: Any,
) -> dict[str, Any]:
    """:func:`per_query_with_copies` reduced to means (the plain query vs gallery metrics when
    some query has no copy). Adds ``queries_with_copy_in_gallery``."""
    from hglv2.metrics.conventions import evaluate_convention
    from hglv2.metrics.evaluate import reduce_per_query

    n_copies = int((copy >= 0).sum())
    if n_copies == len(copy) and n_copies > 0:
        per, n_gallery = per_query_with_copies(q_emb, q_labels, g_emb, g_labels, copy, **metric_options)
        res = {"n_queries": len(copy), "n_gallery": n_gallery, **reduce_per_query(per)}
    else:
        res = evaluate_convention(q_emb, q_labels, g_emb, g_labels, **metric_options)
    res["queries_with_copy_in_gallery"] = n_copies
    return res


def evaluate_dyml_sets(
    checkpoint: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    model_and_config: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    **metric_options: Any,
) -> dict[str, Any]:
    """DyML-Vehicle / Animal (``hglv2 convert dyml-*``): the three test sets ``query_<g>`` against
    ``gallery_<g>`` (g = fine, middle, coarse), each with its one label, and their mean.

    The authors' evaluation (``suprank/config/dataset/dyml_vehicle.yaml``: ``gallery_distractor``,
    "the gallery set is already composed of the queries"; ``suprank/engine/accuracy_calculator.py``
    then drops the first neighbour of each query) removes each query's own copy from its ranking.
    Here the copy is found by content (sha256 of the image file): when every query of a set has a
    copy in the gallery, each query is ranked from its copy with that copy excluded by index; when
    none has, against the whole gallery. The number of queries with a copy is reported per set.
    """
    from hglv2.dataset import HGLDv2Dataset

    dev = resolve_device(device)
    model, cfg = model_and_config or load_trained_model(checkpoint, dev, config)
    data = Path(data)
    root = _image_root(data, image_root)
    transform = build_transform(cfg, train=False)
    kw = dict(batch_size=batch_size, device=dev, num_workers=num_workers, amp=amp, progress=progress)
    results: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for g in ("fine", "middle", "coarse"):
        qs, gs = (
            HGLDv2Dataset(data / f"{s}_{g}.parquet", root, transform=transform) for s in ("query", "gallery")
        )
        q_emb = embed_images(model, qs, desc=f"query_{g}", **kw)
        g_emb = embed_images(model, gs, desc=f"gallery_{g}", **kw)
        if out_dir is not None:
            for name, emb, lab in ((f"query_{g}", q_emb, qs.labels), (f"gallery_{g}", g_emb, gs.labels)):
                files[name] = _save_embeddings(Path(out_dir), name, emb, lab)
        copy = copies_in_gallery(root, split_paths(data, f"query_{g}"), split_paths(data, f"gallery_{g}"))
        results[g] = evaluate_with_copies(q_emb, qs.labels, g_emb, gs.labels, copy, **metric_options)
    keys = [
        k
        for k, v in results["fine"].items()
        if isinstance(v, float) and all(k in r for r in results.values())
    ]
    results["mean"] = {k: float(np.mean([results[g][k] for g in ("fine", "middle", "coarse")])) for k in keys}
    return {"query": "query_<g>", "gallery": "gallery_<g>", "files": files, "results": results}


def _revisited_transform(imsize: int):
    import torchvision.transforms as T

    steps: list[Any] = [T.Resize((imsize, imsize))] if imsize > 0 else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def evaluate_revisited(
    checkpoint: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    name: str,
    *,
    imsize: int = 224,
    out_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    model_and_config: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Revisited Oxford/Paris ``name`` under ``data`` (module docstring); returns the metrics of
    :func:`~hglv2.metrics.revisited.revisited_map` (``mAP_medium``, ``mAP_hard``, ...)."""
    from hglv2.metrics.revisited import load_gnd, revisited_map

    if name not in REVISITED:
        raise InputError(f"--protocol {name!r}: expected one of {', '.join(REVISITED)}")
    data = Path(data)
    gnd_file = next((data / f for f in (f"gnd_{name}.pkl", f"gnd_{name}.json") if (data / f).is_file()), None)
    if gnd_file is None:
        raise InputError(f"{data}: no gnd_{name}.pkl (or .json) here")
    gnd = load_gnd(gnd_file)
    dev = resolve_device(device)
    model, _ = model_and_config or load_trained_model(checkpoint, dev, config)
    transform = _revisited_transform(imsize)
    paths = {k: [f"jpg/{x}.jpg" for x in gnd[k]] for k in ("qimlist", "imlist")}
    q = ImageList(data, paths["qimlist"], transform, boxes=[g["bbx"] for g in gnd["gnd"]])
    g = ImageList(data, paths["imlist"], transform)
    kw = dict(
        batch_size=batch_size if imsize > 0 else 1,
        device=dev,
        num_workers=num_workers,
        amp=amp,
        progress=progress,
    )
    q_emb = embed_images(model, q, desc=f"{name} queries", **kw)
    g_emb = embed_images(model, g, desc=f"{name} gallery", **kw)
    if out_dir is not None:
        out = Path(out_dir)
        _save_npy(out / f"{name}_query_embeddings.npy", q_emb)
        _save_npy(out / f"{name}_gallery_embeddings.npy", g_emb)
    res = revisited_map(q_emb @ g_emb.T, gnd["gnd"])
    return {"protocol": name, "n_queries": len(q), "n_gallery": len(g), "imsize": imsize, **res}


def landmark_table(
    checkpoint: str | os.PathLike[str],
    *,
    roxford: str | os.PathLike[str],
    rparis: str | os.PathLike[str],
    gldv2: str | os.PathLike[str],
    gldv2_image_root: str | os.PathLike[str] | None = None,
    imsize: int = 224,
    config: str | os.PathLike[str] | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    hap_convention: str = "hglv2",
    model_and_config: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The paper's landmark table for one checkpoint (module docstring), fractions (x100 in the paper)."""

    dev = resolve_device(device)
    loaded = model_and_config or load_trained_model(checkpoint, dev, config)
    common = dict(device=device, batch_size=batch_size, num_workers=num_workers, amp=amp, progress=progress)
    ox = evaluate_revisited(None, roxford, "roxford5k", imsize=imsize, model_and_config=loaded, **common)
    pa = evaluate_revisited(None, rparis, "rparis6k", imsize=imsize, model_and_config=loaded, **common)
    gl = evaluate_splits(
        None,
        gldv2,
        query="query",
        gallery="index",
        image_root=gldv2_image_root,
        model_and_config=loaded,
        hap_convention=hap_convention,
        **common,
    )["results"]
    return {
        "ROxf-M": ox["mAP_medium"],
        "ROxf-H": ox["mAP_hard"],
        "RPar-M": pa["mAP_medium"],
        "RPar-H": pa["mAP_hard"],
        "GLDv2 mAP@100": gl["mAP@100_level0"],
        "H-AP": gl["H-AP"],
        "ASI": gl["ASI"],
        "NDCG": gl["NDCG"],
    }


def format_landmark_table(row: dict[str, Any], names: Sequence[str] | None = None) -> str:
    """The table as text, values x100 with two decimals (as printed in the paper)."""
    keys = list(names or row)
    head = " | ".join(f"{k:>13}" for k in keys)
    vals = " | ".join(f"{100 * row[k]:>13.2f}" for k in keys)
    return head + "\n" + vals
