"""Re-encode a split's images to a bounded size, into new tar shards that train faster.

The GLDv2 images come as tar shards (``images_000.tar`` ...) of JPEGs in the ``a/b/c/<id>.jpg``
layout. Decoding a full-size JPEG and then cropping it to 224 px dominates the cost of a training
data loader; :func:`prepare_images` does the downscaling once:

- **Sources**: a folder of tar shards (each output shard ``images_NNN.tar`` comes from the input
  shard of the same name) or an image folder (its images, sorted by relative path, are cut into
  shards of ``shard_size`` images). Tars are read in place, never extracted.
- **Resize**: an image whose longer side exceeds ``max_side`` is scaled by
  ``s = max_side / max(w, h)`` to ``(max(1, round(s w)), max(1, round(s h)))``. PIL's JPEG draft
  mode first lets libjpeg decode at the smallest 1/2, 1/4 or 1/8 scale that is still at least that
  size (benchmarks/prepare_images.py: 2.1x more images/s on sources twice ``max_side``; no gain
  below that), then an antialiased bicubic filter (as ``Image.thumbnail``; 1.4x cheaper than
  Lanczos) does the rest. The image is
  re-encoded as a baseline JPEG (``quality``, 4:2:0 chroma, optimised Huffman tables, no EXIF or
  ICC data; pixel rows as stored: the EXIF orientation is ignored, as :class:`HGLDv2Dataset` does).
  An image already within ``max_side`` is kept byte for byte if it is a JPEG, else re-encoded.
- **Output**: ``OUT/images_NNN.tar`` in the same layout (member ``a/b/c/<id>.jpg``), read by
  :class:`hglv2.dataset.HGLDv2Dataset` exactly like the official shards; per shard a small
  ``images_NNN.index.parquet`` (id, member offset and size, width, height, source size), and at
  the end ``index.parquet`` (all shards) and ``prepare.json`` (settings, counts, undecodable
  images).
- **Deterministic bytes**: tar members have fixed metadata (mtime 0, uid/gid 0, no user/group
  names, mode 0644) in the source order; the JPEG settings are fixed; nothing depends on time, the
  worker count or the order in which shards finish. (Bytes are identical for the same Pillow /
  libjpeg build; another libjpeg may round differently.)
- **Resumable**: each shard is written to a temporary file and renamed into place, then its index
  is written the same way; a shard whose tar and index exist (and agree in size and settings) is
  skipped on a rerun. A lock file keeps two runs from sharing one output folder.
- **Parallel**: shards are processed by ``jobs`` worker processes, which exit when the parent
  process dies (:func:`hglv2.processes.die_with_parent`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from hglv2.errors import InputError
from hglv2.fileio import atomic_path, file_lock, write_json, write_parquet
from hglv2.gldv2.specs import shard_name
from hglv2.processes import die_with_parent, stop_pool

__all__ = [
    "PrepareSettings",
    "ShardPlan",
    "plan_shards",
    "prepare_images",
    "prepare_shard",
    "resize_image",
    "reuse_image_memory",
    "target_size",
]

#: Freed image blocks Pillow keeps for reuse while images are re-encoded (:func:`reuse_image_memory`).
IMAGE_BLOCKS = 16
#: Bumped whenever the output bytes for the same settings would change.
FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: The tar index: where each image's bytes lie in its shard (``id`` = member file stem, ``shard`` =
#: tar file path relative to the index's folder, i.e. the file name for ``index.parquet`` beside
#: its shards, ``offset`` of the member's data, its ``size``). ``index.parquet`` holds these
#: columns (with the image sizes of :data:`INDEX_SCHEMA` beside them);
#: :func:`hglv2.dataset.index_tar_shards` reads it and writes its own cache in this format.
TAR_INDEX_SCHEMA = pa.schema(
    [("id", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]
)
INDEX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard", pa.string()),
        ("member", pa.string()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("reencoded", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class PrepareSettings:
    """What the output bytes depend on (besides the source bytes and the Pillow build)."""

    max_side: int = 512
    quality: int = 90
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.max_side, int) or self.max_side < 16:
            raise InputError(f"max_side must be an integer >= 16, not {self.max_side!r}")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 95:
            raise InputError(f"quality must be an integer in 1..95, not {self.quality!r}")


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its name and where its images come from.

    ``source`` is a tar file (``members`` empty: all its regular files, in tar order) or an image
    folder (``members``: the relative paths of this shard's images, in order).
    """

    name: str
    source: str
    members: tuple[str, ...] = ()


