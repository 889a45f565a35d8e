"""``hglv2 export``: GLDv2 metadata in, Parquet splits out."""

from __future__ import annotations

import click

from hglv2.cli._options import OUTPUT_DIR, Output, json_option


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
    help="Drop index and query rows whose landmark or cluster is unknown (the authors' evaluation "
    "set, their remove_nan); default: keep them, flagged. Counts go to the manifest.",
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
        f"{name:10s} dropped {n:,d} rows whose landmark or cluster is unknown"
        for name, n in manifest["dropped_incomplete"].items()
    ]
    return Output(manifest, [*lines, f"wrote {out_dir}/manifest.json and README.md"])
