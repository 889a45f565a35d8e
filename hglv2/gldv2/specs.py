"""The public GLDv2 metadata files: names, folders, columns and URLs.

Files (https://github.com/cvdfoundation/google-landmark), all under one base URL, by default
``https://s3.amazonaws.com/google-landmark`` (``metadata/...`` and ``ground_truth/...``):

===================================  ==================================================  ===========
file                                 columns                                             folder
===================================  ==================================================  ===========
train.csv                            id, url, landmark_id                                metadata
train_clean.csv                      landmark_id, images (space-separated image ids)     metadata
train_label_to_category.csv          landmark_id, category                               metadata
train_label_to_hierarchical.csv      landmark_id, category, supercategory,               metadata
                                     hierarchical_label, natural_or_human_made
index.csv                            id                                                  metadata
index_image_to_landmark.csv          id, landmark_id                                     metadata
index_label_to_category.csv          landmark_id, category                               metadata
index_label_to_hierarchical.csv      (as train_label_to_hierarchical.csv)                metadata
test.csv                             id                                                  metadata
retrieval_solution_v2.1.csv          id, images (ids, or the marker ``None``), Usage     ground_truth
recognition_solution_v2.1.csv        id, landmarks (ids, or empty), Usage                ground_truth
===================================  ==================================================  ===========
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hglv2.errors import InputError

DEFAULT_BASE_URL = "https://s3.amazonaws.com/google-landmark"


@dataclass(frozen=True)
class FileSpec:
    """One GLDv2 metadata file: where it lives and what its columns must hold."""

    name: str
    folder: str  # "metadata" or "ground_truth" under the base URL
    kind: str
    columns: tuple[str, ...]


KIND_COLUMNS = {
    "train": ("id", "url", "landmark_id"),
    "train_clean": ("landmark_id", "images"),
    "label_to_category": ("landmark_id", "category"),
    "label_to_hierarchical": (
        "landmark_id",
        "category",
        "supercategory",
        "hierarchical_label",
        "natural_or_human_made",
    ),
    "image_list": ("id",),
    "image_to_landmark": ("id", "landmark_id"),
    "retrieval_solution": ("id", "images", "Usage"),
    "recognition_solution": ("id", "landmarks", "Usage"),
}

# The release's file names (the table below, the joins of :mod:`hglv2.gldv2.export`).
TRAIN = "train.csv"
TRAIN_CLEAN = "train_clean.csv"
INDEX = "index.csv"
INDEX_IMAGE_TO_LANDMARK = "index_image_to_landmark.csv"
TEST = "test.csv"
RETRIEVAL_SOLUTION = "retrieval_solution_v2.1.csv"
RECOGNITION_SOLUTION = "recognition_solution_v2.1.csv"


def category_file(numbering: str) -> str:
    """``train_label_to_category.csv`` or ``index_label_to_category.csv``."""
    return f"{numbering}_label_to_category.csv"


def hierarchy_file(numbering: str) -> str:
    """The published ``train_`` or ``index_label_to_hierarchical.csv``."""
    return f"{numbering}_label_to_hierarchical.csv"


def numbering_of_file(path: str | os.PathLike[str]) -> str:
    """The landmark numbering of a GLDv2 file, from its name: ``index*`` files are in the index
    numbering, every other file (``train*``, ``recognition_solution*``, renamed copies) in the
    train one (:data:`hglv2.schema.NUMBERINGS`)."""
    return "index" if Path(path).name.startswith("index") else "train"


def _spec(name: str, kind: str, folder: str = "metadata") -> FileSpec:
    return FileSpec(name, folder, kind, KIND_COLUMNS[kind])


FILES: dict[str, FileSpec] = {
    s.name: s
    for s in (
        _spec(TRAIN, "train"),
        _spec(TRAIN_CLEAN, "train_clean"),
        _spec(category_file("train"), "label_to_category"),
        _spec(hierarchy_file("train"), "label_to_hierarchical"),
        _spec(INDEX, "image_list"),
        _spec(INDEX_IMAGE_TO_LANDMARK, "image_to_landmark"),
        _spec(category_file("index"), "label_to_category"),
        _spec(hierarchy_file("index"), "label_to_hierarchical"),
        _spec(TEST, "image_list"),
        _spec(RETRIEVAL_SOLUTION, "retrieval_solution", "ground_truth"),
        _spec(RECOGNITION_SOLUTION, "recognition_solution", "ground_truth"),
    )
}


def spec_for(path: str | os.PathLike[str], kind: str | None = None) -> FileSpec:
    """The spec of a file, from ``kind`` or else from its name (``*_label_to_category.csv``...)."""
    name = Path(path).name
    if kind is not None:
        if kind not in KIND_COLUMNS:
            raise ValueError(f"unknown GLDv2 file kind {kind!r} (one of {', '.join(KIND_COLUMNS)})")
        return _spec(name, kind)
    if name in FILES:
        return FILES[name]
    for suffix, k in (
        ("_label_to_category.csv", "label_to_category"),
        ("_label_to_hierarchical.csv", "label_to_hierarchical"),
        ("_image_to_landmark.csv", "image_to_landmark"),
    ):
        if name.endswith(suffix):
            return _spec(name, k)
    for prefix, k in (
        ("retrieval_solution", "retrieval_solution"),
        ("recognition_solution", "recognition_solution"),
    ):
        if name.startswith(prefix):
            return _spec(name, k, "ground_truth")
    raise InputError(f"{name}: not a known GLDv2 file name; pass its kind explicitly")


def file_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base_url>/<metadata|ground_truth>/<name>`` for a known file name."""
    if name not in FILES:
        raise InputError(f"{name}: not a GLDv2 metadata file (known: {', '.join(FILES)})")
    return f"{base_url.rstrip('/')}/{FILES[name].folder}/{name}"


def shard_name(k: int) -> str:
    """The file name of image tar shard ``k`` of a split, ``images_NNN.tar`` (its official md5 file
    is ``md5.images_NNN.txt``); prepared shards (:mod:`hglv2.reencode`) keep the same names."""
    return f"images_{k:03d}.tar"
