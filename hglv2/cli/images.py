"""``hglv2 prepare-images``: re-encode a split's image shards to a bounded size (see hglv2.images)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from hglv2.errors import InputError
from hglv2.fileio import write_json


def parse_shard_numbers(spec: str, n_max: int | None = None) -> list[int]:
    """``"0-9,42"`` -> ``[0, 1, ..., 9, 42]`` (sorted, distinct); bad syntax raises InputError."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--shards: {part!r} is not a shard number or range like 0-9") from None
        if a < 0 or b < a:
            raise InputError(f"--shards: {part!r} is not a valid range")
        if n_max is not None and b >= n_max:
            raise InputError(f"--shards: shard {b} is out of range (0..{n_max - 1})")
        out.update(range(a, b + 1))
    return sorted(out)


@click.command("prepare-images")
@click.option(
    "--split",
    type=click.Choice(["train", "index", "test"]),
    default="train",
    show_default=True,
    help="Which split's shards (reads DEST/<split>/, writes DEST/<split>-<max-side>/ by default).",
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    default="data/gldv2",
    show_default=True,
    help="The download folder (as in `hglv2 download images`).",
)
@click.option(
    "--source",
    type=click.Path(exists=True),
    default=None,
    help="Folder of tar shards or image folder (a/b/c/<id>.jpg); default DEST/<split>.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder.")
@click.option("--max-side", type=click.IntRange(16, 65535), default=512, show_default=True)
@click.option("--quality", type=click.IntRange(1, 95), default=90, show_default=True, help="JPEG quality.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 512),
    default=None,
    help="Worker processes (default: the CPUs available to this process).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1, None),
    default=8000,
    show_default=True,
    help="Images per output shard when the source is an image folder.",
)
@click.option("--shards", "shard_spec", default=None, help="Only these shards, e.g. 0-9,42.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the summary.")
def prepare_images(
    split: str,
    dest: str,
    source: str | None,
    out_dir: str | None,
    max_side: int,
    quality: int,
    jobs: int | None,
    shard_size: int,
    shard_spec: str | None,
    progress: bool,
    json_path: str | None,
) -> None:
    """Re-encode a split's images so their longer side is at most --max-side, into new tar shards.

    The output folder holds images_NNN.tar shards (read by HGLDv2Dataset like the official ones),
    index.parquet and prepare.json. Resumable: finished shards are skipped on a rerun.
    """
    from hglv2 import images

    src = Path(source) if source else Path(dest) / split
    out = Path(out_dir) if out_dir else Path(dest) / f"{split}-{max_side}"
    if not src.exists():
        raise InputError(f"{src}: no such folder (download the images first, or pass --source)")
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shards = None
    if shard_spec:
        shards = [f"images_{k:03d}.tar" for k in parse_shard_numbers(shard_spec)]
    res = images.prepare_images(
        src,
        out,
        max_side=max_side,
        quality=quality,
        jobs=jobs,
        shard_size=shard_size,
        shards=shards,
        progress=progress,
    )
    click.echo(
        f"{out}: {len(res['shards'])} shards ({res['shards_skipped']} already done), "
        f"{res['images']:,d} images ({res['reencoded']:,d} re-encoded), {res['bytes_out'] / 1e6:,.1f} MB; "
        f"{res['images_prepared_now']:,d} images now at {res['images_per_s']:,.1f}/s with {jobs} jobs"
    )
    for f in res["failed"][:10]:
        click.echo(f"skipped {f['shard']}:{f['member']}: {f['reason']}", err=True)
    if len(res["failed"]) > 10:
        click.echo(f"... and {len(res['failed']) - 10} more (see {out}/prepare.json)", err=True)
    if json_path:
        write_json(json_path, res)
