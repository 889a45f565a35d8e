"""iNaturalist 2018 (Van Horn et al.) -> hglv2 splits with the 7-level taxonomy (``inat2018``) or
the 2-level base variant (``inat-base``).

Official files in the dataset root: ``train2018.json`` / ``val2018.json`` (COCO-like: ``images``
``{id, file_name, ...}``, ``annotations`` ``{image_id, category_id}``, ``categories`` ``{id, name,
supercategory, kingdom, phylum, class, order, family, genus}``; README of visipedia/inat_comp,
2018). Image files: ``train_val2018/<supercategory>/<category id>/<image>.jpg``.

Splits (``protocol``):

- ``retrieval`` (chosen automatically when ``Inat_dataset_splits/Inaturalist_train_set1.txt`` and
  ``Inaturalist_test_set1.txt`` exist): the metric-learning split of Brown et al. (Smooth-AP) that
  the SupRank authors use (``suprank/datasets/inaturalist_2018.py``): splits ``train`` and
  ``test`` from those path lists; the species of an image is the category folder of its path.
- ``official``: ``train2018.json`` -> ``train``, ``val2018.json`` -> ``val`` (labels from the
  annotations).

Levels, as the authors build them: ``full`` (7): species (category id), genus, family, order,
class, phylum, kingdom, each level's ids dense in the sorted order of its values over all the
categories of ``train2018.json`` (taxonomic names are compared as strings, so two taxa with the
same name at one rank share that level, as in the authors' code). ``base`` (2): species and the
super-category folder of the image path (``<supercategory>``; the authors' ``hierarchy_mode:
base``, 13 training super-categories in their ``inat_base.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hglv2.convert import _common as common
from hglv2.errors import InputError

RANKS = ("genus", "family", "order", "class", "phylum", "kingdom")  # coarser than species
FULL_LEVELS = ("species", *RANKS)
SPLIT_FILES = {
    "train": "Inat_dataset_splits/Inaturalist_train_set1.txt",
    "test": "Inat_dataset_splits/Inaturalist_test_set1.txt",
}
PROTOCOLS = ("auto", "retrieval", "official")
HIERARCHIES = ("full", "base")


def _dataset(hierarchy: str, protocol: str) -> dict[str, str]:
    name = "inat2018" if hierarchy == "full" else "inat-base"
    levels = (
        "species, genus, family, order, class, phylum, kingdom"
        if hierarchy == "full"
        else ("species and super-category")
    )
    return {
        "name": name,
        "title": "iNaturalist 2018" + (" (base hierarchy)" if hierarchy == "base" else ""),
        "license": "iNaturalist terms of use; non-commercial research",
        "description": f"Levels: {levels}. Protocol: {protocol} ("
        + (
            "Inaturalist_{train,test}_set1.txt, the metric-learning split)"
            if protocol == "retrieval"
            else "train2018.json / val2018.json)"
        ),
    }


def load_coco(path: Path) -> dict[str, Any]:
    """Read and validate one iNaturalist 2018 JSON file (structure in the module docstring)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise common.fail(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise common.fail(path, None, "not valid UTF-8") from None
    if not isinstance(data, dict):
        raise common.fail(path, None, "expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise common.fail(path, None, f"missing list {key!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    cats: dict[int, dict[str, Any]] = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not is_int(c.get("id")):
            raise common.fail(path, None, f"categories[{k}]: needs an integer id")
        for field in ("supercategory", *RANKS):
            if not isinstance(c.get(field), str) or not c[field]:
                raise common.fail(
                    path, None, f"categories[{k}] (id {c['id']}): missing taxonomy field {field!r}"
                )
        if c["id"] in cats:
            raise common.fail(path, None, f"categories[{k}]: category id {c['id']} is listed twice")
        cats[c["id"]] = c
    images: dict[int, str] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise common.fail(path, None, f"images[{k}]: needs an integer id and a file_name")
        if im["id"] in images:
            raise common.fail(path, None, f"images[{k}]: image id {im['id']} is listed twice")
        images[im["id"]] = common.check_relpath(im["file_name"], path, None)
    labels: dict[int, int] = {}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not is_int(a.get("image_id")) or not is_int(a.get("category_id")):
            raise common.fail(path, None, f"annotations[{k}]: needs integer image_id and category_id")
        if a["image_id"] not in images:
            raise common.fail(path, None, f"annotations[{k}]: image_id {a['image_id']} is not in images")
        if a["category_id"] not in cats:
            raise common.fail(
                path, None, f"annotations[{k}]: category_id {a['category_id']} is not in categories"
            )
        if labels.get(a["image_id"], a["category_id"]) != a["category_id"]:
            raise common.fail(path, None, f"annotations[{k}]: image {a['image_id']} has two categories")
        labels[a["image_id"]] = a["category_id"]
    return {"categories": cats, "images": images, "labels": labels}


def _read_list(path: Path, cats: dict[int, dict[str, Any]]) -> tuple[list[str], list[int], list[str]]:
    """A split list (one image path per line) -> paths, species ids, super-category folders."""
    paths, species, supers, where = [], [], [], []
    for k, line in enumerate(common.read_lines(path), start=1):
        p = line.strip()
        if not p:
            continue
        common.check_relpath(p, path, k)
        parts = p.split("/")
        if len(parts) < 3:
            raise common.fail(path, k, f"expected <folder>/<supercategory>/<category id>/<image>, got {p!r}")
        try:
            cid = int(parts[-2])
        except ValueError:
            raise common.fail(path, k, f"category folder {parts[-2]!r} is not an integer id") from None
        if cid not in cats:
            raise common.fail(path, k, f"category {cid} is not in train2018.json")
        paths.append(p)
        species.append(cid)
        supers.append(parts[-3])
        where.append(k)
    common.check_unique_ids(paths, path, where)
    return paths, species, supers


Raw = dict[str, tuple[list[str], list[str], list[int], list[str]]]  # split -> ids, paths, species, supers


def _databases(root: Path, protocol: str) -> tuple[dict[str, Any], dict[str, Any] | None, list[Path]]:
    """``train2018.json``, ``val2018.json`` (needed by the official protocol, else read when
    present; its taxonomy must agree) and the files read."""
    f_train = common.need_file(root, "train2018.json")
    train = load_coco(f_train)
    cats = train["categories"]
    inputs = [f_train]
    val = None
    if protocol == "official" or (root / "val2018.json").is_file():
        f_val = common.need_file(root, "val2018.json")
        val = load_coco(f_val)
        inputs.append(f_val)
        for cid, c in val["categories"].items():
            if cid in cats and any(c[f] != cats[cid][f] for f in ("supercategory", *RANKS)):
                raise common.fail(
                    f_val, None, f"category {cid} has a different taxonomy than in train2018.json"
                )
    return train, val, inputs


def _retrieval_rows(root: Path, train: dict, val: dict | None, inputs: list[Path]) -> Raw:
    """The metric-learning split lists; an image listed in a JSON file keeps its id there."""
    by_name: dict[str, int] = {}
    for db in (train, val):
        if db is not None:
            by_name.update({name: i for i, name in db["images"].items()})
    raw: Raw = {}
    for split, rel in SPLIT_FILES.items():
        f = common.need_file(root, rel)
        inputs.append(f)
        paths, species, supers = _read_list(f, train["categories"])
        ids = [str(by_name[p]) if p in by_name else p for p in paths]
        raw[split] = (ids, paths, species, supers)
    return raw


def _official_rows(root: Path, train: dict, val: dict | None) -> Raw:
    """``train2018.json`` -> ``train``, ``val2018.json`` -> ``val``, labels from the annotations."""
    cats = train["categories"]
    raw: Raw = {}
    for split, db, f in (("train", train, root / "train2018.json"), ("val", val, root / "val2018.json")):
        assert db is not None
        missing = [i for i in db["images"] if i not in db["labels"]]
        if missing:
            raise common.fail(f, None, f"image {missing[0]} has no annotation")
        order = sorted(db["images"])
        paths = [db["images"][i] for i in order]
        species = [db["labels"][i] for i in order]
        for i, sid in zip(order, species, strict=True):
            if sid not in cats:
                raise common.fail(f, None, f"image {i}: category {sid} is not in train2018.json")
        supers = [
            p.split("/")[-3] if p.count("/") >= 2 else cats[s]["supercategory"]
            for p, s in zip(paths, species, strict=True)
        ]
        raw[split] = ([str(i) for i in order], paths, species, supers)
    return raw


def _tables(raw: Raw, cats: dict[int, dict[str, Any]], hierarchy: str, root: Path) -> dict:
    """The split tables; per-level dense ids over every category of ``train2018.json`` (the
    authors' numbering), super-categories dense over all splits."""
    cat_ids = sorted(cats)
    rank_ids = {}
    for field in RANKS:
        ids, _ = common.dense_ids([cats[c][field] for c in cat_ids])
        rank_ids[field] = dict(zip(cat_ids, ids.tolist(), strict=True))
    species_ids = {c: i for i, c in enumerate(cat_ids)}
    all_supers = sorted({s for v in raw.values() for s in v[3]})
    super_ids = {s: i for i, s in enumerate(all_supers)}
    tables = {}
    for split, (ids, paths, species, supers) in raw.items():
        common.check_unique_ids(ids, root / split)
        sp = np.array([species_ids[s] for s in species], dtype=np.int64)
        if hierarchy == "full":
            cols = [sp] + [np.array([rank_ids[f][s] for s in species], dtype=np.int64) for f in RANKS]
            names = [[str(s) for s in species]] + [[cats[s][f] for s in species] for f in RANKS]
        else:
            cols = [sp, np.array([super_ids[s] for s in supers], dtype=np.int64)]
            names = [[str(s) for s in species], supers]
        tables[split] = common.split_table(ids, paths, np.stack(cols, 1), names)
    return tables


def read_inat(root: Path, hierarchy: str = "full", protocol: str = "auto") -> common.Conversion:
    """Read and validate iNaturalist 2018 under ``root`` (module docstring)."""
    if hierarchy not in HIERARCHIES:
        raise InputError(f"inat: hierarchy must be one of {', '.join(HIERARCHIES)}, not {hierarchy!r}")
    if protocol not in PROTOCOLS:
        raise InputError(f"inat: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if protocol == "auto":
        protocol = "retrieval" if all((root / f).is_file() for f in SPLIT_FILES.values()) else "official"
    train, val, inputs = _databases(root, protocol)
    if protocol == "retrieval":
        raw = _retrieval_rows(root, train, val, inputs)
    else:
        raw = _official_rows(root, train, val)
    return common.Conversion(
        _dataset(hierarchy, protocol),
        list(FULL_LEVELS) if hierarchy == "full" else ["species", "supercategory"],
        _tables(raw, train["categories"], hierarchy, root),
        inputs,
        {"protocol": protocol, "hierarchy": hierarchy},
    )
