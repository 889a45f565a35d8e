"""``hglv2 download`` and ``hglv2 export``: GLDv2 metadata in, Parquet splits out."""

from __future__ import annotations

import os

import click

from hglv2.cli._options import (
    OUTPUT_DIR,
    OUTPUT_FILE,
    Output,
    download_target_options,
    json_option,
    network_options,
)


def command_line(ctx: click.Context) -> list[str]:
    """The command as ``hglv2 <name> --option value ...`` rebuilt from the parsed parameters."""
    out = ["hglv2", ctx.info_name or ""]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        value = ctx.params.get(param.name)
        flag = param.opts[0]
        if param.is_flag:
            if value:
                out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        elif value is not None:
            out += [flag, str(value)]
    return out


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
    contact: str,
    max_tries: int,
    timeout: float,
    progress: bool,
) -> Output:
    """Fetch (or check) the GLDv2 metadata files NAMES (default: all of them).

    Resumes cut downloads with HTTP Range, retries with backoff, and checks each file against the
    size and sha256 recorded in the lock file at its first download.
    """
    from hglv2.gldv2.downloads import download
    from hglv2.gldv2.specs import DEFAULT_BASE_URL
    from hglv2.http import Retries

    records = download(
        names or None,
        dest,
        base_url=base_url or DEFAULT_BASE_URL,
        offline=offline,
        lock_path=lock_path,
        contact=contact,
        retries=Retries(timeout=timeout, max_tries=max_tries),
        progress=progress,
    )
    return Output(
        data={"dest": os.fspath(dest), "files": [r.as_dict() for r in records]},
        lines=[f"{r.name:34s} {r.status:10s} {r.size:>14,d} B  sha256 {r.sha256[:16]}" for r in records],
    )


def _register_images() -> None:
    from hglv2.cli.images import download_images

    download.add_command(download_images, "images")


_register_images()


@click.command()
@click.option(
    "--metadata",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder with the GLDv2 metadata files (official names).",
)
@click.option(
    "--out",
    "out_dir",
    type=OUTPUT_DIR,
    required=True,
    help="Output folder for the Parquet splits, manifest.json and README.md.",
)
@click.option(
    "--hierarchy",
    "hierarchy",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="Hierarchy table (ours, or a published *_label_to_hierarchical.csv); repeatable. "
    "Default: the published ones in --metadata.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    type=click.Choice(["train", "train_full", "index", "query"]),
    help="Split to export; repeatable. Default: every split whose files are present.",
)
@click.option("--row-group-size", type=click.IntRange(1000, None), default=50_000, show_default=True)
@click.option(
    "--drop-incomplete",
    is_flag=True,
    help="Drop index and query rows whose hierarchy is incomplete (the authors' evaluation set); "
    "default: keep them, flagged. Counts go to the manifest.",
)
@click.option(
    "--mixed-ground-truth",
    type=click.Choice(["error", "first"]),
    default="error",
    show_default=True,
    help="A query whose ground-truth index images depict different landmarks: stop with an error, "
    "or take the landmark of the first listed image (the authors' rule; counted in the manifest).",
)
@json_option(help="Also write the manifest (rows, coverage, hashes) here.")
def export(
    metadata: str,
    out_dir: str,
    hierarchy: tuple[str, ...],
    splits: tuple[str, ...],
    row_group_size: int,
    drop_incomplete: bool,
    mixed_ground_truth: str,
) -> Output:
    """Export validated Parquet splits (train, train_full, index, query) with the hierarchy joined."""
    from hglv2 import splits as splits_mod

    manifest = splits_mod.export(
        metadata,
        out_dir,
        hierarchy=list(hierarchy) or None,
        splits=list(splits) or None,
        row_group_size=row_group_size,
        command=command_line(click.get_current_context()),
        drop_incomplete=drop_incomplete,
        mixed_ground_truth=mixed_ground_truth,
    )
    lines = [
        f"{name:10s} {info['rows']:>9,d} rows  {info['landmarks']:>7,d} landmarks  coverage "
        + " ".join(f"{k}={v:.1%}" for k, v in info["coverage"].items())
        + f"  incomplete landmarks {info['landmarks_hierarchy_incomplete']:,d}"
        for name, info in manifest["splits"].items()
    ]
    lines += [
        f"{name:10s} dropped {n:,d} rows with an incomplete hierarchy"
        for name, n in manifest["dropped_incomplete"].items()
    ]
    return Output(manifest, [*lines, f"wrote {out_dir}/manifest.json and README.md"])
