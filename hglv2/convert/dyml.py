"""DyML (Sun et al., "Dynamic Metric Learning", CVPR 2021) -> hglv2 splits; ``dyml-vehicle``,
``dyml-animal`` and ``dyml-product`` share one layout for training and differ for testing.

Files, as the SupRank authors read them (``suprank/datasets/dyml.py``; DyML release of
SupetZYK/DynamicMetricLearning):

- ``train/label.csv`` (images ``train/imgs/<fname>``): columns ``fname``, ``coarse_id``,
  ``middle_id``, ``fine_id``, separated by ``", "``. Three levels: ``level0`` = fine,
  ``level1`` = middle, ``level2`` = coarse (the dataset's ids).
- vehicle / animal: three test sets, one per granularity ``g`` in fine, middle, coarse:
  ``bmk_<g>/query.csv`` and ``bmk_<g>/gallery.csv`` (images ``bmk_<g>/query/<fname>``, ...),
  columns ``fname``, ``labels``: one label, at granularity ``g``. Splits ``query_<g>`` and
  ``gallery_<g>``, each with the single column ``level0`` (the paper's metric averages the three).
- product: one test set, ``mini-bmk_all_in_one/label.csv`` (images ``mini-bmk_all_in_one/imgs/``)
  with the three levels like ``train``; split ``test`` (queries against themselves).

**The released header.** In the released files the header line has no line end before the first
row: it reads ``fname, coarse_id, middle_id, fine_id0.jpg, 3, 7, 11`` (which is why the authors'
pandas code names the fine column ``" fine_id0.jpg"`` and the test label column
``" labels0.jpg"``, and why the DyML authors' own reader splits the first line at ``_id``). Here
the header is recognised by its column names; when the last name runs into the first row, that row
is recovered (the authors' pandas reading drops it: one image per file) and
``header_repaired`` in the manifest lists the files. A well-formed header is read as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hglv2.convert import _common as common
from hglv2.errors import InputError

VARIANTS = ("vehicle", "animal", "product")
GRANULARITIES = ("fine", "middle", "coarse")
LEVELS = ("fine_id", "middle_id", "coarse_id")  # finest first
LABEL_NAMES = ("labels", "label", "label_id")


def _header(first: str, names: Sequence[str], path: Path) -> tuple[list[str], list[str] | None]:
    """Parse the header line: (column names, the glued first row or None)."""
    tokens = [t.strip() for t in first.split(",")]
    n = len(tokens)
    if n >= 2 and all(t in names or t == "fname" for t in tokens) and tokens[0] == "fname":
        return tokens, None
    k = (n + 1) // 2  # a glued header: k names, then k - 1 values of the first row
    if n % 2 == 1 and k >= 2 and tokens[0] == "fname":
        last = tokens[k - 1]
        for name in names:
            if last.startswith(name) and len(last) > len(name) and all(t in names for t in tokens[1 : k - 1]):
                header = [*tokens[: k - 1], name]
                return header, [last[len(name) :], *tokens[k:]]
    raise common.fail(path, 1, f"expected a header 'fname, {', '.join(names)}' (any order), got {first!r}")


def read_label_csv(
    path: Path, names: Sequence[str]
) -> tuple[list[str], dict[str, list[int]], list[int], bool]:
    """A DyML csv -> (fnames, {column: ids}, line numbers, header repaired)."""
    lines = common.read_lines(path)
    if not lines:
        raise common.fail(path, 1, "empty file")
    header, glued = _header(lines[0], names, path)
    rows: list[tuple[int, list[str]]] = []
    if glued is not None:
        rows.append((1, glued))
    rows += [(k, [t.strip() for t in line.split(",")]) for k, line in enumerate(lines[1:], 2) if line.strip()]
    fnames: list[str] = []
    cols: dict[str, list[int]] = {c: [] for c in header[1:]}
    where = []
    for k, parts in rows:
        if len(parts) != len(header):
            raise common.fail(
                path,
                k,
                f"expected {len(header)} comma-separated fields ({', '.join(header)}), got {len(parts)}",
            )
        fnames.append(common.check_relpath(parts[0], path, k))
        for c, v in zip(header[1:], parts[1:], strict=True):
            cols[c].append(common.parse_int(v, path, k, c, 0))
        where.append(k)
    common.check_unique_ids(fnames, path, where)
    return fnames, cols, where, glued is not None


def _three_levels(path: Path, folder: str, split_name: str, repaired: list[str]):
    fnames, cols, _, fixed = read_label_csv(path, LEVELS)
    missing = [c for c in LEVELS if c not in cols]
    if missing:
        raise common.fail(path, 1, f"missing column(s) {', '.join(missing)}")
    if fixed:
        repaired.append(split_name)
    labels = np.stack([np.asarray(cols[c], dtype=np.int64) for c in LEVELS], 1)
    paths = [f"{folder}/{f}" for f in fnames]
    return common.split_table(paths, paths, labels, [labels[:, j].tolist() for j in range(3)])


def _test_tables(root: Path, inputs: list[Path], repaired: list[str]) -> dict:
    """vehicle / animal: ``query_<g>`` and ``gallery_<g>`` for each granularity (one label each)."""
    tables = {}
    for g in GRANULARITIES:
        for side in ("query", "gallery"):
            rel = f"bmk_{g}/{side}.csv"
            f = common.need_file(root, rel)
            inputs.append(f)
            fnames, cols, _, fixed = read_label_csv(f, LABEL_NAMES)
            if fixed:
                repaired.append(rel)
            if len(cols) != 1:
                raise common.fail(f, 1, "expected the two columns fname, labels")
            lab = np.asarray(next(iter(cols.values())), dtype=np.int64)[:, None]
            paths = [f"bmk_{g}/{side}/{x}" for x in fnames]
            tables[f"{side}_{g}"] = common.split_table(paths, paths, lab, [lab[:, 0].tolist()])
    return tables


def read_dyml(root: Path, variant: str) -> common.Conversion:
    """Read and validate DyML-``variant`` under ``root`` (module docstring)."""
    if variant not in VARIANTS:
        raise InputError(f"dyml: variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    repaired: list[str] = []
    inputs = [common.need_file(root, "train/label.csv")]
    tables = {"train": _three_levels(inputs[0], "train/imgs", "train/label.csv", repaired)}
    if variant == "product":
        f = common.need_file(root, "mini-bmk_all_in_one/label.csv")
        inputs.append(f)
        tables["test"] = _three_levels(
            f, "mini-bmk_all_in_one/imgs", "mini-bmk_all_in_one/label.csv", repaired
        )
        splits_doc = "train; test (mini-bmk_all_in_one, queries against themselves)"
    else:
        tables.update(_test_tables(root, inputs, repaired))
        splits_doc = "train; query_<g> / gallery_<g> for g in fine, middle, coarse (one label each)"
    dataset = {
        "name": f"dyml-{variant}",
        "title": f"DyML-{variant.title()}",
        "license": "see the DyML release; research use",
        "description": f"Levels: fine, middle, coarse (the dataset's ids). Splits: {splits_doc}.",
    }
    extra = {"variant": variant, "header_repaired": repaired}
    return common.Conversion(dataset, ["fine", "middle", "coarse"], tables, inputs, extra)
