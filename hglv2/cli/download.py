"""``hglv2 download``: the GLDv2 release files, metadata (``download [metadata]``) and image
shards (``download images``), resumable and checked against the lock file."""

from __future__ import annotations

import os

import click

from hglv2.cli._options import (
    IMAGE_SPLIT,
    OUTPUT_FILE,
    Network,
    Output,
    download_target_options,
    json_option,
    network_options,
)


class _MetadataByDefault(click.Group):
    """``hglv2 download [NAMES...]`` means ``hglv2 download metadata [NAMES...]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["metadata", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_MetadataByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def download() -> None:
    """Fetch GLDv2 files: `download [metadata] [NAMES...]` or `download images --split ...`."""


@download.command("metadata")
@click.argument("names", nargs=-1)
@download_target_options("Folder for the metadata files and the lock file.", "metadata/ and ground_truth/")
@click.option("--offline", is_flag=True, help="Download nothing; check the files on disk against the lock.")
@click.option(
    "--lock",
    "lock_path",
    type=OUTPUT_FILE,
    default=None,
    help="Lock file with sizes and sha256 (default: DEST/gldv2.lock.json).",
)
@network_options(timeout_help="Seconds to wait for the server on each read.")
@json_option(help="Also write the per-file results as JSON.")
def download_metadata(
    names: tuple[str, ...],
    dest: str,
    base_url: str | None,
    offline: bool,
    lock_path: str | None,
    network: Network,
) -> Output:
    """Fetch (or check) the GLDv2 metadata files NAMES (default: all of them).

    Resumes cut downloads with HTTP Range, retries with backoff, and checks each file against the
    size and sha256 recorded in the lock file at its first download.
    """
    from hglv2.gldv2.downloads import download
    from hglv2.gldv2.specs import DEFAULT_BASE_URL

    records = download(
        names or None,
        dest,
        base_url=base_url or DEFAULT_BASE_URL,
        offline=offline,
        lock_path=lock_path,
        contact=network.contact,
        retries=network.retries,
        progress=network.progress,
    )
    return Output(
        data={"dest": os.fspath(dest), "files": [r.as_dict() for r in records]},
        lines=[f"{r.name:34s} {r.status:10s} {r.size:>14,d} B  sha256 {r.sha256[:16]}" for r in records],
    )


@download.command("images")
@click.option("--split", type=IMAGE_SPLIT, required=True)
@click.option("--shards", "shard_spec", default=None, help="Shard numbers, e.g. 0-9,42 (default: all).")
@click.option("--jobs", type=click.IntRange(1, 32), default=4, show_default=True, help="Files at once.")
@download_target_options(
    "Download folder: shards go to DEST/<split>/, the lock file is DEST/gldv2.lock.json.",
    "<split>/ and md5sum/",
)
@click.option("--verify", is_flag=True, help="Re-hash every shard on disk (default: trust size + lock).")
@click.option("--lock", "lock_path", type=OUTPUT_FILE, default=None, help="Lock file.")
@network_options()
@json_option(help="Per-shard results.")
def download_images(
    split: str,
    shard_spec: str | None,
    jobs: int,
    dest: str,
    base_url: str | None,
    verify: bool,
    lock_path: str | None,
    network: Network,
) -> Output:
    """Fetch the image tar shards of a split, each checked against its official md5 (never extracted).

    Resumes cut transfers with HTTP Range, checks the free disk space first, and records verified
    shards in the lock file so a re-run does not re-hash them (unless --verify).
    """
    from hglv2.gldv2 import shards as gshards
    from hglv2.gldv2.specs import DEFAULT_BASE_URL

    records = gshards.download_images(
        split,
        dest,
        shards=gshards.parse_shards(shard_spec, split),
        jobs=jobs,
        verify=verify,
        base_url=base_url or DEFAULT_BASE_URL,
        lock_path=lock_path,
        contact=network.contact,
        retries=network.retries,
        progress=network.progress,
        raise_on_error=False,
    )
    failed = [r for r in records if r.status == "failed"]
    return Output(
        error=gshards.failure_summary(failed) if failed else None,
        data={"dest": os.fspath(dest), "split": split, "shards": [r.as_dict() for r in records]},
        lines=[
            f"{r.key:24s} {r.status:10s} {r.size:>15,d} B  md5 {r.md5}"
            for r in records
            if r.status != "failed"
        ],
    )
