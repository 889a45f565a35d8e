"""``hglv2 prepare-images``: re-encode a split's image shards to a bounded size (see
:mod:`hglv2.reencode`)."""

from __future__ import annotations

from pathlib import Path

import click

from hglv2.cli._options import (
    IMAGE_SPLIT,
    OUTPUT_DIR,
    Output,
    json_option,
    progress_option,
)
from hglv2.errors import InputError


@click.command("prepare-images")
@click.option(
    "--split",
    type=IMAGE_SPLIT,
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
@click.option("--out", "out_dir", type=OUTPUT_DIR, default=None, help="Output folder.")
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
@progress_option
@json_option(help="Write the summary.")
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
) -> Output:
    """Re-encode a split's images so their longer side is at most --max-side, into new tar shards.

    The output folder holds images_NNN.tar shards (read by HGLDv2Dataset like the official ones),
    index.parquet and prepare.json. Resumable: finished shards are skipped on a rerun.
    """
    from hglv2 import reencode

    src = Path(source) if source else Path(dest) / split
    out = Path(out_dir) if out_dir else Path(dest) / f"{split}-{max_side}"
    if not src.exists():
        raise InputError(f"{src}: no such folder (download the images first, or pass --source)")
    if jobs is None:
        from hglv2.processes import usable_cores

        jobs = usable_cores()
    shards = None
    if shard_spec:
        from hglv2.gldv2.shards import parse_shard_spec
        from hglv2.gldv2.specs import shard_name

        shards = [shard_name(k) for k in parse_shard_spec(shard_spec)]
    res = reencode.prepare_images(
        src,
        out,
        max_side=max_side,
        quality=quality,
        jobs=jobs,
        shard_size=shard_size,
        shards=shards,
        progress=progress,
    )
    for f in res["failed"][:10]:
        click.echo(f"skipped {f['shard']}:{f['member']}: {f['reason']}", err=True)
    if len(res["failed"]) > 10:
        click.echo(f"... and {len(res['failed']) - 10} more (see {out}/prepare.json)", err=True)
    summary = (
        f"{out}: {len(res['shards'])} shards ({res['shards_skipped']} already done), "
        f"{res['images']:,d} images ({res['reencoded']:,d} re-encoded), {res['bytes_out'] / 1e6:,.1f} MB; "
        f"{res['images_prepared_now']:,d} images now at {res['images_per_s']:,.1f}/s with {jobs} jobs"
    )
    return Output(data=res, lines=[summary])
