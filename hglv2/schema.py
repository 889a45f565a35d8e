"""Column names and the typed split schema shared by the split folders (:mod:`hglv2.splits`: the
export, the synthetic data), the GLDv2 joins and the hierarchy pipeline.

Split Parquet files (``train``, ``train_full``, ``index``, ``query``; :data:`SPLIT_SCHEMA`) have one
row per image with these columns:

=========================  ========  =====================================================
column                     type      meaning
=========================  ========  =====================================================
id                         string    image id (16 lowercase hex characters in GLDv2)
landmark_id                int64     GLDv2 landmark id (-1 for query images without one)
path                       string    image path relative to the image root, ``a/b/c/<id>.jpg``
category                   string    Commons category URL of the landmark (nullable)
supercategory              string    most specific Wikidata class label (nullable)
hierarchical_label         string    cluster name (level 1, nullable)
natural_or_human_made      string    top level name (level 2, nullable)
level0, level1, level2     int64     integer label per level; -1 where the level is unknown
hierarchy_complete         bool      every level known
usage                      string    query split only: Public / Private (GLDv2 solution)
recognition_landmark_id    int64     query split only: first landmark of the recognition
                                     solution (train numbering), -1 if none
=========================  ========  =====================================================

Integer ids of the coarse levels are dense (0..K-1) in the sorted order of their names, so the same
hierarchy table always gives the same integers. ``level0`` is the landmark id itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

#: the integer label columns of a split, finest first
LEVEL_COLUMNS = ("level0", "level1", "level2")
#: the column naming each level (landmark, cluster, top level)
LEVEL_NAME_COLUMNS = ("landmark_id", "hierarchical_label", "natural_or_human_made")
#: the nullable string columns of the hierarchy joined into a split
HIERARCHY_NAME_COLUMNS = ("category", "supercategory", "hierarchical_label", "natural_or_human_made")

SPLIT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("landmark_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        *(pa.field(c, pa.string()) for c in HIERARCHY_NAME_COLUMNS),
        *(pa.field(c, pa.int64(), nullable=False) for c in LEVEL_COLUMNS),
        pa.field("hierarchy_complete", pa.bool_(), nullable=False),
    ]
)
#: the query split adds the solution's Public/Private column and the recognition landmark
QUERY_SCHEMA = SPLIT_SCHEMA.append(pa.field("usage", pa.string(), nullable=False)).append(
    pa.field("recognition_landmark_id", pa.int64(), nullable=False)
)
SPLIT_COLUMNS = tuple(SPLIT_SCHEMA.names)

# The two landmark numberings of the GLDv2 release: train ids (train*.csv, train_label_to_*.csv,
# recognition_solution_v2.1.csv) and index ids (index_image_to_landmark.csv, index_label_to_*.csv).
# Their integer ranges overlap and mean different places ("the integer landmark id's mentioned here
# are different from the ones in the train set", GLDv2 README, index section).
NUMBERINGS = ("train", "index")

# The hierarchy table (hglv2.hierarchy.labels): one row per (numbering, landmark_id).
HIERARCHY_COLUMNS = (
    "landmark_id",
    "numbering",
    "category",
    "qid",
    "supercategory",
    "supercategory_qid",
    "hierarchical_label",
    "natural_or_human_made",
    "provenance",
    "revision",
)
PROVENANCES = ("rule", "decision", "override", "published")

# Columns of the published GLDv2 *_label_to_hierarchical.csv files.
PUBLISHED_HIERARCHY_COLUMNS = (
    "landmark_id",
    "category",
    "supercategory",
    "hierarchical_label",
    "natural_or_human_made",
)


def present_level_columns(names: Sequence[str]) -> list[str]:
    """The label columns ``level0, level1, ...`` of a table with columns ``names``: finest first,
    up to the first missing one."""
    out: list[str] = []
    while f"level{len(out)}" in names:
        out.append(f"level{len(out)}")
    return out


def image_relpath(image_id: str, ext: str = ".jpg") -> str:
    """GLDv2 folder layout: ``abcdef0123456789`` -> ``a/b/c/abcdef0123456789.jpg``."""
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}{ext}"
