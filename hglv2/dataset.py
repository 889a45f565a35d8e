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
  each. Every image is used at least once per epoch (the last group of a class is topped up from
  that class); a class with fewer than ``m`` images repeats its images (never dropped).
- :class:`HierarchicalBatchSampler`: ``clusters_per_batch`` distinct clusters per batch, each
  giving ``batch_size / clusters_per_batch`` images as ``m``-image groups of distinct classes, so
  every batch holds positives at the class level and at the cluster level. An epoch costs a few
  numpy sorts over the images: cluster slots are combined by packing a shuffled list, never by
  enumerating cluster pairs.

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
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from hglv2.errors import InputError
from hglv2.fileio import write_parquet
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


def _stamp(path: Path) -> int:
    """A fingerprint of a shard file that changes when it is rewritten (size and mtime)."""
    try:
        st = path.stat()
    except OSError:
        return -1
    return hash((st.st_size, st.st_mtime_ns)) & ((1 << 62) - 1)


def index_tar_shards(
    shards: Sequence[str | os.PathLike[str]], cache: str | os.PathLike[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    """Scan tar headers once: image id (file stem) -> (shard number, data offset, size).

    Only regular files are indexed; an id found in two shards keeps its first occurrence. With
    ``cache`` (a Parquet file), the index is read from it when it was built from shards of the
    same names, sizes and modification times, and otherwise built and written there
    (atomically), so scanning the headers of hundreds of shards happens once.
    """
    shards = [Path(p) for p in shards]
    stamp = [(p.name, _stamp(p)) for p in shards]
    if cache is not None and Path(cache).is_file():
        try:
            t = pq.read_table(cache)
            names, sizes = t["shard_name"].to_pylist(), t["shard_stamp"].to_pylist()
            if sorted(set(zip(names, sizes, strict=True))) == sorted(set(stamp)) or (not names and not stamp):
                pos = {name: k for k, (name, _) in enumerate(stamp)}
                return {
                    i: (pos[n], o, z)
                    for i, n, o, z in zip(
                        t["id"].to_pylist(),
                        names,
                        t["offset"].to_pylist(),
                        t["size"].to_pylist(),
                        strict=True,
                    )
                }
        except (OSError, KeyError, ValueError, pa.ArrowException):
            pass  # unreadable or stale cache: rebuild it
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
    if cache is not None:
        vals = list(index.values())
        write_parquet(
            pa.table(
                {
                    "id": pa.array(list(index), pa.string()),
                    "shard_name": pa.array([stamp[v[0]][0] for v in vals], pa.string()),
                    "shard_stamp": pa.array([stamp[v[0]][1] for v in vals], pa.int64()),
                    "offset": pa.array([v[1] for v in vals], pa.int64()),
                    "size": pa.array([v[2] for v in vals], pa.int64()),
                }
            ),
            cache,
        )
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
        tar_index: optional Parquet file caching the tar member index (see
            :func:`index_tar_shards`); built on first use, reused while the shards are unchanged.

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
        tar_index: str | os.PathLike[str] | None = None,
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
            index = index_tar_shards(self.shards, cache=tar_index)
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
        return {
            "image": torch.empty(0),
            "labels": torch.empty(0, dtype=torch.long),
            "id": [],
            "n_skipped": n_skipped,
        }
    out = default_collate(kept)
    out["n_skipped"] = n_skipped
    return out


# --------------------------------------------------------------------------------------- samplers


def _class_chunks(classes: np.ndarray, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut every class's images, in a random order, into groups of exactly ``m`` row indices.

    Args:
        classes: (N,) dense class number of each row (0..C-1).
    Returns:
        chunks (G, m) row indices and chunk_class (G,). Class ``c`` with ``n_c`` images gets
        ``ceil(n_c / m)`` groups; its last group is topped up with the first images of its own
        random order (distinct from the ones already in that group when ``n_c >= m``; a class with
        fewer than ``m`` images repeats its images). Every row is in at least one group.
    """
    order = _argsort_random_within(classes, rng)  # by class, random within a class
    counts = np.bincount(classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_groups = -(-counts // m)
    padded = n_groups * m
    # position p (0..padded_c-1) of class c takes its (p mod n_c)-th image in the random order
    cls_of_slot = np.repeat(np.arange(len(counts)), padded)
    slot_start = np.concatenate([[0], np.cumsum(padded)[:-1]])
    p = np.arange(padded.sum()) - np.repeat(slot_start, padded)
    rows = order[starts[cls_of_slot] + p % counts[cls_of_slot]]
    return rows.reshape(-1, m), np.repeat(np.arange(len(counts)), n_groups)


def _argsort_random_within(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorted by ``keys`` (non-negative ints < 2**31), in a random order within a key."""
    noise = rng.integers(0, 2**32, size=len(keys), dtype=np.uint64)
    return np.argsort((keys.astype(np.uint64) << np.uint64(32)) | noise)


def _spread_order(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of items that spreads each key's items evenly over the sequence.

    The j-th of the n items of a key gets the sort key ``(j + (u + e_j) / 2) / n`` with a random
    phase ``u`` per key and a jitter ``e_j`` per item (both ``U[0, 1)``), so consecutive items of a
    key are at least ``len(keys) / (2 n)`` positions apart and rarely meet in the same group (a
    plain shuffle makes such collisions common), while keys mix at random.
    """
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = _argsort_random_within(keys, rng)
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    counts = np.diff(np.r_[starts, len(sk)])
    rank_in_key = np.arange(len(sk)) - np.repeat(starts, counts)
    phase = np.repeat(rng.random(len(starts)), counts)
    pos = np.empty(len(keys))
    pos[order] = (rank_in_key + 0.5 * (phase + rng.random(len(sk)))) / np.repeat(counts, counts)
    return np.argsort(pos, kind="stable")


def _pack(keys: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pack items into groups of ``size`` with distinct keys; returns (n_groups, size) item indices.

    Items are put in :func:`_spread_order` and cut into consecutive groups; the few groups that
    hold a key twice, and the remainder, are re-packed greedily: an item whose key is already in
    the current group waits and goes first into a later group; when only such items are left (one
    dominant key at the end), the group is completed with random items of other keys (extra
    copies). Every item lands in a group; the group order is shuffled. Needs ``size`` distinct keys.
    """
    order = _spread_order(keys, rng)
    n_full = len(order) // size
    rows = order[: n_full * size].reshape(n_full, size)
    sk = np.sort(keys[rows], axis=1)
    bad = (sk[:, 1:] == sk[:, :-1]).any(axis=1) if size > 1 else np.zeros(n_full, dtype=bool)
    rest = np.concatenate([rows[bad].ravel(), order[n_full * size :]])
    groups = [rows[~bad]]
    if len(rest):
        groups.append(np.asarray(_greedy(rest, keys, size, rng), dtype=np.int64).reshape(-1, size))
    out = np.concatenate(groups)
    return out[rng.permutation(len(out))]


def _greedy(items: np.ndarray, keys: np.ndarray, size: int, rng: np.random.Generator) -> list[int]:
    waiting: deque[int] = deque()
    stream = iter(items.tolist())
    out: list[int] = []
    while True:
        current: list[int] = []
        used: set[int] = set()
        for _ in range(len(waiting)):
            if len(current) == size:
                break
            j = waiting.popleft()
            if keys[j] in used:
                waiting.append(j)
            else:
                used.add(int(keys[j]))
                current.append(j)
        while len(current) < size:
            j = next(stream, None)
            if j is None:
                break
            if keys[j] in used:
                waiting.append(j)
            else:
                used.add(int(keys[j]))
                current.append(j)
        if not current:
            return out
        while len(current) < size:  # complete with random items of keys not in the group
            for j in rng.integers(0, len(keys), size=4 * size).tolist():
                if len(current) < size and keys[j] not in used:
                    used.add(int(keys[j]))
                    current.append(j)
        out.extend(current)


def _check_ddp(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas (got {num_replicas}, {rank})")


def _as_array(labels: Any) -> np.ndarray:
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared epoch/DDP logic: subclasses build the global (n_batches, batch_size) array of an epoch."""

    def __init__(self, seed: int, num_replicas: int, rank: int) -> None:
        _check_ddp(num_replicas, rank)
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``iter()`` yields (call once per epoch)."""
        self.epoch = int(epoch)

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _global(self) -> np.ndarray:
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._cache = (self.epoch, self._build(rng))
        return self._cache[1]

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches for all replicas (rank r takes batches r, r + R, ...)."""
        return self._global().tolist()

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
    up from the same class; a class with fewer than ``m`` images repeats its images); the groups
    are put in a random order that spreads each class over the epoch and packed into batches of
    distinct classes. So every image is used at least once per epoch and no class is dropped.
    The number of batches is ``ceil(G / P)`` (G groups, P classes per batch), a few more if one
    class holds more than ``1/P`` of the groups; ``len(self)`` is exact for the current epoch.
    Building an epoch is vectorised (numpy sorts); only the rare conflicting groups are re-packed
    in Python.

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

    def __init__(
        self,
        labels: Any,
        m: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        level: int = 0,
        ignore_label: int | None = None,
    ) -> None:
        if m < 1 or batch_size < m or batch_size % m:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        super().__init__(seed, num_replicas, rank)
        lab = _as_array(labels)
        if lab.ndim == 2:
            lab = lab[:, level]
        if lab.ndim != 1:
            raise ValueError("labels must be (N,) or (N, L)")
        lab = lab.astype(np.int64, copy=False)
        self.rows = np.arange(len(lab)) if ignore_label is None else np.flatnonzero(lab != ignore_label)
        self.classes, self.class_of_row = np.unique(lab[self.rows], return_inverse=True)
        self.m, self.batch_size = m, batch_size
        self.per_batch = batch_size // m
        if len(self.classes) < self.per_batch:
            raise ValueError(
                f"batch_size // m = {self.per_batch} classes per batch, but only {len(self.classes)} classes"
            )

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        chunks, chunk_class = _class_chunks(self.class_of_row, self.m, rng)
        groups = _pack(chunk_class, self.per_batch, rng)  # (B, P) chunk numbers
        return self.rows[chunks[groups].reshape(len(groups), -1)]


class HierarchicalBatchSampler(_EpochBatchSampler):
    """Batches drawn from ``clusters_per_batch`` clusters, ``m`` images per class.

    Each batch has ``clusters_per_batch`` distinct clusters (labels at ``cluster_level``); each
    cluster contributes ``batch_size // clusters_per_batch`` images as groups of ``m`` images of
    distinct classes (``class_level``), so a batch holds class-level and cluster-level positives.

    Per epoch: (1) each class is cut into ``m``-groups as in :class:`MPerClassBatchSampler`;
    (2) within each cluster the groups are packed into cluster slots of ``P = batch_size //
    (clusters_per_batch * m)`` distinct classes (a cluster with fewer than ``P`` classes repeats
    some of them); (3) all cluster slots are packed into batches of distinct clusters. Every step
    is a few numpy sorts over the groups: there is no enumeration of cluster pairs, so tens of
    thousands of classes and hundreds of clusters are cheap.

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

    def __init__(
        self,
        labels: Any,
        m: int,
        batch_size: int,
        clusters_per_batch: int = 2,
        class_level: int = 0,
        cluster_level: int = 1,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        ignore_label: int | None = -1,
    ) -> None:
        if m < 1 or clusters_per_batch < 1 or batch_size < 1 or batch_size % (m * clusters_per_batch):
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of clusters_per_batch * m "
                f"({clusters_per_batch} * {m})"
            )
        super().__init__(seed, num_replicas, rank)
        arr = _as_array(labels)
        if arr.ndim != 2:
            raise ValueError("labels must be (N, L)")
        cls = arr[:, class_level].astype(np.int64)
        clu = arr[:, cluster_level].astype(np.int64)
        self.rows = np.arange(len(cls)) if ignore_label is None else np.flatnonzero(clu != ignore_label)
        self.n_excluded = len(cls) - len(self.rows)
        self.m, self.batch_size = m, batch_size
        self.clusters_per_batch = clusters_per_batch
        self.per_slot = batch_size // (clusters_per_batch * m)
        self.clusters, cluster_of_row = np.unique(clu[self.rows], return_inverse=True)
        if len(self.clusters) < clusters_per_batch:
            raise ValueError(
                f"clusters_per_batch = {clusters_per_batch}, but only {len(self.clusters)} clusters"
            )
        # a "class" is a (cluster, class) pair, so a class split over two clusters stays consistent
        _, cls_dense = np.unique(cls[self.rows], return_inverse=True)
        n_cls = int(cls_dense.max()) + 1 if len(cls_dense) else 1
        pair = cluster_of_row.astype(np.int64) * n_cls + cls_dense
        uniq, self.class_of_row = np.unique(pair, return_inverse=True)
        self.cluster_of_class = uniq // n_cls

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        chunks, chunk_class = _class_chunks(self.class_of_row, self.m, rng)
        chunk_cluster = self.cluster_of_class[chunk_class]
        by_cluster = np.argsort(chunk_cluster, kind="stable")
        bounds = np.searchsorted(chunk_cluster[by_cluster], np.arange(len(self.clusters) + 1))
        slots, slot_cluster = [], []
        for k in range(len(self.clusters)):
            ids = by_cluster[bounds[k] : bounds[k + 1]]
            keys = chunk_class[ids]
            if len(np.unique(keys)) >= self.per_slot:
                s = ids[_pack(keys, self.per_slot, rng)]
            else:  # too few classes in this cluster: its slots repeat classes
                n = -(-len(ids) // self.per_slot)
                flat = np.concatenate(
                    [rng.permutation(ids), rng.choice(ids, size=n * self.per_slot - len(ids))]
                )
                s = flat.reshape(n, self.per_slot)
            slots.append(s)
            slot_cluster.append(np.full(len(s), k))
        all_slots = np.concatenate(slots)  # (S, per_slot) chunk numbers
        batches = _pack(np.concatenate(slot_cluster), self.clusters_per_batch, rng)  # (B, clusters) slots
        return self.rows[chunks[all_slots[batches]].reshape(len(batches), -1)]
