"""Training data: the datasets of a config, per-image seeded augmentation, loaders.

:func:`prepare_data` makes sure the config's dataset exists (generating the synthetic one when its
parameters changed); :func:`build_dataset` opens a split with the config's
:class:`~hglv2.transforms.ImageTransform`; :func:`build_batch_sampler` gives the configured sampler of
:mod:`hglv2.samplers`. Random augmentation is reproducible whatever the number of workers:
:class:`SeededItems` computes item ``(index, seed)`` with a ``torch.Generator`` seeded with
``seed`` (no global RNG involved), and :func:`hash_seed` derives those seeds from (run seed,
epoch, position in the epoch).

The data path is built for throughput (the transforms of :mod:`hglv2.transforms` decode at a
reduced JPEG scale and give uint8 items); :class:`EpochBatches` chains the epochs so one
``DataLoader`` (its workers and its prefetch queue) serves the whole run, with no pipeline restart
at each epoch boundary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError
from hglv2.samplers import HierarchicalBatchSampler, MPerClassBatchSampler
from hglv2.splits import manifest_image_root
from hglv2.transforms import build_transform

__all__ = [
    "BatchList",
    "EpochBatches",
    "SeededItems",
    "build_batch_sampler",
    "build_dataset",
    "build_train_loader",
    "hash_seed",
    "prepare_data",
]


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset: item ``(index, seed)`` is ``dataset[index]`` with its randomness from ``seed``.

    When the dataset has a ``load(index, generator)`` method and a transform with
    ``lazy_decode`` (:class:`~hglv2.dataset.HGLDv2Dataset` with an ``ImageTransform``), the
    item is computed with a fresh ``torch.Generator`` seeded with ``seed`` (about 2 us). Any other
    transform draws from the global torch RNG: the item is then computed under
    ``torch.manual_seed(seed)`` and the global state restored afterwards (about 100x slower). Either
    way random transforms depend only on the seed (exact resume, independent of the number of
    workers), and the same seed gives the same crop on both paths.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        load = getattr(dataset, "load", None)
        lazy = getattr(getattr(dataset, "transform", None), "lazy_decode", False)
        self._load = load if callable(load) and lazy else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if self._load is not None:
            return self._load(index, torch.Generator().manual_seed(seed))
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
    (label columns ``levels``, default ``data.levels``; images under ``data.image_root``, else
    :func:`hglv2.splits.manifest_image_root`)."""
    d = cfg["data"]
    image_root = d["image_root"]
    if isinstance(image_root, dict):  # one folder per split (GLDv2: train/, index/, test/)
        image_root = image_root.get(split)
        if image_root is None:
            raise InputError(f"data.image_root: no image folder for split {split!r}")
    image_root = Path(image_root) if image_root else manifest_image_root(root, option="data.image_root")
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


class EpochBatches(torch.utils.data.Sampler):
    """The batches of consecutive epochs as one ``batch_sampler``, from batch ``start`` of
    ``epoch`` on, without end: one ``DataLoader`` serves the whole run, so its workers keep loading
    across epoch boundaries (no restart, no empty prefetch queue).

    Args:
        epoch_batches: ``(epoch, start) -> (batches in the epoch, its batches from start on)``.
        epoch, start: where to begin (a resumed run begins where it stopped).

    ``lengths[e]`` is the number of batches of epoch ``e``, known once the loader has asked for
    that epoch's first batch, which is before the loader yields it.
    """

    def __init__(
        self,
        epoch_batches: Callable[[int, int], tuple[int, list[list[tuple[int, int]]]]],
        epoch: int = 0,
        start: int = 0,
    ) -> None:
        self.epoch_batches = epoch_batches
        self.epoch, self.start = epoch, start
        self.lengths: dict[int, int] = {}

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        while True:
            n, batches = self.epoch_batches(epoch, start)
            if not batches:
                raise InputError("sampler: the training split gives no batch")
            self.lengths[epoch] = n
            yield from batches
            epoch, start = epoch + 1, 0


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_sampler: torch.utils.data.Sampler,
    num_workers: int,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """The training ``DataLoader``: ``num_workers`` processes, pinned memory on CUDA (so the copy
    to the device with ``non_blocking`` overlaps), a fixed generator for the workers' base seed
    (the main process's global RNG is not touched, so resume stays exact)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        pin_memory=device.type == "cuda",
    )


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (per-image augmentation seeds)."""
    h = hashlib.blake2b(b"\x1f".join(str(p).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1
