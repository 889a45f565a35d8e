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
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hglv2.convert._common import (
    check_relpath,
    check_unique_ids,
    dense_ids,
    fail,
    need_file,
    read_lines,
    split_table,
    write_converted,
)
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
        raise fail(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise fail(path, None, "not valid UTF-8") from None
    if not isinstance(data, dict):
        raise fail(path, None, "expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise fail(path, None, f"missing list {key!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    cats: dict[int, dict[str, Any]] = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not is_int(c.get("id")):
            raise fail(path, None, f"categories[{k}]: needs an integer id")
        for field in ("supercategory", *RANKS):
            if not isinstance(c.get(field), str) or not c[field]:
                raise fail(path, None, f"categories[{k}] (id {c['id']}): missing taxonomy field {field!r}")
        if c["id"] in cats:
            raise fail(path, None, f"categories[{k}]: category id {c['id']} is listed twice")
        cats[c["id"]] = c
    images: dict[int, str] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise fail(path, None, f"images[{k}]: needs an integer id and a file_name")
        if im["id"] in images:
            raise fail(path, None, f"images[{k}]: image id {im['id']} is listed twice")
        images[im["id"]] = check_relpath(im["file_name"], path, None)
    labels: dict[int, int] = {}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not is_int(a.get("image_id")) or not is_int(a.get("category_id")):
            raise fail(path, None, f"annotations[{k}]: needs integer image_id and category_id")
        if a["image_id"] not in images:
            raise fail(path, None, f"annotations[{k}]: image_id {a['image_id']} is not in images")
        if a["category_id"] not in cats:
            raise fail(path, None, f"annotations[{k}]: category_id {a['category_id']} is not in categories")
        if labels.get(a["image_id"], a["category_id"]) != a["category_id"]:
            raise fail(path, None, f"annotations[{k}]: image {a['image_id']} has two categories")
        labels[a["image_id"]] = a["category_id"]
    return {"categories": cats, "images": images, "labels": labels}


def _read_list(path: Path, cats: dict[int, dict[str, Any]]) -> tuple[list[str], list[int], list[str]]:
    """A split list (one image path per line) -> paths, species ids, super-category folders."""
    paths, species, supers, where = [], [], [], []
    for k, line in enumerate(read_lines(path), start=1):
        p = line.strip()
        if not p:
            continue
        check_relpath(p, path, k)
        parts = p.split("/")
        if len(parts) < 3:
            raise fail(path, k, f"expected <folder>/<supercategory>/<category id>/<image>, got {p!r}")
        try:
            cid = int(parts[-2])
        except ValueError:
            raise fail(path, k, f"category folder {parts[-2]!r} is not an integer id") from None
        if cid not in cats:
            raise fail(path, k, f"category {cid} is not in train2018.json")
        paths.append(p)
        species.append(cid)
        supers.append(parts[-3])
        where.append(k)
    check_unique_ids(paths, path, where)
    return paths, species, supers


def convert_inat(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    hierarchy: str = "full",
    protocol: str = "auto",
    command: Sequence[str] | None = None,
    check_images: bool = False,
) -> dict[str, Any]:
    """Convert iNaturalist 2018 under ``root`` (module docstring); returns the manifest."""
    if hierarchy not in HIERARCHIES:
        raise InputError(f"inat: hierarchy must be one of {', '.join(HIERARCHIES)}, not {hierarchy!r}")
    if protocol not in PROTOCOLS:
        raise InputError(f"inat: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    root = Path(root)
    if protocol == "auto":
        protocol = "retrieval" if all((root / f).is_file() for f in SPLIT_FILES.values()) else "official"
    f_train = need_file(root, "train2018.json")
    train = load_coco(f_train)
    cats = train["categories"]
    inputs = [f_train]
    val = None
    if protocol == "official" or (root / "val2018.json").is_file():
        f_val = need_file(root, "val2018.json")
        val = load_coco(f_val)
        inputs.append(f_val)
        for cid, c in val["categories"].items():
            if cid in cats and any(c[f] != cats[cid][f] for f in ("supercategory", *RANKS)):
                raise fail(f_val, None, f"category {cid} has a different taxonomy than in train2018.json")
    # per-level dense ids over every category of train2018.json (the authors' numbering)
    cat_ids = sorted(cats)
    rank_ids = {}
    for field in RANKS:
        ids, _ = dense_ids([cats[c][field] for c in cat_ids])
        rank_ids[field] = dict(zip(cat_ids, ids.tolist(), strict=True))
    species_ids = {c: i for i, c in enumerate(cat_ids)}

    raw: dict[str, tuple[list[str], list[str], list[int], list[str]]] = {}  # ids, paths, species, supers
    if protocol == "retrieval":
        by_name: dict[str, int] = {}
        for db in (train, val):
            if db is not None:
                by_name.update({name: i for i, name in db["images"].items()})
        for split, rel in SPLIT_FILES.items():
            f = need_file(root, rel)
            inputs.append(f)
            paths, species, supers = _read_list(f, cats)
            ids = [str(by_name[p]) if p in by_name else p for p in paths]
            raw[split] = (ids, paths, species, supers)
    else:
        for split, db, f in (("train", train, f_train), ("val", val, root / "val2018.json")):
            assert db is not None
            missing = [i for i in db["images"] if i not in db["labels"]]
            if missing:
                raise fail(f, None, f"image {missing[0]} has no annotation")
            order = sorted(db["images"])
            paths = [db["images"][i] for i in order]
            species = [db["labels"][i] for i in order]
            for i, sid in zip(order, species, strict=True):
                if sid not in cats:
                    raise fail(f, None, f"image {i}: category {sid} is not in train2018.json")
            supers = [
                p.split("/")[-3] if p.count("/") >= 2 else cats[s]["supercategory"]
                for p, s in zip(paths, species, strict=True)
            ]
            raw[split] = ([str(i) for i in order], paths, species, supers)

    all_supers = sorted({s for v in raw.values() for s in v[3]})
    super_ids = {s: i for i, s in enumerate(all_supers)}
    tables = {}
    for split, (ids, paths, species, supers) in raw.items():
        check_unique_ids(ids, root / split)
        sp = np.array([species_ids[s] for s in species], dtype=np.int64)
        if hierarchy == "full":
            cols = [sp] + [np.array([rank_ids[f][s] for s in species], dtype=np.int64) for f in RANKS]
            names = [[str(s) for s in species]] + [[cats[s][f] for s in species] for f in RANKS]
        else:
            cols = [sp, np.array([super_ids[s] for s in supers], dtype=np.int64)]
            names = [[str(s) for s in species], supers]
        tables[split] = split_table(ids, paths, np.stack(cols, 1), names)
    return write_converted(
        out_dir,
        dataset=_dataset(hierarchy, protocol),
        level_names=list(FULL_LEVELS) if hierarchy == "full" else ["species", "supercategory"],
        tables=tables,
        inputs=inputs,
        root=root,
        extra={"protocol": protocol, "hierarchy": hierarchy},
        command=command,
        check_images=check_images,
    )
