"""``hglv2 convert DATASET --root DIR --out DIR``: another dataset's official files -> hglv2 splits."""

from __future__ import annotations

import click

from hglv2.cli._options import Output
from hglv2.convert import DATASETS


@click.command("convert")
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="The dataset's folder (official files and images, as released).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--protocol",
    default=None,
    help="inat2018/inat-base: auto, retrieval or official; cub: dml (default) or classification.",
)
@click.option("--check-images", is_flag=True, help="Check that every image file exists under --root.")
@click.pass_context
def convert(
    ctx: click.Context, dataset: str, root: str, out_dir: str, protocol: str | None, check_images: bool
) -> Output:
    """Convert SOP, iNaturalist 2018 (7 levels or base), DyML (vehicle/animal/product) or CUB-200-2011
    to Parquet splits + manifest.json + dataset card (README.md), validating the files first."""
    from hglv2.cli.data import command_line
    from hglv2.convert import convert as run
    from hglv2.errors import InputError

    options: dict = {"check_images": check_images}
    if protocol is not None:
        if dataset not in ("inat2018", "inat-base", "cub"):
            raise InputError(f"--protocol does not apply to {dataset}")
        options["protocol"] = protocol
    command = command_line(ctx)
    command.insert(2, dataset)  # the argument (the shared helper lists the options only)
    manifest = run(dataset, root, out_dir, command=command, **options)
    lines = [
        f"{name}: {info['rows']} images, {info['landmarks']} classes -> {out_dir}/{info['file']}"
        for name, info in manifest["splits"].items()
    ]
    levels = ", ".join(manifest["level_names"])
    return Output(manifest, [*lines, f"levels: {levels}; wrote {out_dir}/manifest.json and README.md"])
