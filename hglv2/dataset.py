"""A torch ``Dataset`` over a Parquet split, and the batch samplers used to train rank losses.

:class:`HGLDv2Dataset` reads a split written by :mod:`hglv2.splits` (or :mod:`hglv2.synthetic`):
one row per image with the columns of :data:`hglv2.schema.SPLIT_COLUMNS`. Images come from either

- an image folder in the GLDv2 layout, ``<image_root>/a/b/c/<id>.jpg`` (the split's ``path``
  column, relative to the root), or
- the official tar shards read in place (``images_000.tar``, ``images_001.tar``, ...): the tar
  headers are scanned once when the dataset is built, and each image is then read with one
  ``pread`` at its recorded offset (no extraction, safe in DataLoader worker processes).

An item is ``dict(image=Tensor, labels=LongTensor (L,), id=str)``; ``labels`` holds the chosen
level columns (``level0`` = landmark id, coarser levels after it, -1 where unknown), so a batch's
labels are the (B, L) matrix the hierarchical losses and metrics take.

The samplers yield lists of row indices (use them as ``batch_sampler=`` of a ``DataLoader``):

- :class:`MPerClassBatchSampler`: ``batch_size / m`` distinct classes per batch, ``m`` images
  each. Every image is used about once per epoch; a class with fewer than ``m`` images is topped
  up by repeating its images (never dropped).
- :class:`HierarchicalBatchSampler`: ``clusters_per_batch`` distinct clusters per batch, each
  giving ``batch_size / clusters_per_batch`` images as ``m``-image groups of distinct classes, so
  every batch holds positives at the class level and at the cluster level. Cost is linear in the
  number of images: clusters are combined by a greedy pass over a shuffled list of cluster
  groups, never by enumerating cluster pairs.

Both are deterministic given ``(seed, epoch)`` (call ``set_epoch`` each epoch, as with
``DistributedSampler``) and DDP-aware: every replica computes the same global list of batches and
keeps batches ``rank, rank + num_replicas, ...`` (wrapping around so all replicas get the same
number of batches).
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from hglv2.errors import InputError
from hglv2.schema import LEVEL_COLUMNS

log = logging.getLogger(__name__)

__all__ = [
    "HGLDv2Dataset",
    "MPerClassBatchSampler",
    "HierarchicalBatchSampler",
    "collate_skip_none",
    "index_tar_shards",
]


def _default_transform(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 tensor (3, H, W) in [0, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).to(torch.float32).div_(255.0)


def index_tar_shards(shards: Sequence[str | os.PathLike[str]]) -> dict[str, tuple[int, int, int]]:
    """Scan tar headers once: image id (file stem) -> (shard number, data offset, size).

    Only regular files are indexed; an id found in two shards keeps its first occurrence.
    """
    index: dict[str, tuple[int, int, int]] = {}
    for k, shard in enumerate(shards):
        try:
            with tarfile.open(shard, mode="r:") as tf:
                for member in tf:
                    if not member.isreg():
                        continue
                    stem = Path(member.name).stem
                    index.setdefault(stem, (k, member.offset_data, member.size))
        except (tarfile.TarError, OSError) as exc:
            raise InputError(f"{shard}: not a readable tar file ({exc})") from None
    return index


def _resolve_levels(levels: Sequence[int | str], columns: Sequence[str]) -> list[str]:
    out = []
    for lev in levels:
        name = LEVEL_COLUMNS[lev] if isinstance(lev, int) and 0 <= lev < len(LEVEL_COLUMNS) else lev
        if not isinstance(name, str) or name not in columns:
            raise InputError(f"level {lev!r} is not a column of the split (have {', '.join(columns)})")
        out.append(name)
    return out


def _safe_relpath(path: str, image_id: str, where: str) -> str:
    if not path or path.startswith(("/", "\\")) or "\\" in path or ".." in path.split("/") or ":" in path:
        raise InputError(f"{where}: image {image_id!r} has an unsafe path {path!r}")
    return path


class HGLDv2Dataset(Dataset):
    """Images of one split with their hierarchical labels.

    Args:
        split: a split Parquet file (columns ``id``, ``path`` and the level columns).
        image_root: the image folder (GLDv2 ``a/b/c/<id>.jpg`` layout), a folder of tar shards,
            or a list of tar shard paths.
        levels: level columns to return, as names (``"level0"``) or indices into
            :data:`hglv2.schema.LEVEL_COLUMNS`; default all three (finest first).
        transform: called on the PIL RGB image; default: float32 tensor (3, H, W) in [0, 1].
        on_error: ``"raise"`` (default): a missing or unreadable image raises
            :class:`~hglv2.errors.InputError` naming its id. ``"skip"``: the item is ``None``, it is
            counted in ``self.skipped`` and logged; use :func:`collate_skip_none` as the
            ``collate_fn`` so batches drop it and report ``n_skipped``.
        layout: ``"auto"`` (tar if ``image_root`` is a list of tars or a folder holding ``*.tar``),
            ``"folder"`` or ``"tar"``.

    Attributes:
        ids: list of image ids (N,).
        labels: int64 numpy array (N, L).
        skipped: number of items skipped in this process (``on_error="skip"``).
    """

    def __init__(
        self,
        split: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        levels: Sequence[int | str] = LEVEL_COLUMNS,
        transform: Callable[[Image.Image], Any] | None = None,
        on_error: str = "raise",
        layout: str = "auto",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if layout not in ("auto", "folder", "tar"):
            raise ValueError(f"layout must be 'auto', 'folder' or 'tar', not {layout!r}")
        split = Path(split)
        if not split.exists():
            raise InputError(f"{split}: no such split file")
        try:
            schema_names = pq.read_schema(split).names
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise InputError(f"{split}: not a Parquet file ({exc})") from None
        self.level_columns = _resolve_levels(levels, schema_names)
        for col in ("id", "path"):
            if col not in schema_names:
                raise InputError(f"{split}: missing column {col!r}")
        table = pq.read_table(split, columns=["id", "path", *self.level_columns])
        self.split_path = split
        self.ids: list[str] = table.column("id").to_pylist()
        paths = table.column("path").to_pylist()
        cols = [table.column(c).fill_null(-1).to_numpy().astype(np.int64) for c in self.level_columns]
        self.labels = np.stack(cols, axis=1) if cols else np.zeros((len(self.ids), 0), dtype=np.int64)
        self.transform = transform if transform is not None else _default_transform
        self.on_error = on_error
        self.skipped = 0

        if isinstance(image_root, (str, os.PathLike)):
            root = Path(image_root)
            shards = sorted(root.glob("*.tar")) if root.is_dir() else []
            if layout == "tar" and not shards:
                raise InputError(f"{root}: no *.tar shards found")
        else:
            root = None
            shards = [Path(p) for p in image_root]
            if layout == "folder":
                raise InputError("layout='folder' needs a single image folder, not a list of tars")
        use_tar = layout == "tar" or (layout == "auto" and bool(shards))
        self.image_root = root
        self.shards: list[Path] = shards if use_tar else []
        self._paths: list[str] | None = None
        self._loc: np.ndarray | None = None
        if use_tar:
            index = index_tar_shards(self.shards)
            loc = np.full((len(self.ids), 3), -1, dtype=np.int64)
            for i, image_id in enumerate(self.ids):
                hit = index.get(image_id)
                if hit is not None:
                    loc[i] = hit
            self._loc = loc
        else:
            if root is None or not root.is_dir():
                raise InputError(f"{image_root}: no such image folder")
            where = str(split)
            self._paths = [_safe_relpath(p or "", i, where) for p, i in zip(paths, self.ids, strict=True)]
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.ids)

    def _read_tar(self, index: int) -> bytes:
        assert self._loc is not None
        shard, offset, size = (int(v) for v in self._loc[index])
        if shard < 0:
            raise FileNotFoundError(f"not found in any of the {len(self.shards)} tar shards")
        if self._pid != os.getpid():  # fresh descriptors in each worker process
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"tar shard {self.shards[shard].name} is truncated")
        return data

    def _load(self, index: int) -> Image.Image:
        if self._loc is not None:
            data = self._read_tar(index)
        else:
            assert self._paths is not None and self.image_root is not None
            data = (self.image_root / self._paths[index]).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image_id = self.ids[index]
        try:
            img = self._load(index)
        except FileNotFoundError as exc:
            return self._fail(image_id, f"missing ({exc.strerror or exc})")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return self._fail(image_id, f"unreadable ({type(exc).__name__}: {exc})")
        return {
            "image": self.transform(img),
            "labels": torch.from_numpy(self.labels[index].copy()),
            "id": image_id,
        }

    def _fail(self, image_id: str, problem: str) -> None:
        msg = f"{self.split_path.name}: image {image_id} is {problem}"
        if self.on_error == "raise":
            raise InputError(msg)
        self.skipped += 1
        log.warning("skipping %s", msg)
        return None

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}
        state["_pid"] = -1
        return state


def collate_skip_none(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """``collate_fn`` for ``on_error="skip"``: drop ``None`` items; ``n_skipped`` counts them.

    Returns ``dict(image=(B', ...), labels=(B', L), id=list[str], n_skipped=int)``; if every item
    was skipped, ``image``/``labels`` are empty tensors.
    """
    kept = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return {"image": torch.empty(0), "labels": torch.empty(0, dtype=torch.long), "id": [],
                "n_skipped": n_skipped}
    out = default_collate(kept)
    out["n_skipped"] = n_skipped
    return out


# --------------------------------------------------------------------------------------- samplers


def _class_chunks(
    indices: np.ndarray, m: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split one class's (shuffled) indices into groups of exactly ``m``.

    ``ceil(n / m)`` groups; the last one is topped up with other images of the class (drawn with
    replacement when the class has fewer than ``m`` images), so every image appears at least once.
    """
    idx = rng.permutation(indices)
    n = len(idx)
    n_chunks = -(-n // m)
    short = n_chunks * m - n
    if short:
        pad = rng.choice(idx, size=short, replace=n < short or n < m)
        idx = np.concatenate([idx, pad])
    return [idx[k * m:(k + 1) * m] for k in range(n_chunks)]


def _spread_order(items: list[tuple[int, Any]], rng: np.random.Generator) -> np.ndarray:
    """A random order of ``items`` that spreads each key's items evenly over the sequence.

    The j-th of the n items of a key gets the sort key ``(j + u) / n`` with ``u ~ U[0, 1)`` drawn
    per item, so items of one key land about ``len(items) / n`` positions apart and rarely meet
    in the same group (a plain shuffle makes such collisions, and leftovers at the end, common).
    """
    keys = np.fromiter((k for k, _ in items), dtype=np.int64, count=len(items))
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    counts = np.diff(np.r_[starts, len(sk)])
    rank_in_key = np.arange(len(sk)) - np.repeat(starts, counts)
    pos = np.empty(len(items))
    pos[order] = (rank_in_key + rng.random(len(sk))) / np.repeat(counts, counts)
    return np.argsort(pos, kind="stable")


def _group_distinct(
    items: list[tuple[int, Any]], size: int, rng: np.random.Generator
) -> list[list[Any]]:
    """Greedily pack ``(key, payload)`` items into groups of ``size`` payloads with distinct keys.

    One pass over the items in the order of :func:`_spread_order`; an item whose key is already
    in the current group waits in a queue and is placed first in a later group. When only items of
    keys already in the group remain (e.g. one dominant class at the very end), the group is
    completed with random items of other keys. Every item lands in exactly one group (the padding
    items are extra copies); there are at least ``ceil(len(items) / size)`` groups.
    """
    order = iter(_spread_order(items, rng).tolist())
    waiting: deque[tuple[int, Any]] = deque()
    groups: list[list[Any]] = []
    while True:
        current: list[Any] = []
        keys: set[int] = set()
        for _ in range(len(waiting)):
            if len(current) == size:
                break
            item = waiting.popleft()
            if item[0] in keys:
                waiting.append(item)
            else:
                keys.add(item[0])
                current.append(item[1])
        while len(current) < size:
            j = next(order, None)
            if j is None:
                break
            item = items[j]
            if item[0] in keys:
                waiting.append(item)
            else:
                keys.add(item[0])
                current.append(item[1])
        if not current:
            return groups
        if len(current) < size:
            _fill(current, keys, items, size, rng)
        groups.append(current)


def _fill(current: list[Any], keys: set[int], items: list[tuple[int, Any]], size: int,
          rng: np.random.Generator) -> None:
    """Complete ``current`` to ``size`` with random items whose keys are not in it yet."""
    for j in rng.permutation(len(items)):
        if len(current) == size:
            return
        key, payload = items[j]
        if key not in keys:
            keys.add(key)
            current.append(payload)


def _check_ddp(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas (got {num_replicas}, {rank})")


def _as_1d_labels(labels: Any, column: int) -> np.ndarray:
    arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if arr.ndim == 2:
        arr = arr[:, column]
    if arr.ndim != 1:
        raise ValueError("labels must be (N,) or (N, L)")
    return arr.astype(np.int64, copy=False)


def _groups_by_label(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique labels and, for each, the indices having it (one stable argsort, O(N log N))."""
    order = np.argsort(labels, kind="stable")
    uniq, starts = np.unique(labels[order], return_index=True)
    return uniq, np.split(order, starts[1:])


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared epoch/DDP logic: subclasses build the global batch list of an epoch."""

    def __init__(self, seed: int, num_replicas: int, rank: int) -> None:
        _check_ddp(num_replicas, rank)
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``iter()`` yields (call once per epoch)."""
        self.epoch = int(epoch)

    def _build(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def _global(self) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._cache = (self.epoch, self._build(rng))
        return self._cache[1]

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches for all replicas (rank r takes batches r, r + R, ...)."""
        return [b.tolist() for b in self._global()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global()
        n = len(batches)
        for i in range(len(self)):
            yield batches[(self.rank + self.num_replicas * i) % n].tolist()

    def __len__(self) -> int:
        """Batches of this replica this epoch: ``ceil(n_global / num_replicas)`` (same on all ranks)."""
        return -(-len(self._global()) // self.num_replicas)


class MPerClassBatchSampler(_EpochBatchSampler):
    """Batches of ``batch_size // m`` distinct classes with ``m`` images each.

    Per epoch, each class's images are shuffled and cut into groups of ``m`` (the last group topped
    up from the same class, with replacement if the class has fewer than ``m`` images); the groups
    are put in a random order that spreads each class over the epoch and packed greedily into
    batches of distinct classes. So every image is used at least once per epoch and no class is
    dropped. The number of batches is ``ceil(G / P)`` (G groups, P classes per batch) unless one
    class holds more than ``1/P`` of the groups, which needs a few more; ``len(self)`` is exact
    for the current epoch.

    Args:
        labels: (N,) class ids, or (N, L) with the class in column ``level`` (default 0).
        m: images per class in a batch.
        batch_size: a multiple of ``m``.
        seed: base seed; the epoch's batches depend only on ``(seed, epoch)``.
        num_replicas, rank: DDP world size and this process's rank; replicas get disjoint batches
            (wrapping around at the end so all get ``len(self)`` batches).
        level: label column of the class when ``labels`` is 2-D.
        ignore_label: rows with this class id are left out (default None: keep all).
    """

    def __init__(self, labels: Any, m: int, batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, level: int = 0, ignore_label: int | None = None) -> None:
        if m < 1 or batch_size < m or batch_size % m:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        super().__init__(seed, num_replicas, rank)
        lab = _as_1d_labels(labels, level)
        keep = np.arange(len(lab)) if ignore_label is None else np.flatnonzero(lab != ignore_label)
        self.classes, groups = _groups_by_label(lab[keep])
        self.class_indices = [keep[g] for g in groups]
        self.m, self.batch_size = m, batch_size
        self.per_batch = batch_size // m
        if len(self.classes) < self.per_batch:
            raise ValueError(
                f"batch_size // m = {self.per_batch} classes per batch, but only {len(self.classes)} classes"
            )

    def _build(self, rng: np.random.Generator) -> list[np.ndarray]:
        items: list[tuple[int, Any]] = []
        for c, idx in enumerate(self.class_indices):
            items.extend((c, chunk) for chunk in _class_chunks(idx, self.m, rng))
        return [np.concatenate(g) for g in _group_distinct(items, self.per_batch, rng)]


class HierarchicalBatchSampler(_EpochBatchSampler):
    """Batches drawn from ``clusters_per_batch`` clusters, ``m`` images per class.

    Each batch has ``clusters_per_batch`` distinct clusters (labels at ``cluster_level``); each
    cluster contributes ``batch_size // clusters_per_batch`` images as groups of ``m`` images of
    distinct classes (``class_level``), so a batch holds class-level and cluster-level positives.

    Per epoch: (1) each class is cut into ``m``-groups as in :class:`MPerClassBatchSampler`;
    (2) within each cluster the groups are packed into cluster slots of ``P = batch_size //
    (clusters_per_batch * m)`` distinct classes (a cluster with fewer than ``P`` classes repeats
    some of them); (3) all cluster slots are ordered at random (spread per cluster) and packed
    greedily into batches of distinct clusters. Every step is linear in the number of groups (up
    to sorting): there is no enumeration of cluster pairs, so tens of thousands of classes and
    hundreds of clusters are cheap.

    Rows whose cluster label is ``ignore_label`` (default -1, "hierarchy unknown") are left out;
    their number is ``n_excluded``.

    Args:
        labels: (N, L) int labels.
        m: images per class in a batch.
        batch_size: a multiple of ``clusters_per_batch * m``.
        clusters_per_batch: distinct clusters per batch (>= 2 gives cluster-level negatives).
        class_level, cluster_level: label columns of the class and of the cluster.
        seed, num_replicas, rank: as in :class:`MPerClassBatchSampler`.
    """

    def __init__(self, labels: Any, m: int, batch_size: int, clusters_per_batch: int = 2,
                 class_level: int = 0, cluster_level: int = 1, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, ignore_label: int | None = -1) -> None:
        if m < 1 or clusters_per_batch < 1 or batch_size < 1 or batch_size % (m * clusters_per_batch):
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of clusters_per_batch * m "
                f"({clusters_per_batch} * {m})"
            )
        super().__init__(seed, num_replicas, rank)
        arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if arr.ndim != 2:
            raise ValueError("labels must be (N, L)")
        cls = arr[:, class_level].astype(np.int64)
        clu = arr[:, cluster_level].astype(np.int64)
        keep = np.arange(len(cls)) if ignore_label is None else np.flatnonzero(clu != ignore_label)
        self.n_excluded = len(cls) - len(keep)
        self.m, self.batch_size = m, batch_size
        self.clusters_per_batch = clusters_per_batch
        self.per_slot = batch_size // (clusters_per_batch * m)
        self.clusters, cluster_groups = _groups_by_label(clu[keep])
        if len(self.clusters) < clusters_per_batch:
            raise ValueError(
                f"clusters_per_batch = {clusters_per_batch}, but only {len(self.clusters)} clusters"
            )
        self.cluster_classes: list[list[np.ndarray]] = []
        for g in cluster_groups:
            rows = keep[g]
            _, class_groups = _groups_by_label(cls[rows])
            self.cluster_classes.append([rows[cg] for cg in class_groups])

    def _cluster_slots(self, per_class: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        items: list[tuple[int, Any]] = []
        for c, idx in enumerate(per_class):
            items.extend((c, chunk) for chunk in _class_chunks(idx, self.m, rng))
        if len(per_class) >= self.per_slot:
            groups = _group_distinct(items, self.per_slot, rng)
        else:  # too few classes in this cluster: its slots repeat classes
            flat = [items[j][1] for j in rng.permutation(len(items))]
            n = -(-len(flat) // self.per_slot)
            flat += [flat[j] for j in rng.integers(0, len(flat), size=n * self.per_slot - len(flat))]
            groups = [flat[k * self.per_slot:(k + 1) * self.per_slot] for k in range(n)]
        return [np.concatenate(g) for g in groups]

    def _build(self, rng: np.random.Generator) -> list[np.ndarray]:
        slots: list[tuple[int, Any]] = []
        for k, per_class in enumerate(self.cluster_classes):
            slots.extend((k, s) for s in self._cluster_slots(per_class, rng))
        return [np.concatenate(b) for b in _group_distinct(slots, self.clusters_per_batch, rng)]