@dataclass
class ShardResult:
    """What :func:`prepare_shard` did for one shard (``skipped``: finished by an earlier run)."""

    name: str
    images: int = 0
    reencoded: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    skipped: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)  # (member, reason)


# ---------------------------------------------------------------------------------- one image


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(w, h)`` scaled so the longer side is ``max_side`` (unchanged if it already fits).

    .. math:: s = m / \\max(w, h), \\quad (w', h') = (\\max(1, [s w]), \\max(1, [s h]))

    with ``[.]`` rounding half to even (Python's ``round``).
    """
    if width <= max_side and height <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def reuse_image_memory() -> None:
    """Let Pillow keep up to ``IMAGE_BLOCKS`` freed image blocks for the next image.

    Pillow's default keeps none (``Image.core.get_blocks_max() == 0``): each decoded, converted or
    resized image gives its memory back to malloc, glibc returns those large blocks to the system,
    and the next image faults fresh pages in again. Pillow's own block cache
    (``Image.core.set_blocks_max``) keeps them in the process instead; the process-wide setting
    is only ever raised. Retained memory is bounded by ``IMAGE_BLOCKS`` blocks of at most
    ``Image.core.get_block_size()`` bytes (16 MiB by default).
    """
    if Image.core.get_blocks_max() < IMAGE_BLOCKS:
        Image.core.set_blocks_max(IMAGE_BLOCKS)


def resize_image(data: bytes, settings: PrepareSettings) -> tuple[bytes, int, int, int, int, bool]:
    """Downscale one encoded image; returns ``(bytes, w, h, source_w, source_h, reencoded)``.

    A JPEG within ``max_side`` comes back unchanged; anything else is decoded (JPEG draft mode
    first) and re-encoded as described in the module docstring. Raises ``OSError``,
    ``UnidentifiedImageError`` or ``ValueError`` for data that is not a readable image. Pillow
    keeps freed image memory for the next image (:func:`reuse_image_memory`).
    """
    reuse_image_memory()
    with Image.open(io.BytesIO(data)) as img:
        sw, sh = img.size
        w, h = target_size(sw, sh, settings.max_side)
        if (w, h) == (sw, sh) and img.format == "JPEG":
            img.verify()  # a cheap structural check: a truncated JPEG is not passed on
            return data, sw, sh, sw, sh, False
        if img.format == "JPEG":
            img.draft("RGB", (w, h))  # libjpeg DCT scaling: decoded size >= (w, h)
        rgb = img.convert("RGB")
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=settings.quality, subsampling=2, optimize=True, progressive=False)
    return buf.getvalue(), w, h, sw, sh, True


# ------------------------------------------------------------------------------------- planning


def _is_safe_member(name: str) -> bool:
    parts = name.split("/")
    return (
        bool(name) and not name.startswith("/") and "\\" not in name and ".." not in parts and ":" not in name
    )


def plan_shards(source: str | os.PathLike[str], shard_size: int = 8000) -> list[ShardPlan]:
    """The output shards for ``source``: a folder of ``*.tar`` shards, a list-like folder of images.

    A folder holding ``*.tar`` files gives one plan per tar (same name). Otherwise every image
    file below the folder (suffixes in :data:`IMAGE_SUFFIXES`), sorted by relative path, is cut
    into shards of ``shard_size`` images named ``images_000.tar``, ``images_001.tar``, ...
    """
    root = Path(source)
    if root.is_file() and root.suffix == ".tar":
        return [ShardPlan(root.name, os.fspath(root))]
    if not root.is_dir():
        raise InputError(f"{root}: no such image folder or tar shard folder")
    tars = sorted(p for p in root.glob("*.tar") if p.is_file())
    if tars:
        return [ShardPlan(p.name, os.fspath(p)) for p in tars]
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, not {shard_size}")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise InputError(f"{root}: no *.tar shards and no image files found")
    return [
        ShardPlan(shard_name(k // shard_size), os.fspath(root), tuple(files[k : k + shard_size]))
        for k in range(0, len(files), shard_size)
    ]


# ------------------------------------------------------------------------------------ one shard


def _source_items(plan: ShardPlan) -> Iterator[tuple[str, bytes | None, str]]:
    """(member name, bytes or None, reason) for each image of the shard, in order."""
    if not plan.members:
        try:
            with tarfile.open(plan.source, mode="r:") as tf:
                for m in tf:
                    if not m.isreg():
                        continue
                    if not _is_safe_member(m.name):
                        yield m.name, None, "unsafe member name"
                        continue
                    fh = tf.extractfile(m)
                    yield m.name, (fh.read() if fh is not None else b""), ""
        except (tarfile.TarError, OSError) as exc:
            raise InputError(f"{plan.source}: not a readable tar file ({exc})") from None
        return
    root = Path(plan.source)
    for rel in plan.members:
        try:
            yield rel, (root / rel).read_bytes(), ""
        except OSError as exc:
            yield rel, None, f"unreadable ({exc.strerror or exc})"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _index_path(out: Path, name: str) -> Path:
    return out / f"{Path(name).stem}.index.parquet"


def _settings_json(settings: PrepareSettings) -> str:
    return json.dumps(asdict(settings), sort_keys=True)


def _finished(out: Path, plan: ShardPlan, settings: PrepareSettings) -> pa.Table | None:
    """The shard's index if an earlier run finished it with these settings, else None."""
    tar, idx = out / plan.name, _index_path(out, plan.name)
    if not (tar.is_file() and idx.is_file()):
        return None
    try:
        table = pq.read_table(idx)
        meta = table.schema.metadata or {}
        if meta.get(b"hglv2.settings", b"").decode() != _settings_json(settings):
            return None
        if int(meta.get(b"hglv2.tar_size", b"-1")) != tar.stat().st_size:
            return None
        return table
    except (OSError, ValueError, pa.ArrowException):
        return None


def prepare_shard(plan: ShardPlan, out_dir: str | os.PathLike[str], settings: PrepareSettings) -> ShardResult:
    """Write ``out_dir/<plan.name>`` and its index (both atomically); skip a finished shard.

    Images that cannot be decoded are left out and listed in ``failed`` (and in the index
    metadata, so a rerun reports them again).
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    done = _finished(out, plan, settings)
    if done is not None:
        meta = done.schema.metadata or {}
        failed = [tuple(x) for x in json.loads(meta.get(b"hglv2.failed", b"[]"))]
        return ShardResult(
            plan.name,
            images=done.num_rows,
            reencoded=sum(done["reencoded"].to_pylist()),
            bytes_out=int(meta.get(b"hglv2.tar_size", b"0")),
            skipped=True,
            failed=failed,  # type: ignore[arg-type]
        )
    res = ShardResult(plan.name)
    rows: dict[str, list[Any]] = {f.name: [] for f in INDEX_SCHEMA}
    with atomic_path(out / plan.name) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for member, data, reason in _source_items(plan):
                if data is None:
                    res.failed.append((member, reason))
                    continue
                res.bytes_in += len(data)
                try:
                    new, w, h, sw, sh, reenc = resize_image(data, settings)
                except (
                    UnidentifiedImageError,
                    OSError,
                    SyntaxError,
                    ValueError,
                    Image.DecompressionBombError,
                ) as exc:
                    why = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "data", str(exc))  # no addresses
                    res.failed.append((member, f"not a readable image ({type(exc).__name__}: {why})"))
                    continue
                name = member if not reenc else str(Path(member).with_suffix(".jpg").as_posix())
                tf.addfile(_tarinfo(name, len(new)), io.BytesIO(new))
                offset = tf.offset - -(-len(new) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                rows["id"].append(Path(member).stem)
                rows["shard"].append(plan.name)
                rows["member"].append(name)
                rows["offset"].append(offset)
                rows["size"].append(len(new))
                rows["width"].append(w)
                rows["height"].append(h)
                rows["source_width"].append(sw)
                rows["source_height"].append(sh)
                rows["reencoded"].append(reenc)
                res.images += 1
                res.reencoded += int(reenc)
        res.bytes_out = tmp.stat().st_size
    meta = {
        "hglv2.settings": _settings_json(settings),
        "hglv2.tar_size": str(res.bytes_out),
        "hglv2.failed": json.dumps(res.failed),
    }
    table = pa.table(rows, schema=INDEX_SCHEMA).replace_schema_metadata(meta)
    with atomic_path(_index_path(out, plan.name)) as tmp:
        pq.write_table(table, tmp, compression="zstd")  # keeps the metadata
    res.seconds = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------ processes


def _clean_temporaries(out: Path) -> None:
    """Remove temporary files left by a killed run (safe: we hold the folder's lock)."""
    for p in out.glob(".images_*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def prepare_images(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_side: int = 512,
    quality: int = 90,
    jobs: int = 1,
    shard_size: int = 8000,
    shards: Sequence[str] | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> dict[str, Any]:
    """Prepare every shard of ``source`` into ``out_dir``; returns the summary also in prepare.json.

    Args:
        source: a folder of tar shards, or an image folder (see :func:`plan_shards`).
        out_dir: output folder (created); must not hold output of other settings.
        max_side: longest side of the output images, in pixels.
        quality: JPEG quality of the re-encoded images.
        jobs: worker processes (1: in this process).
        shard_size: images per output shard for an image-folder source.
        shards: only these output shard names (default: all).
        on_shard: called with each shard's :class:`ShardResult` as it finishes.

    Returns:
        ``dict(settings, shards, images, reencoded, bytes_out, failed, ...)``; the per-run
        figures (``seconds``, ``images_per_s``, ``shards_skipped``) are returned but not written to
        ``prepare.json`` (whose bytes depend only on the inputs and settings).
    """
    settings = PrepareSettings(max_side=max_side, quality=quality)
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, not {jobs}")
    out = Path(out_dir)
    if out.resolve() == Path(source).resolve():
        raise InputError(f"{out}: the output folder must differ from the source folder")
    plans = _chosen_plans(source, shard_size, shards)
    t0 = time.perf_counter()
    busy = f"{out}: another prepare-images run is writing this folder"
    with file_lock(out / ".prepare.lock", busy=busy):
        _check_settings(out, settings)
        _clean_temporaries(out)
        ordered = _prepare_all(plans, out, settings, jobs, progress, on_shard)
        _write_index(out, settings)
    summary = _summary(settings, ordered, source)
    write_json(out / "prepare.json", summary)
    seconds = time.perf_counter() - t0
    worked = [r for r in ordered if not r.skipped]
    n_new = sum(r.images for r in worked)
    return {
        **summary,
        "seconds": seconds,
        "shards_skipped": len(ordered) - len(worked),
        "images_prepared_now": n_new,
        "images_per_s": n_new / seconds if seconds > 0 else 0.0,
        "bytes_in_now": sum(r.bytes_in for r in worked),
        "worker_seconds": sum(r.seconds for r in worked),
    }


def _chosen_plans(
    source: str | os.PathLike[str], shard_size: int, shards: Sequence[str] | None
) -> list[ShardPlan]:
    """The plans of ``source``, only those named in ``shards`` when given."""
    plans = plan_shards(source, shard_size)
    if shards is None:
        return plans
    wanted = set(shards)
    unknown = sorted(wanted - {p.name for p in plans})
    if unknown:
        raise InputError(f"{source}: no shard {unknown[0]!r} to prepare")
    return [p for p in plans if p.name in wanted]


def _prepare_all(
    plans: Sequence[ShardPlan],
    out: Path,
    settings: PrepareSettings,
    jobs: int,
    progress: bool,
    on_shard: Callable[[ShardResult], None] | None,
) -> list[ShardResult]:
    """Every shard of ``plans`` (in this process or ``jobs`` workers) under one progress bar, in
    plan order."""
    from tqdm.auto import tqdm

    results: dict[str, ShardResult] = {}
    bar = tqdm(total=len(plans), unit="shard", desc="prepare-images", disable=None if progress else True)

    def finish(r: ShardResult) -> None:
        results[r.name] = r
        bar.update(1)
        bar.set_postfix(images=sum(x.images for x in results.values()), refresh=False)
        if on_shard is not None:
            on_shard(r)

    try:
        if jobs == 1 or len(plans) <= 1:
            for plan in plans:
                finish(prepare_shard(plan, out, settings))
        else:
            _run_pool(plans, out, settings, jobs, finish)
    finally:
        bar.close()
    return [results[p.name] for p in plans]


def _run_pool(
    plans: Sequence[ShardPlan],
    out: Path,
    settings: PrepareSettings,
    jobs: int,
    finish: Callable[[ShardResult], None],
) -> None:
    ctx = get_context("spawn")  # no state inherited from the parent (threads, open files)
    ex = ProcessPoolExecutor(
        max_workers=min(jobs, len(plans)),
        mp_context=ctx,
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        pending: set[Future[ShardResult]] = {ex.submit(prepare_shard, p, out, settings) for p in plans}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                finish(fut.result())
    except BaseException:
        stop_pool(ex)  # shards in progress
        raise
    ex.shutdown(wait=True)


def _check_settings(out: Path, settings: PrepareSettings) -> None:
    prev = out / "prepare.json"
    if not prev.is_file():
        return
    try:
        old = json.loads(prev.read_text(encoding="utf-8")).get("settings")
    except ValueError:
        return
    if old is not None and old != asdict(settings):
        raise InputError(
            f"{prev}: this folder was prepared with {json.dumps(old, sort_keys=True)}, not "
            f"{_settings_json(settings)}; use another output folder"
        )


def _write_index(out: Path, settings: PrepareSettings) -> None:
    """``index.parquet``: the per-shard indexes of every finished shard in the folder, by shard name."""
    tables = []
    for idx in sorted(out.glob("images_*.index.parquet")):
        t = pq.read_table(idx)
        if (t.schema.metadata or {}).get(b"hglv2.settings", b"").decode() == _settings_json(settings):
            tables.append(t.replace_schema_metadata(None))
    table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
    write_parquet(table, out / "index.parquet", use_dictionary=["shard"])


def _summary(
    settings: PrepareSettings, results: Sequence[ShardResult], source: str | os.PathLike[str]
) -> dict:
    failed = [{"shard": r.name, "member": m, "reason": why} for r in results for m, why in r.failed]
    return {
        "settings": asdict(settings),
        "source": Path(source).name,
        "shards": [
            {"name": r.name, "images": r.images, "reencoded": r.reencoded, "bytes": r.bytes_out}
            for r in results
        ],
        "images": sum(r.images for r in results),
        "reencoded": sum(r.reencoded for r in results),
        "bytes_out": sum(r.bytes_out for r in results),
        "failed": failed,
    }
