"""CUB-200-2011 (Wah et al., 2011) -> hglv2 splits ``train`` and ``test``, three levels.

Official files in the dataset root (``CUB_200_2011/``): ``images.txt`` (``<image_id>
<image_name>``, the name relative to ``images/``), ``image_class_labels.txt`` (``<image_id>
<class_id>``), ``train_test_split.txt`` (``<image_id> <is_training_image>``), ``classes.txt``
(``<class_id> <class_name>``, optional: names). Ids are integers, not necessarily contiguous.

Splits (``protocol``):

- ``dml`` (default; the metric-learning protocol the SupRank authors use,
  ``suprank/datasets/cub200.py``: the class folders in sorted order, first half train): classes
  1-100 train, 101-200 test; ``train_test_split.txt`` is validated but not used.
- ``classification``: ``train_test_split.txt`` (1 train, 0 test), every class in both.

Levels: ``level0`` = ``class_id``, ``level1`` = family group, ``level2`` = order group: the
CUB has no official hierarchy, these are the authors' values (``hglv2/convert/data/
cub_hierarchy.csv``, from the ``trees`` table of ``suprank/datasets/cub200.py``; the authors'
``cub.yaml`` counts 100 / 30 / 13 training classes per level, which this table gives).
"""

from __future__ import annotations

import importlib.resources
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hglv2.convert import _common as common
from hglv2.errors import InputError

PROTOCOLS = ("dml", "classification")
DATASET = {
    "name": "cub",
    "title": "CUB-200-2011",
    "license": "see the dataset's page; research use",
    "description": "Levels: species (class_id), family group and order group (the SupRank "
    "authors' CUB hierarchy). DML protocol: classes 1-100 train, 101-200 test.",
}


def cub_hierarchy() -> pd.DataFrame:
    """The shipped hierarchy table: ``class_id, order, family`` (module docstring)."""
    text = (importlib.resources.files("hglv2") / "convert" / "data" / "cub_hierarchy.csv").read_text("utf-8")
    return pd.read_csv(io.StringIO(text), comment="#").set_index("class_id")


def _pairs(path: Path, second: str, second_is_int: bool = True) -> dict[int, tuple[Any, int]]:
    """``<id> <value>`` lines -> {id: (value, line)}; duplicate ids and bad lines are errors."""
    out: dict[int, tuple[Any, int]] = {}
    for k, line in enumerate(common.read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise common.fail(path, k, f"expected '<image_id> <{second}>'")
        key = common.parse_int(parts[0], path, k, "id", 1)
        value: Any = common.parse_int(parts[1], path, k, second) if second_is_int else parts[1].strip()
        if key in out:
            raise common.fail(path, k, f"id {key} is listed twice (first at line {out[key][1]})")
        out[key] = (value, k)
    return out


def read_cub(root: Path, protocol: str = "dml") -> common.Conversion:
    """Read and validate CUB-200-2011 under ``root`` (module docstring)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"cub: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    f_images = common.need_file(root, "images.txt")
    f_labels = common.need_file(root, "image_class_labels.txt")
    f_split = common.need_file(root, "train_test_split.txt")
    images = _pairs(f_images, "image_name", second_is_int=False)
    labels = _pairs(f_labels, "class_id")
    split = _pairs(f_split, "is_training_image")
    names: dict[int, str] = {}
    inputs = [f_images, f_labels, f_split]
    if (root / "classes.txt").is_file():
        inputs.append(root / "classes.txt")
        names = {k: v for k, (v, _) in _pairs(root / "classes.txt", "class_name", False).items()}
    tree = cub_hierarchy()
    for image_id, (name, line) in images.items():
        common.check_relpath(name, f_images, line)
        if image_id not in labels:
            raise common.fail(f_images, line, f"image {image_id} has no class in image_class_labels.txt")
        if image_id not in split:
            raise common.fail(f_images, line, f"image {image_id} is not in train_test_split.txt")
    for src, table in ((f_labels, labels), (f_split, split)):
        for image_id, (value, line) in table.items():
            if image_id not in images:
                raise common.fail(src, line, f"image {image_id} is not in images.txt")
            if src is f_labels and value not in tree.index:
                raise common.fail(src, line, f"class_id {value} is not one of the 200 CUB classes")
            if src is f_split and value not in (0, 1):
                raise common.fail(src, line, f"is_training_image must be 0 or 1, got {value}")
    rows: dict[str, list[int]] = {"train": [], "test": []}
    for image_id in sorted(images):
        cls = labels[image_id][0]
        if protocol == "dml":
            rows["train" if cls <= 100 else "test"].append(image_id)
        else:
            rows["train" if split[image_id][0] == 1 else "test"].append(image_id)
    tables = {}
    for s, ids in rows.items():
        cls = np.array([labels[i][0] for i in ids], dtype=np.int64)
        lab = np.stack([cls, tree.loc[cls, "family"].to_numpy(), tree.loc[cls, "order"].to_numpy()], 1)
        paths = [f"images/{images[i][0]}" for i in ids]
        cls_names = [names.get(int(c), str(c)) for c in cls]
        tables[s] = common.split_table([str(i) for i in ids], paths, lab, [cls_names, lab[:, 1], lab[:, 2]])
    return common.Conversion(DATASET, ["species", "family", "order"], tables, inputs, {"protocol": protocol})
