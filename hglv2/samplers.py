"""Batch samplers for rank losses: M images per class, or hierarchical (clusters, then classes).

The samplers yield lists of row indices (use them as ``batch_sampler=`` of a ``DataLoader``):

- :class:`MPerClassBatchSampler`: ``batch_size / m`` distinct classes per batch, ``m`` images
  each. By default it is the authors' sampler (``MPerClassSampler`` of SupRank): only whole groups
  of ``m`` images are drawn, so the ``n_c mod m`` images left over in a class and every class with
  fewer than ``m`` images are not used in that epoch, and the epoch ends when fewer than
  ``batch_size / m`` classes still have a whole group. With ``top_up=True`` (a deviation, opt-in)
  the last group of a class is topped up from that class instead, so every image is used at least
  once per epoch and no class is dropped (more batches per epoch; see the recipe table).
- :class:`HierarchicalBatchSampler`: ``clusters_per_batch`` distinct clusters per batch, each
  giving ``batch_size / clusters_per_batch`` images as ``m``-image groups of distinct classes, so
  every batch holds positives at the class level and at the cluster level. With
  ``batches_per_super_tuple`` it is the authors' epoch (pytorch-metric-learning's
  ``HierarchicalSampler``); without, an epoch costs a few numpy sorts over the images: cluster
  slots are combined by packing a shuffled list, never by enumerating cluster pairs.

Both are deterministic given ``(seed, epoch)`` (call ``set_epoch`` each epoch, as with
``DistributedSampler``) and DDP-aware: every replica computes the same global list of batches and
keeps batches ``rank, rank + num_replicas, ...`` (wrapping around so all replicas get the same
number of batches).

The authors' epochs are built with the same sequence of calls on a legacy
``numpy.random.RandomState`` as their code makes on numpy's global generator, so given the same
generator state they give the same batches (tested against batches recorded from their code, with
classes visited in increasing label order, which is the order of their ``set`` of labels for
small non-negative integer labels). The state of epoch ``e`` is seeded from ``(seed, e)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["MPerClassBatchSampler", "HierarchicalBatchSampler", "super_tuple_batches", "whole_group_batches"]


def _class_chunks(
    classes: np.ndarray,
    m: int,
    rng: np.random.Generator,
    cap: int | None = None,
    top_up: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every class's images, in a random order, into groups of exactly ``m`` row indices.

    Args:
        classes: (N,) dense class number of each row (0..C-1).
        cap: use at most this many images of each class (the first ``cap`` of its random order,
            so a different subset each epoch); None: all.
        top_up: False: class ``c`` with ``n_c`` images gets ``floor(n_c / m)`` whole groups (the
            rest of its random order, and any class with fewer than ``m`` images, is left out
            this epoch). True: ``ceil(n_c / m)`` groups, the last one topped up with the first
            images of its own random order (distinct from the ones already in that group when
            ``n_c >= m``; a class with fewer than ``m`` images repeats its images), so every row
            is in at least one group.
    Returns:
        chunks (G, m) row indices and chunk_class (G,).
    """
    order = _argsort_random_within(classes, rng)  # by class, random within a class
    counts = np.bincount(classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if cap is not None:
        counts = np.minimum(counts, cap)
    n_groups = -(-counts // m) if top_up else counts // m
    padded = n_groups * m
    # position p (0..padded_c-1) of class c takes its (p mod n_c)-th image in the random order
    cls_of_slot = np.repeat(np.arange(len(counts)), padded)
    slot_start = np.concatenate([[0], np.cumsum(padded)[:-1]])
    p = np.arange(padded.sum()) - np.repeat(slot_start, padded)
    rows = order[starts[cls_of_slot] + p % np.maximum(counts[cls_of_slot], 1)]
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


def _legacy(rng: np.random.Generator) -> np.random.RandomState:
    """A legacy generator seeded from ``rng``: the authors' samplers draw from numpy's global one."""
    return np.random.RandomState(int(rng.integers(0, 2**32)))


def _rows_by_class(class_of_row: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """The rows of each class 0..n_classes-1, in increasing row order."""
    by_class = np.argsort(class_of_row, kind="stable")
    bounds = np.searchsorted(class_of_row[by_class], np.arange(n_classes + 1))
    return [by_class[bounds[c] : bounds[c + 1]] for c in range(n_classes)]


def whole_group_batches(
    class_of_row: np.ndarray, m: int, per_batch: int, rs: np.random.RandomState, cap: int | None = None
) -> np.ndarray:
    """One epoch of the authors' M-per-class sampler, as (B, per_batch * m) row indices.

    The rows of each class (classes in increasing order, rows in increasing order) are shuffled
    and cut to their first ``cap``; the classes are shuffled. Each batch takes the next whole group
    of ``m`` images from each of the first ``per_batch`` classes, in that order, that still hold
    ``m`` unused images, and is shuffled. The epoch ends when fewer than ``per_batch`` classes hold
    a whole group (a class with fewer than ``m`` images is never drawn); the batches are shuffled.
    The calls on ``rs`` are those of SupRank's ``MPerClassSampler.reshuffle`` on numpy's global
    generator, so the same state gives the same batches.
    """
    n_classes = int(class_of_row.max()) + 1 if len(class_of_row) else 0
    lists = []
    for rows in _rows_by_class(class_of_row, n_classes):
        rows = rows.copy()
        rs.shuffle(rows)
        lists.append(rows if cap is None else rows[:cap])
    order = np.arange(n_classes)
    rs.shuffle(order)
    lists = [lists[c] for c in order]  # in visiting order from here on
    groups = np.array([len(rows) // m for rows in lists], dtype=np.int64)
    used = np.zeros(n_classes, dtype=np.int64)
    eligible = np.flatnonzero(groups > 0)
    active, nxt = eligible[:per_batch].tolist(), per_batch
    batches = []
    while len(active) == per_batch:  # the active classes are always the first eligible ones
        batch = np.concatenate([lists[q][used[q] * m : (used[q] + 1) * m] for q in active])
        rs.shuffle(batch)
        batches.append(batch)
        used[active] += 1
        active = [q for q in active if used[q] < groups[q]]
        take = min(per_batch - len(active), len(eligible) - nxt)
        active += eligible[nxt : nxt + take].tolist()
        nxt += take
    out = np.array(batches, dtype=np.int64).reshape(len(batches), per_batch * m)
    rs.shuffle(out)
    return out


def super_tuple_batches(
    class_of_row: np.ndarray,
    cluster_of_class: np.ndarray,
    m: int,
    per_slot: int,
    clusters_per_batch: int,
    batches_per_super_tuple: int,
    rs: np.random.RandomState,
) -> np.ndarray:
    """One epoch of the authors' hierarchical sampler (pytorch-metric-learning's
    ``HierarchicalSampler``), as (B, clusters_per_batch * per_slot * m) row indices.

    For every combination of ``clusters_per_batch`` clusters (in increasing order), and
    ``batches_per_super_tuple`` times: each cluster's classes (in order of their first row) are
    shuffled and the first ``per_slot`` give ``m`` random images each (drawn with repetition only
    when the class has fewer than ``m``); the batch is shuffled; at the end the batches are
    shuffled. The calls on ``rs`` are those of the original on numpy's global generator. Every
    cluster needs at least ``per_slot`` classes (the original then gives shorter batches).
    """
    from itertools import combinations

    n_classes = len(cluster_of_class)
    rows_of = _rows_by_class(class_of_row, n_classes)
    first_row = np.array([r[0] if len(r) else len(class_of_row) for r in rows_of])
    n_clusters = int(cluster_of_class.max()) + 1 if n_classes else 0
    classes_of = []
    for k in range(n_clusters):
        cls = np.flatnonzero(cluster_of_class == k)
        classes_of.append(cls[np.argsort(first_row[cls], kind="stable")])
    batches = []
    for combo in combinations(range(n_clusters), clusters_per_batch):
        for _ in range(batches_per_super_tuple):
            batch = []
            for k in combo:
                cls = classes_of[k].copy()
                rs.shuffle(cls)
                for c in cls[:per_slot]:
                    batch.append(rs.choice(rows_of[c], size=m, replace=len(rows_of[c]) < m))
            batch = np.concatenate(batch)
            rs.shuffle(batch)
            batches.append(batch)
    out = np.array(batches, dtype=np.int64).reshape(len(batches), -1)
    rs.shuffle(out)
    return out


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

    Default: the authors' epoch (:func:`whole_group_batches`): whole groups of ``m`` images only;
    a class with fewer than ``m`` images is never drawn, and the ``n_c mod m`` images left over in
    a class are not used that epoch (a different subset each epoch).

    ``top_up=True`` (a deviation from the authors, opt-in): each class's images are shuffled and
    cut into groups of ``m`` (the last group topped up from the same class; a class with fewer
    than ``m`` images repeats its images); the groups are put in a random order that spreads each
    class over the epoch and packed into batches of distinct classes. So every image is used at
    least once per epoch and no class is dropped. The number of batches is ``ceil(G / P)`` (G
    groups, P classes per batch), a few more if one class holds more than ``1/P`` of the groups.
    Building such an epoch is vectorised (numpy sorts); only the rare conflicting groups are
    re-packed in Python.

    ``len(self)`` is exact for the current epoch.

    Args:
        labels: (N,) class ids, or (N, L) with the class in column ``level`` (default 0).
        m: images per class in a batch.
        batch_size: a multiple of ``m``.
        seed: base seed; the epoch's batches depend only on ``(seed, epoch)``.
        num_replicas, rank: DDP world size and this process's rank; replicas get disjoint batches
            (wrapping around at the end so all get ``len(self)`` batches).
        level: label column of the class when ``labels`` is 2-D.
        ignore_label: rows with this class id are left out (default None: keep all).
        max_per_class: at most this many images of a class per epoch (a fresh random subset
            each epoch; the authors' ``reduce_per_class``); None: all.
        top_up: top up each class's last group instead of dropping the images left over (see
            above); False (default) is the authors' sampler.
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
        max_per_class: int | None = None,
        top_up: bool = False,
    ) -> None:
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        self.max_per_class = max_per_class
        self.top_up = bool(top_up)
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
        if not self.top_up:
            rs = _legacy(rng)
            return self.rows[
                whole_group_batches(self.class_of_row, self.m, self.per_batch, rs, self.max_per_class)
            ]
        chunks, chunk_class = _class_chunks(self.class_of_row, self.m, rng, self.max_per_class, top_up=True)
        groups = _pack(chunk_class, self.per_batch, rng)  # (B, P) chunk numbers
        return self.rows[chunks[groups].reshape(len(groups), -1)]


class HierarchicalBatchSampler(_EpochBatchSampler):
    """Batches drawn from ``clusters_per_batch`` clusters, ``m`` images per class.

    Each batch has ``clusters_per_batch`` distinct clusters (labels at ``cluster_level``); each
    cluster contributes ``batch_size // clusters_per_batch`` images as groups of ``m`` images of
    distinct classes (``class_level``), so a batch holds class-level and cluster-level positives.

    With ``batches_per_super_tuple`` = T the epoch is the authors' (:func:`super_tuple_batches`,
    pytorch-metric-learning's ``HierarchicalSampler``): for every combination of
    ``clusters_per_batch`` clusters, T batches, each cluster giving ``P = batch_size //
    (clusters_per_batch * m)`` distinct classes drawn at random and ``m`` random images of each
    (with repetition only when the class has fewer); so an epoch has C(n_clusters,
    clusters_per_batch) x T batches and need not cover every image. It enumerates the
    combinations: meant for few clusters (SOP: 12 super-classes, 66 pairs).

    Without it (ours, no recipe of the paper uses it): (1) each class is cut into ``m``-groups as
    in :class:`MPerClassBatchSampler` (whole groups only, or topped up with ``top_up``); (2)
    within each cluster the groups are packed into cluster slots of ``P`` distinct classes (a
    cluster with fewer than ``P`` classes repeats some of them); (3) all cluster slots are packed
    into batches of distinct clusters. Every step is a few numpy sorts over the groups: there is
    no enumeration of cluster pairs, so tens of thousands of classes and hundreds of clusters are
    cheap.

    Rows whose cluster label is ``ignore_label`` (default -1, "hierarchy unknown") are left out;
    their number is ``n_excluded``.

    Args:
        labels: (N, L) int labels.
        m: images per class in a batch.
        batch_size: a multiple of ``clusters_per_batch * m``.
        clusters_per_batch: distinct clusters per batch (>= 2 gives cluster-level negatives).
        class_level, cluster_level: label columns of the class and of the cluster.
        seed, num_replicas, rank, max_per_class: as in :class:`MPerClassBatchSampler`.
        batches_per_super_tuple: None (default: the packed epoch above) or T (the authors').
        top_up: the packed epoch tops up each class's last group (see
            :class:`MPerClassBatchSampler`).
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
        max_per_class: int | None = None,
        batches_per_super_tuple: int | None = None,
        top_up: bool = False,
    ) -> None:
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        if batches_per_super_tuple is not None and batches_per_super_tuple < 1:
            raise ValueError(f"batches_per_super_tuple must be >= 1, got {batches_per_super_tuple}")
        self.max_per_class = max_per_class
        self.batches_per_super_tuple = batches_per_super_tuple
        self.top_up = bool(top_up)
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
        if batches_per_super_tuple is not None:
            few = np.bincount(self.cluster_of_class, minlength=len(self.clusters)) < self.per_slot
            if few.any():
                raise ValueError(
                    f"batches_per_super_tuple: cluster {self.clusters[np.argmax(few)]} has fewer than "
                    f"{self.per_slot} classes (batch_size // (clusters_per_batch * m))"
                )

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        if self.batches_per_super_tuple is not None:
            batches = super_tuple_batches(
                self.class_of_row,
                self.cluster_of_class,
                self.m,
                self.per_slot,
                self.clusters_per_batch,
                self.batches_per_super_tuple,
                _legacy(rng),
            )
            return self.rows[batches]
        chunks, chunk_class = _class_chunks(
            self.class_of_row, self.m, rng, self.max_per_class, top_up=self.top_up
        )
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
