"""A torch ``Dataset`` over a Parquet split (the batch samplers are in :mod:`hglv2.samplers`).

:class:`HGLDv2Dataset` reads a split written by :mod:`hglv2.splits` (or :mod:`hglv2.synthetic`):
one row per image with the columns of :data:`hglv2.schema.SPLIT_COLUMNS`. Images come from either

- an image folder in the GLDv2 layout, ``<image_root>/a/b/c/<id>.jpg`` (the split's ``path``
  column, relative to the root), or
- the official tar shards read in place (``images_000.tar``, ``images_001.tar``, ...): the tar
  headers are scanned once when the dataset is built, and each image is then read with one
  ``pread`` at its recorded offset (no extraction, safe in DataLoader worker processes).

An item is ``dict(image=Tensor, labels=LongTensor (L,), id=str)``; ``labels`` holds the chosen
level columns (``level0`` = landmark id, coarser levels after it, -1 where unknown), so a batch's
labels are the (B, L) matrix the hierarchical losses and metrics take. A transform with a
``lazy_decode`` attribute (:class:`hglv2.transforms.ImageTransform`) receives the image opened but
not decoded, and the generator given to :meth:`HGLDv2Dataset.load`, so it can decode a JPEG at a
reduced scale (``Image.draft``) and draw its random crop from a per-item generator.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.reencode import TAR_INDEX_SCHEMA
from hglv2.schema import present_level_columns

log = logging.getLogger(__name__)

__all__ = [
    "HGLDv2Dataset",
    "collate_skip_none",
    "index_tar_shards",
]


def _default_transform(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 tensor (3, H, W) in [0, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).to(torch.float32).div_(255.0)


def _shard_key(cache: Path, shard: Path) -> str:
    """How a tar index in ``cache`` names ``shard``: its resolved path relative to the index's
    folder (the file name for a shard beside it), or the resolved absolute path for one elsewhere.
    """
    shard, folder = shard.resolve(), cache.parent.resolve()
    return shard.relative_to(folder).as_posix() if shard.is_relative_to(folder) else str(shard)


def _read_tar_index(cache: Path, shards: Sequence[Path]) -> dict[str, tuple[int, int, int]] | None:
    """The tar index in ``cache`` if it still describes ``shards``, else None.

    Its ``shard`` column is read as in :func:`_shard_key`, so two folders' same-named shards are
    told apart. It still describes ``shards`` while every shard it names is among them, is no
    longer than the end of its last indexed member, and was not modified after the index was
    written.
    """
    try:
        written = cache.stat().st_mtime_ns
        t = pq.read_table(cache, columns=list(TAR_INDEX_SCHEMA.names))
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    pos: dict[str, int] = {}
    for k, p in enumerate(shards):
        pos.setdefault(_shard_key(cache, p), k)
    ids, names = t["id"].to_pylist(), t["shard"].to_pylist()
    offsets, sizes = t["offset"].to_pylist(), t["size"].to_pylist()
    ends: dict[str, int] = {}
    for name, o, z in zip(names, offsets, sizes, strict=True):
        ends[name] = max(ends.get(name, 0), o + z)
    for name, end in ends.items():
        if name not in pos:
            return None
        try:
            st = shards[pos[name]].stat()
        except OSError:
            return None
        if st.st_size < end or st.st_mtime_ns > written:
            return None
    index: dict[str, tuple[int, int, int]] = {}
    for i, n, o, z in zip(ids, names, offsets, sizes, strict=True):
        index.setdefault(i, (pos[n], o, z))
    return index


def _scan_tar_shards(shards: Sequence[Path]) -> dict[str, tuple[int, int, int]]:
    index: dict[str, tuple[int, int, int]] = {}
    for k, shard in enumerate(shards):
        try:
            with tarfile.open(shard, mode="r:") as tf:
                for member in tf:
                    if member.isreg():
                        index.setdefault(Path(member.name).stem, (k, member.offset_data, member.size))
        except (tarfile.TarError, OSError) as exc:
            raise InputError(f"{shard}: not a readable tar file ({exc})") from None
    return index


def index_tar_shards(
    shards: Sequence[str | os.PathLike[str]], cache: str | os.PathLike[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    """Scan tar headers once: image id (file stem) -> (shard number, data offset, size).

    Only regular files are indexed; an id found in two shards keeps its first occurrence. With
    ``cache``, a Parquet tar index (:data:`hglv2.reencode.TAR_INDEX_SCHEMA`: the ``index.parquet``
    of a folder written by ``hglv2 prepare-images``, or a file this function wrote), the index is
    read from it while it still describes the shards, and otherwise built and written there
    (atomically), so scanning the headers of hundreds of shards happens once. The cache names each
    shard by its resolved path (relative to the cache's folder where the shard lies under it), so
    same-named shards of different folders (``train/images_000.tar``, ``index/images_000.tar``)
    never share entries.
    """
    shards = [Path(p) for p in shards]
    if cache is not None and Path(cache).is_file():
        index = _read_tar_index(Path(cache), shards)
        if index is not None:
            return index
    index = _scan_tar_shards(shards)
    if cache is not None:
        vals = list(index.values())
        keys = [_shard_key(Path(cache), p) for p in shards]
        columns = [list(index), [keys[v[0]] for v in vals], [v[1] for v in vals], [v[2] for v in vals]]
        write_parquet(pa.table(columns, schema=TAR_INDEX_SCHEMA), cache, use_dictionary=["shard"])
    return index


def _resolve_levels(levels: Sequence[int | str] | None, columns: Sequence[str]) -> list[str]:
    if levels is None:  # every level0, level1, ... column of the split, finest first
        levels = present_level_columns(columns)
        if not levels:
            raise InputError(f"the split has no level0 column (have {', '.join(columns)})")
    out = []
    for lev in levels:
        name = f"level{lev}" if isinstance(lev, int) and not isinstance(lev, bool) and lev >= 0 else lev
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
        levels: level columns to return, as names (``"level0"``) or level numbers (``0`` is
            ``"level0"``); default every ``level0, level1, ...`` column of the split (finest
            first: three for H-GLDv2, two for SOP, seven for iNaturalist...).
        transform: called on the PIL RGB image; default: float32 tensor (3, H, W) in [0, 1]. A
            transform with a true ``lazy_decode`` attribute is called as
            ``transform(image, generator)`` on the opened, not yet decoded image instead, and
            decodes it (see :meth:`load`).
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
        levels: Sequence[int | str] | None = None,
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

    def _open(self, index: int) -> Image.Image:
        """The image file of item ``index``, opened (header read) but not decoded."""
        if self._loc is not None:
            data = self._read_tar(index)
        else:
            assert self._paths is not None and self.image_root is not None
            data = (self.image_root / self._paths[index]).read_bytes()
        return Image.open(io.BytesIO(data))

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return self.load(index)

    def load(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any] | None:
        """Item ``index``; a ``lazy_decode`` transform gets the undecoded image and ``generator``.

        Reading and decoding errors (the decoding of a ``lazy_decode`` transform included) follow
        ``on_error``; errors of any other transform propagate.
        """
        image_id = self.ids[index]
        lazy = getattr(self.transform, "lazy_decode", False)
        try:
            with self._open(index) as img:
                image = self.transform(img, generator) if lazy else img.convert("RGB")
        except FileNotFoundError as exc:
            return self._fail(image_id, f"missing ({exc.strerror or exc})")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return self._fail(image_id, f"unreadable ({type(exc).__name__}: {exc})")
        return {
            "image": image if lazy else self.transform(image),
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
