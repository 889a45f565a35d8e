"""Stanford Online Products (Oh Song et al., CVPR 2016) -> hglv2 splits ``train`` and ``test``.

Official files in the dataset root: ``Ebay_train.txt`` and ``Ebay_test.txt``, space separated,
header ``image_id class_id super_class_id path``, ids 1-based, ``path`` relative to the root
(``bicycle_final/111085122871_0.JPG``). Two levels, as the authors use them
(``suprank/datasets/sop.py``: ``class_id`` then ``super_class_id``): ``level0`` = ``class_id``,
``level1`` = ``super_class_id`` (the dataset's own ids). ``level1_name`` is the super-class folder
without its ``_final`` suffix (``bicycle``), as the authors name super-classes.

Validated: the exact header, four fields per line, integer ids >= 1, unique image ids, safe
paths, and one super-class per class (across both files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hglv2.convert import _common as common

HEADER = ("image_id", "class_id", "super_class_id", "path")
FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
DATASET = {
    "name": "sop",
    "title": "Stanford Online Products",
    "license": "see the dataset's page; research use",
    "description": "Splits `train` (Ebay_train.txt) and `test` (Ebay_test.txt); levels: product "
    "(class_id) and super-class (super_class_id), the dataset's own 1-based ids.",
}


def read_ebay(path: Path) -> tuple[list[str], list[str], np.ndarray, list[int]]:
    """One ``Ebay_*.txt`` -> image ids, paths, labels (N, 2) = (class_id, super_class_id), lines."""
    lines = common.read_lines(path)
    if not lines or tuple(lines[0].split()) != HEADER:
        got = lines[0] if lines else "(empty file)"
        raise common.fail(path, 1, f"expected the header {' '.join(HEADER)!r}, got {got!r}")
    ids, paths, labels, where = [], [], [], []
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 4:
            raise common.fail(
                path, k, f"expected 4 space-separated fields ({' '.join(HEADER)}), got {len(parts)}"
            )
        image_id = common.parse_int(parts[0], path, k, "image_id", 1)
        cls = common.parse_int(parts[1], path, k, "class_id", 1)
        sup = common.parse_int(parts[2], path, k, "super_class_id", 1)
        ids.append(str(image_id))
        paths.append(common.check_relpath(parts[3], path, k))
        labels.append((cls, sup))
        where.append(k)
    common.check_unique_ids(ids, path, where)
    return ids, paths, np.asarray(labels, dtype=np.int64).reshape(-1, 2), where


def read_sop(root: Path) -> common.Conversion:
    """Read and validate SOP under ``root`` (module docstring)."""
    read = {s: (common.need_file(root, f), read_ebay(common.need_file(root, f))) for s, f in FILES.items()}
    super_of: dict[int, tuple[int, str, int]] = {}
    for _, (path, (_, _, labels, where)) in read.items():
        for (cls, sup), line in zip(labels.tolist(), where, strict=True):
            prev = super_of.setdefault(cls, (sup, path.name, line))
            if prev[0] != sup:
                raise common.fail(
                    path,
                    line,
                    f"class_id {cls} has super_class_id {sup} here but {prev[0]} at {prev[1]}:{prev[2]}",
                )
    tables = {}
    for split, (_, (ids, paths, labels, _)) in read.items():
        sup_names = [p.split("/")[0].removesuffix("_final") if "/" in p else None for p in paths]
        tables[split] = common.split_table(ids, paths, labels, [labels[:, 0].tolist(), sup_names])
    return common.Conversion(DATASET, ["class", "super_class"], tables, [p for p, _ in read.values()])
