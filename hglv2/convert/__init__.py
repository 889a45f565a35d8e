"""Converters from the official files of the paper's other datasets to hglv2 splits.

``hglv2 convert sop|inat2018|inat-base|dyml-vehicle|dyml-animal|dyml-product|cub --root DIR --out
DIR`` reads a dataset's official files, validates them (``Error: FILE:LINE: ...``, exit 2, nothing
written), and writes Parquet splits, ``manifest.json`` and a dataset card through
:mod:`hglv2.splits`, so every dataset trains and evaluates through one
:class:`~hglv2.dataset.HGLDv2Dataset` (``image_root`` = the dataset root). The split columns are in
:mod:`hglv2.convert._common`; each dataset's format, levels and splits are in its module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from hglv2.convert.cub import convert_cub
from hglv2.convert.dyml import convert_dyml
from hglv2.convert.inat import convert_inat
from hglv2.convert.sop import convert_sop

DATASETS = ("sop", "inat2018", "inat-base", "dyml", "dyml-vehicle", "dyml-animal", "dyml-product", "cub")

__all__ = ["DATASETS", "convert", "convert_cub", "convert_dyml", "convert_inat", "convert_sop"]


def convert(
    name: str,
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    command: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert dataset ``name`` (one of :data:`DATASETS`) from ``root`` to ``out_dir``."""
    from hglv2.errors import InputError

    if name == "sop":
        return convert_sop(root, out_dir, command=command, **options)
    if name in ("inat2018", "inat-base"):
        hierarchy = "full" if name == "inat2018" else "base"
        return convert_inat(root, out_dir, hierarchy=hierarchy, command=command, **options)
    if name == "dyml":  # the variant from the folder name, as the authors (dyml_vehicle -> vehicle)
        from pathlib import Path

        from hglv2.convert.dyml import VARIANTS

        suffix = Path(root).resolve().name.lower().replace("-", "_").split("_")[-1]
        if suffix in VARIANTS:
            name = f"dyml-{suffix}"
        elif (Path(root) / "mini-bmk_all_in_one").is_dir():
            name = "dyml-product"
        else:
            raise InputError(
                f"{root}: cannot tell the DyML variant; use dyml-vehicle, dyml-animal or dyml-product"
            )
    if name.startswith("dyml-"):
        return convert_dyml(root, out_dir, variant=name.removeprefix("dyml-"), command=command, **options)
    if name == "cub":
        return convert_cub(root, out_dir, command=command, **options)
    raise InputError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
