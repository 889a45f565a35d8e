"""Converters from the official files of the paper's other datasets to hglv2 splits.

``hglv2 convert sop|inat2018|inat-base|dyml-vehicle|dyml-animal|dyml-product|cub --root DIR --out
DIR`` reads a dataset's official files, validates them (``Error: FILE:LINE: ...``, exit 2, nothing
written), and writes Parquet splits, ``manifest.json`` and a dataset card through
:func:`hglv2.splits.write_split_folder`, so every dataset trains and evaluates through one
:class:`~hglv2.dataset.HGLDv2Dataset` (``image_root`` = the dataset root). Each dataset's module
reads its files into a :class:`~hglv2.convert._common.Conversion` (its format, levels and splits
are in its docstring); the split columns are in :mod:`hglv2.convert._common`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hglv2.convert._common import Conversion, write_converted
from hglv2.convert.cub import read_cub
from hglv2.convert.dyml import VARIANTS, read_dyml
from hglv2.convert.inat import read_inat
from hglv2.convert.sop import read_sop
from hglv2.errors import InputError

DATASETS = ("sop", "inat2018", "inat-base", "dyml", "dyml-vehicle", "dyml-animal", "dyml-product", "cub")

__all__ = ["DATASETS", "Conversion", "convert", "read", "read_cub", "read_dyml", "read_inat", "read_sop"]


def _dyml_variant(root: Path) -> str:
    """The DyML variant from the folder name, as the authors (``dyml_vehicle`` -> vehicle)."""
    suffix = root.resolve().name.lower().replace("-", "_").split("_")[-1]
    if suffix in VARIANTS:
        return suffix
    if (root / "mini-bmk_all_in_one").is_dir():
        return "product"
    raise InputError(f"{root}: cannot tell the DyML variant; use dyml-vehicle, dyml-animal or dyml-product")


def read(name: str, root: Path, **options: Any) -> Conversion:
    """Read and validate dataset ``name`` (one of :data:`DATASETS`) under ``root``."""
    if name == "sop":
        return read_sop(root, **options)
    if name in ("inat2018", "inat-base"):
        return read_inat(root, hierarchy="full" if name == "inat2018" else "base", **options)
    if name == "dyml":
        name = f"dyml-{_dyml_variant(root)}"
    if name.startswith("dyml-"):
        return read_dyml(root, variant=name.removeprefix("dyml-"), **options)
    if name == "cub":
        return read_cub(root, **options)
    raise InputError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")


def convert(
    name: str,
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    command: Sequence[str] | None = None,
    check_images: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Convert dataset ``name`` (one of :data:`DATASETS`) from ``root`` to ``out_dir``; returns the
    manifest. ``options``: the dataset's own (``protocol`` for iNaturalist and CUB)."""
    root = Path(root)
    conversion = read(name, root, **options)
    return write_converted(out_dir, conversion, root, command=command, check_images=check_images)
