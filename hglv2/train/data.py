"""Training data: transforms, the datasets of a config, per-image seeded augmentation, batch samplers.

:func:`prepare_data` makes sure the config's dataset exists (generating the synthetic one when its
parameters changed); :func:`build_dataset` opens a split with the config's transform;
:func:`build_batch_sampler` gives the configured sampler of :mod:`hglv2.samplers`. Random
augmentation is reproducible whatever the number of workers: :class:`SeededItems` computes item
``(index, seed)`` under its own seed, and :func:`hash_seed` derives those seeds from (run seed,
epoch, position in the epoch).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError
from hglv2.samplers import HierarchicalBatchSampler, MPerClassBatchSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchList",
    "SeededItems",
    "build_batch_sampler",
    "build_dataset",
    "build_transform",
    "hash_seed",
    "prepare_data",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(cfg: dict[str, Any], train: bool) -> Callable:
    """The image transform of ``cfg``, then ImageNet normalisation.

    Training with ``data.augment``: [Resize(``train_resize``)] + RandomResizedCrop(``image_size``,
    ``crop_scale``, ``crop_ratio``) + horizontal flip. Otherwise Resize(``resize``) + CenterCrop
    (``image_size``), where ``eval_resize: shorter`` resizes the shorter side and ``square`` resizes
    to ``resize`` x ``resize`` (``resize`` null: ``image_size``).
    """
    import torchvision.transforms as T

    d = cfg["data"]
    size = d["image_size"]
    steps: list[Any] = []
    if train and d["augment"]:
        if d.get("train_resize"):
            steps.append(T.Resize(d["train_resize"]))
        scale, ratio = tuple(d.get("crop_scale", (0.5, 1.0))), tuple(d.get("crop_ratio", (0.75, 4 / 3)))
        steps += [T.RandomResizedCrop(size, scale=scale, ratio=ratio), T.RandomHorizontalFlip()]
    else:
        r = d["resize"] or size
        steps += [T.Resize((r, r) if d.get("eval_resize") == "square" else r), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset: item ``(index, seed)`` is ``dataset[index]`` computed under ``seed``.

    The global torch RNG is restored afterwards, so random transforms depend only on the seed
    (exact resume, independent of the number of workers).
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def prepare_data(cfg: dict[str, Any], progress: bool = False) -> Path:
    """Make sure the dataset of ``cfg`` exists; generate the synthetic one if needed. Returns root."""
    d = cfg["data"]
    root = Path(d["root"])
    if d["kind"] == "synthetic":
        from hglv2.synthetic import SyntheticParams, generate, load_table

        syn = dict(d["synthetic"])
        hierarchy = syn.pop("hierarchy")
        try:
            params = SyntheticParams(**syn)
        except TypeError as exc:
            raise InputError(f"config: data.synthetic: {exc}") from None
        _, source = load_table(hierarchy)
        manifest = root / "manifest.json"
        current = False
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text("utf-8"))
                current = old.get("params") == json.loads(json.dumps(params.__dict__)) and (
                    old.get("hierarchy", {}).get("source") == source
                )
            except (ValueError, OSError, AttributeError):
                current = False
        if not current:
            generate(root, hierarchy, params, progress=progress)
    for key in ("train_split", "query_split"):
        if not (root / f"{d[key]}.parquet").is_file():
            raise InputError(f"data.{key}: {root / (d[key] + '.parquet')} does not exist")
    return root


def build_dataset(
    cfg: dict[str, Any], root: Path, split: str, train: bool, levels: list[str] | None = None
) -> HGLDv2Dataset:
    """The :class:`HGLDv2Dataset` of split ``split`` under ``root`` with the transform of ``cfg``
    (label columns ``levels``, default ``data.levels``)."""
    d = cfg["data"]
    image_root = d["image_root"]
    if isinstance(image_root, dict):  # one folder per split (GLDv2: train/, index/, test/)
        image_root = image_root.get(split)
        if image_root is None:
            raise InputError(f"data.image_root: no image folder for split {split!r}")
    image_root = Path(image_root) if image_root else root / "images"
    return HGLDv2Dataset(
        root / f"{split}.parquet",
        image_root,
        levels=levels or d["levels"],
        transform=build_transform(cfg, train),
    )


def build_batch_sampler(
    cfg: dict[str, Any], labels: np.ndarray, seed: int
) -> MPerClassBatchSampler | HierarchicalBatchSampler:
    """The configured batch sampler over the training labels (N, L).

    Rows with an unknown level (-1, an incomplete hierarchy) are left out of training: a rank loss
    would otherwise take two unknown clusters for the same one.
    """
    s = cfg["sampler"]
    masked = np.array(labels, dtype=np.int64, copy=True)
    incomplete = (masked < 0).any(axis=1)
    masked[incomplete] = -1
    try:
        if s["kind"] == "hierarchical":
            return HierarchicalBatchSampler(
                masked,
                m=s["m"],
                batch_size=s["batch_size"],
                clusters_per_batch=s["clusters_per_batch"],
                seed=seed,
                ignore_label=-1,
                max_per_class=s.get("max_per_class"),
                batches_per_super_tuple=s.get("batches_per_super_tuple"),
            )
        return MPerClassBatchSampler(
            masked,
            m=s["m"],
            batch_size=s["batch_size"],
            seed=seed,
            ignore_label=-1,
            max_per_class=s.get("max_per_class"),
        )
    except ValueError as exc:
        raise InputError(f"sampler: {exc}") from None


class BatchList(torch.utils.data.Sampler):
    """A fixed list of batches as a ``batch_sampler`` (items: ``(index, seed)`` for :class:`SeededItems`)."""

    def __init__(self, batches: list[list[tuple[int, int]]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (per-image augmentation seeds)."""
    h = hashlib.blake2b(b"\x1f".join(str(p).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1
