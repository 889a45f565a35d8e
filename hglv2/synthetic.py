"""The embedded hierarchical landmarks: a deterministic generator of small landmark images.

Appearance follows a hierarchy table (one row per landmark, :data:`hglv2.schema.HIERARCHY_COLUMNS`):

- the **top level** (``natural_or_human_made``) sets the scene family: a natural scene (sky, wavy
  green/brown ground, organic blobs) or a built one (grey sky, paved ground with a grid, building
  silhouettes), and the hue range of the structures;
- the **cluster** (``hierarchical_label``) sets the structure's shape family (peaks, water, cascade,
  trees; tower, arches, gable, crenels) and a base hue;
- the **landmark** sets the specific geometry (number of parts, proportions) and colours (a hue near
  its cluster's, its own saturation/value and a secondary colour).

Every image is a new *view* of its landmark: position, scale, rotation, lighting (brightness, colour
cast, contrast), clutter (small foreground objects), occlusion (a random block) and sensor noise.

:func:`generate` writes the layout of the real export (:mod:`hglv2.splits`): Parquet splits
``train``, ``query`` and ``index`` with the columns :data:`hglv2.schema.SPLIT_COLUMNS` (plus
``usage`` and ``recognition_landmark_id`` in ``query``), JPEG images under
``images/a/b/c/<id>.jpg``, a ``manifest.json`` and a dataset card ``README.md`` (Hugging Face
``configs`` for every split), written through :func:`hglv2.splits.write_split_folder`; so the
training code cannot tell the difference. Training and evaluation landmarks are disjoint, as in
H-GLDv2: the landmarks of each cluster are split between ``train`` and ``query``/``index``.

Everything is a pure function of (hierarchy table, parameters, seed): the same call gives the same
bytes (every random draw comes from a NumPy generator seeded by a sha256 of its purpose).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw

from hglv2.errors import InputError
from hglv2.fileio import atomic_path, folder_transaction, sha256_file
from hglv2.gldv2.specs import hierarchy_file
from hglv2.schema import (
    HIERARCHY_COLUMNS,
    LEVEL_COLUMNS,
    LEVEL_NAME_COLUMNS,
    QUERY_SCHEMA,
    SPLIT_COLUMNS,
    image_relpath,
)
from hglv2.splits import FORMAT_VERSION, Card, SplitFormat, loading_lines, write_split_folder

#: the hierarchy used when neither a table nor ``data/sample/`` is available
BUILTIN_CLUSTERS = {
    "natural": ("mountain", "lake", "waterfall", "forest"),
    "human-made": ("tower", "bridge", "church", "castle"),
}
BUILTIN_LANDMARKS_PER_CLUSTER = 12
#: shape families per scene family; a cluster takes the family of its rank within its top level
NATURAL_FAMILIES = ("peaks", "water", "cascade", "trees")
BUILT_FAMILIES = ("tower", "arches", "gable", "crenels")
#: the published sample hierarchy, relative to the repository root (used when present)
DEFAULT_SAMPLE_HIERARCHY = Path("data") / "sample" / hierarchy_file("train")


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of :func:`generate` (recorded in the manifest)."""

    seed: int = 0
    image_size: int = 64
    train_images: int = 8  # images per training landmark
    query_images: int = 2  # query images per evaluation landmark
    index_images: int = 6  # index (gallery) images per evaluation landmark
    train_fraction: float = 0.5  # fraction of each cluster's landmarks used for training
    max_clusters: int | None = None  # keep at most this many clusters per top level
    landmarks_per_cluster: int | None = None  # keep at most this many landmarks per cluster
    jpeg_quality: int = 90


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(_seed(*parts))


def image_id(seed: int, landmark_id: int, view: int) -> str:
    """Deterministic 16-hex-character image id of view ``view`` of ``landmark_id``."""
    return hashlib.sha256(f"hglv2-synthetic\x1f{seed}\x1f{landmark_id}\x1f{view}".encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# hierarchy


def builtin_hierarchy(landmarks_per_cluster: int = BUILTIN_LANDMARKS_PER_CLUSTER) -> pd.DataFrame:
    """The built-in hierarchy table: 2 top levels x 4 clusters x ``landmarks_per_cluster``."""
    rows = []
    lid = 1000
    for top, clusters in BUILTIN_CLUSTERS.items():
        for cluster in clusters:
            for k in range(landmarks_per_cluster):
                rows.append(
                    {
                        "landmark_id": lid,
                        "category": None,
                        "qid": None,
                        "supercategory": cluster,
                        "supercategory_qid": None,
                        "hierarchical_label": cluster,
                        "natural_or_human_made": top,
                        "provenance": "rule",
                        "revision": None,
                    }
                )
                lid += 1
                del k
    df = pd.DataFrame(rows, columns=list(HIERARCHY_COLUMNS))
    df["landmark_id"] = df["landmark_id"].astype("int64")
    for col in HIERARCHY_COLUMNS[1:]:
        df[col] = df[col].astype("string")
    return df


def default_hierarchy_path(start: str | os.PathLike[str] | None = None) -> Path | None:
    """``data/sample/train_label_to_hierarchical.csv`` of the working directory, or ``None``."""
    path = Path(start or ".") / DEFAULT_SAMPLE_HIERARCHY
    return path if path.is_file() else None


def load_table(hierarchy: str | os.PathLike[str] | pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """Resolve ``hierarchy`` to (table, source description).

    ``None`` means the embedded sample (``data/sample/...`` under the working directory) when it
    exists, else :func:`builtin_hierarchy`; ``"builtin"`` forces the built-in table.
    """
    from hglv2.hierarchy.labels import load_hierarchy_table

    if isinstance(hierarchy, pd.DataFrame):
        return hierarchy, "dataframe"
    if hierarchy is None:
        path = default_hierarchy_path()
        if path is None:
            return builtin_hierarchy(), "builtin"
        hierarchy = path
    if str(hierarchy) == "builtin":
        return builtin_hierarchy(), "builtin"
    path = Path(hierarchy)
    # a table of both GLDv2 numberings (`make hierarchy`): the train landmarks (ids are per numbering)
    table = load_hierarchy_table(path, numbering="train")
    return table, f"{path.name} sha256:{sha256_file(path)}"


@dataclass(frozen=True)
class LandmarkSpec:
    """Everything that fixes a landmark's appearance (derived from its rows of the hierarchy)."""

    landmark_id: int
    cluster: str
    top: str
    natural: bool
    family: str
    cluster_hue: float
    hue: float
    sat: float
    val: float
    secondary: tuple[int, int, int]
    geometry: tuple[float, ...]


def _is_natural(top: str) -> bool:
    t = top.strip().lower()
    return t.startswith("natural") or t == "nature"


def landmark_specs(table: pd.DataFrame, params: SyntheticParams) -> list[LandmarkSpec]:
    """One :class:`LandmarkSpec` per landmark with a complete hierarchy (selection by ``params``).

    Landmarks whose cluster or top level is missing are left out (the generator draws landmarks of
    known families only); the table's other rows are never modified.
    """
    for col in LEVEL_NAME_COLUMNS:
        if col not in table.columns:
            raise InputError(f"hierarchy table: missing column {col}")
    t = table[list(LEVEL_NAME_COLUMNS)].dropna()
    t = t.sort_values("landmark_id", kind="stable")
    if t.empty:
        raise InputError("hierarchy table: no landmark has both a hierarchical_label and a top level")
    specs: list[LandmarkSpec] = []
    for top in sorted(t["natural_or_human_made"].unique()):
        natural = _is_natural(top)
        families = NATURAL_FAMILIES if natural else BUILT_FAMILIES
        # hue ranges of the two scene families do not overlap
        hue0, width = (0.12, 0.45) if natural else (0.62, 0.45)
        sub = t[t["natural_or_human_made"] == top]
        clusters = sorted(sub["hierarchical_label"].unique())
        # largest clusters first so a cap keeps the richest ones; ties by name
        sizes = sub.groupby("hierarchical_label").size()
        clusters.sort(key=lambda c: (-int(sizes[c]), c))
        if params.max_clusters is not None:
            clusters = clusters[: params.max_clusters]
        clusters.sort()
        n = len(clusters)
        for j, cluster in enumerate(clusters):
            family = families[j % len(families)]
            cluster_hue = (hue0 + width * (j + 0.5) / n) % 1.0
            # the cluster's colour tendency (materials): saturation, value, secondary hue
            rc = _rng(params.seed, "cluster", top, cluster)
            c_sat, c_val, c_sec = rc.uniform(0.55, 0.85), rc.uniform(0.55, 0.85), rc.uniform()
            c_geom = rc.uniform(0.0, 1.0, size=8)  # the cluster's proportions; landmarks vary around them
            lids = sub.loc[sub["hierarchical_label"] == cluster, "landmark_id"].astype("int64").tolist()
            if params.landmarks_per_cluster is not None and len(lids) > params.landmarks_per_cluster:
                order = _rng(params.seed, "pick", top, cluster).permutation(len(lids))
                lids = sorted(lids[i] for i in order[: params.landmarks_per_cluster])
            for lid in lids:
                r = _rng(params.seed, "landmark", lid)
                hue = (cluster_hue + r.uniform(-0.3, 0.3) * width / n) % 1.0
                sec = colorsys.hsv_to_rgb(
                    (c_sec + r.uniform(-0.08, 0.08)) % 1.0, r.uniform(0.3, 0.8), r.uniform(0.4, 1.0)
                )
                specs.append(
                    LandmarkSpec(
                        landmark_id=int(lid),
                        cluster=str(cluster),
                        top=str(top),
                        natural=natural,
                        family=family,
                        cluster_hue=float(cluster_hue),
                        hue=float(hue),
                        sat=float(np.clip(c_sat + r.uniform(-0.12, 0.12), 0.2, 1.0)),
                        val=float(np.clip(c_val + r.uniform(-0.12, 0.12), 0.2, 1.0)),
                        secondary=tuple(int(255 * c) for c in sec),
                        geometry=tuple(float(x) for x in np.clip(c_geom + r.uniform(-0.3, 0.3, 8), 0, 0.999)),
                    )
                )
    return specs


# ----------------------------------------------------------------------------------------------
# drawing: structures are polygons in unit coordinates (x right, y down, ground line at y = 0.55)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[tuple[float, float]]:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


Part = tuple[list[tuple[float, float]], str]  # polygon points, paint


def _peaks(g: tuple[float, ...], base: float) -> list[Part]:
    parts: list[Part] = []
    n = 1 + int(g[0] * 3)
    xs = np.linspace(-0.6, 0.6, n) if n > 1 else np.array([0.0])
    for k, x in enumerate(xs):
        h = 0.55 + 0.45 * ((g[1] + 0.37 * k) % 1.0)
        w = 0.35 + 0.3 * g[2]
        top = base - h
        parts.append(([(x - w, base), (x, top), (x + w, base)], "main"))
        cap = 0.25 + 0.2 * g[3]
        parts.append(([(x - w * cap, top + h * cap), (x, top), (x + w * cap, top + h * cap)], "light"))
    return parts


def _water(g: tuple[float, ...], base: float) -> list[Part]:
    parts: list[Part] = []
    rx, ry = 0.55 + 0.35 * g[0], 0.12 + 0.12 * g[1]
    parts.append((_ellipse(0.0, base + 0.12, rx + 0.08, ry + 0.05), "second"))
    parts.append((_ellipse(0.0, base + 0.12, rx, ry), "main"))
    for k in range(1 + int(g[2] * 3)):
        x = -rx * 0.6 + k * 0.35
        parts.append((_rect(x, base + 0.1, x + 0.15 + 0.1 * g[3], base + 0.12), "light"))
    return parts


def _cascade(g: tuple[float, ...], base: float) -> list[Part]:
    parts: list[Part] = []
    w = 0.25 + 0.35 * g[0]
    h = 0.55 + 0.35 * g[1]
    parts.append((_rect(-w - 0.25, base - h, w + 0.25, base), "second"))
    n = 2 + int(g[2] * 4)
    for k in range(n):
        x0 = -w + 2 * w * k / n
        parts.append((_rect(x0, base - h + 0.05, x0 + 2 * w / n * 0.6, base + 0.08), "main"))
    parts.append((_ellipse(0.0, base + 0.1, w + 0.2, 0.07), "light"))
    return parts


def _trees(g: tuple[float, ...], base: float) -> list[Part]:
    parts: list[Part] = []
    n = 2 + int(g[0] * 4)
    for k in range(n):
        x = -0.7 + 1.4 * (k + 0.5) / n + 0.1 * (g[(k + 1) % 8] - 0.5)
        h = 0.35 + 0.4 * g[(k + 2) % 8]
        r = 0.14 + 0.12 * g[(k + 3) % 8]
        parts.append((_rect(x - 0.04, base - h + r, x + 0.04, base), "second"))
        parts.append((_ellipse(x, base - h, r, r * (0.9 + 0.6 * g[4])), "main"))
    return parts


def _block(
    g: tuple[float, ...], base: float, width: tuple[float, float], height: tuple[float, float]
) -> tuple[float, float, list[Part]]:
    """A block standing on the ground line, centred: half-width ``width[0] + width[1] * g[0]``,
    height ``height[0] + height[1] * g[1]``; returns (half-width, height, [the block])."""
    w = width[0] + width[1] * g[0]
    h = height[0] + height[1] * g[1]
    return w, h, [(_rect(-w, base - h, w, base), "main")]


def _tower(g: tuple[float, ...], base: float) -> list[Part]:
    w, h, parts = _block(g, base, (0.12, 0.16), (0.75, 0.45))
    if g[2] > 0.5:
        parts.append(
            ([(-w * 1.2, base - h), (0.0, base - h - 0.25 - 0.2 * g[3]), (w * 1.2, base - h)], "second")
        )
    else:
        parts.append((_rect(-w * 1.3, base - h - 0.08, w * 1.3, base - h), "second"))
    rows = 2 + int(g[4] * 4)
    for k in range(rows):
        y = base - h + (k + 0.6) * h / (rows + 0.5)
        parts.append((_rect(-w * 0.4, y, w * 0.4, y + 0.05), "dark"))
    return parts


def _arches(g: tuple[float, ...], base: float) -> list[Part]:
    parts: list[Part] = []
    n = 1 + int(g[0] * 4)
    span = 1.7
    deck = base - 0.35 - 0.25 * g[1]
    parts.append((_rect(-span / 2, deck - 0.07, span / 2, deck + 0.04), "main"))
    for k in range(n + 1):
        x = -span / 2 + span * k / n
        parts.append((_rect(x - 0.05, deck, x + 0.05, base), "main"))
    for k in range(n):
        x = -span / 2 + span * (k + 0.5) / n
        parts.append((_ellipse(x, deck + 0.02, span / n / 2 - 0.05, 0.06 + 0.08 * g[2], 20), "second"))
    if g[3] > 0.5:
        parts.append((_rect(-0.04, deck - 0.45, 0.04, deck - 0.07), "second"))
    return parts


def _gable(g: tuple[float, ...], base: float) -> list[Part]:
    w, h, parts = _block(g, base, (0.3, 0.3), (0.35, 0.25))
    roof = 0.2 + 0.25 * g[2]
    parts.append(([(-w - 0.06, base - h), (0.0, base - h - roof), (w + 0.06, base - h)], "second"))
    parts.append((_rect(-0.07, base - 0.22, 0.07, base), "dark"))
    if g[3] > 0.4:
        tx = w * (0.6 if g[4] > 0.5 else -0.6)
        parts.append((_rect(tx - 0.08, base - h - roof - 0.25, tx + 0.08, base - h), "main"))
        parts.append(
            (
                [
                    (tx - 0.1, base - h - roof - 0.25),
                    (tx, base - h - roof - 0.45),
                    (tx + 0.1, base - h - roof - 0.25),
                ],
                "second",
            )
        )
    return parts


def _crenels(g: tuple[float, ...], base: float) -> list[Part]:
    w, h, parts = _block(g, base, (0.45, 0.3), (0.3, 0.25))
    n = 3 + int(g[2] * 5)
    for k in range(n):
        x = -w + 2 * w * k / n
        parts.append((_rect(x, base - h - 0.08, x + w / n, base - h), "main"))
    th = h + 0.2 + 0.25 * g[3]
    for x in (-w, w):
        parts.append((_rect(x - 0.12, base - th, x + 0.12, base), "second"))
    parts.append((_ellipse(0.0, base - 0.08, 0.08, 0.12, 16), "dark"))
    return parts


#: the shape family of each structure (its name -> its polygons)
SHAPES = {
    "peaks": _peaks,
    "water": _water,
    "cascade": _cascade,
    "trees": _trees,
    "tower": _tower,
    "arches": _arches,
    "gable": _gable,
    "crenels": _crenels,
}


def _structure(spec: LandmarkSpec) -> list[Part]:
    """The landmark's polygons as (points, paint) with paint 'main', 'second', 'dark' or 'light'."""
    return SHAPES[spec.family](spec.geometry, 0.55)


def _scene(draw: ImageDraw.ImageDraw, spec: LandmarkSpec, r: np.random.Generator, s: int) -> None:
    """Background of the scene family, drawn on an ``s`` x ``s`` canvas."""
    horizon = int(s * (0.55 + r.uniform(-0.08, 0.08)))
    if spec.natural:
        sky_top = np.array([70, 130, 220]) + r.integers(-25, 25, 3)
        sky_bot = np.array([190, 220, 245]) + r.integers(-20, 10, 3)
        ground = np.array([70, 140, 60]) + r.integers(-30, 30, 3)
    else:
        sky_top = np.array([150, 160, 175]) + r.integers(-25, 25, 3)
        sky_bot = np.array([205, 205, 210]) + r.integers(-20, 20, 3)
        ground = np.array([120, 118, 115]) + r.integers(-25, 25, 3)
    for y in range(horizon):
        c = sky_top + (sky_bot - sky_top) * (y / max(horizon - 1, 1))
        draw.line([(0, y), (s, y)], fill=tuple(int(v) for v in np.clip(c, 0, 255)))
    if spec.natural:
        amp, freq, phase = r.uniform(2, 6) * s / 64, r.uniform(1, 3), r.uniform(0, 2 * math.pi)
        pts = [(x, horizon + amp * math.sin(freq * 2 * math.pi * x / s + phase)) for x in range(0, s + 1, 4)]
        draw.polygon(pts + [(s, s), (0, s)], fill=tuple(int(v) for v in np.clip(ground, 0, 255)))
        for _ in range(int(r.integers(3, 8))):  # organic blobs (bushes, rocks)
            cx, cy, rad = r.uniform(0, s), r.uniform(horizon, s), r.uniform(2, 6) * s / 64
            c = np.clip(ground + r.integers(-45, 45, 3), 0, 255)
            draw.ellipse([cx - rad, cy - rad * 0.7, cx + rad, cy + rad * 0.7], fill=tuple(int(v) for v in c))
    else:
        draw.rectangle([0, horizon, s, s], fill=tuple(int(v) for v in np.clip(ground, 0, 255)))
        step = int(r.integers(6, 12)) * s // 64
        line = tuple(int(v) for v in np.clip(ground - 35, 0, 255))
        for y in range(horizon, s, step):
            draw.line([(0, y), (s, y)], fill=line, width=max(1, s // 64))
        for _ in range(int(r.integers(3, 7))):  # skyline silhouettes
            x0 = r.uniform(-0.1, 1.0) * s
            w, h = r.uniform(0.06, 0.18) * s, r.uniform(0.08, 0.3) * s
            c = np.clip(sky_bot - r.integers(40, 90), 0, 255)
            draw.rectangle([x0, horizon - h, x0 + w, horizon], fill=tuple(int(v) for v in c))


def render_image(spec: LandmarkSpec, view: int, seed: int = 0, size: int = 64) -> Image.Image:
    """Render view ``view`` of the landmark ``spec`` as an RGB ``size`` x ``size`` image."""
    r = _rng(seed, "view", spec.landmark_id, view)
    s = 2 * size  # draw at twice the size, then downsample (antialiasing)
    img = Image.new("RGB", (s, s))
    draw = ImageDraw.Draw(img)
    _scene(draw, spec, r, s)

    main = np.array(colorsys.hsv_to_rgb(spec.hue, spec.sat, spec.val)) * 255
    paints = {
        "main": main,
        "second": np.array(spec.secondary, dtype=float),
        "dark": main * 0.35,
        "light": np.minimum(main * 0.4 + 160, 255),
    }
    # view: scale, rotation, position; lighting acts on the structure and on the whole image
    scale = r.uniform(0.75, 1.15) * s * 0.36
    angle = math.radians(r.uniform(-10, 10))
    cx, cy = s / 2 + r.uniform(-0.12, 0.12) * s, s * 0.5 + r.uniform(-0.06, 0.08) * s
    ca, sa = math.cos(angle), math.sin(angle)
    shade = r.uniform(0.8, 1.15)
    for pts, paint in _structure(spec):
        xy = [(cx + scale * (x * ca - y * sa), cy + scale * (x * sa + y * ca)) for x, y in pts]
        c = np.clip(paints[paint] * shade, 0, 255)
        draw.polygon(xy, fill=tuple(int(v) for v in c))

    for _ in range(int(r.integers(0, 5))):  # clutter: small foreground objects
        x, y, rad = r.uniform(0, s), r.uniform(0.5 * s, s), r.uniform(0.02, 0.06) * s
        c = tuple(int(v) for v in r.integers(0, 256, 3))
        if r.uniform() < 0.5:
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=c)
        else:
            draw.rectangle([x - rad, y - 2 * rad, x + rad, y], fill=c)
    if r.uniform() < 0.3:  # occlusion: a block covering 5-20% of the image
        w, h = r.uniform(0.2, 0.45) * s, r.uniform(0.2, 0.45) * s
        x, y = r.uniform(0, s - w), r.uniform(0, s - h)
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in r.integers(0, 256, 3)))

    img = img.resize((size, size), Image.Resampling.BOX)
    a = np.asarray(img, dtype=np.float32)
    gain = r.uniform(0.7, 1.3) * (1 + r.uniform(-0.08, 0.08, 3))  # brightness and colour cast
    contrast = r.uniform(0.8, 1.2)
    a = (a - a.mean()) * contrast + a.mean()
    a = a * gain + r.normal(0, r.uniform(2, 7), a.shape)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# export


def _level_ids(values: Sequence[str]) -> dict[str, int]:
    return {name: k for k, name in enumerate(sorted(set(values)))}


#: the split schema's types (:data:`hglv2.schema.QUERY_SCHEMA`); the synthetic files declare every
#: column nullable (optional Parquet columns)
_SCHEMA = pa.schema([f.with_nullable(True) for f in QUERY_SCHEMA])


def _split_table(rows: list[dict[str, Any]], query: bool) -> pa.Table:
    names = QUERY_SCHEMA.names if query else SPLIT_COLUMNS
    return pa.table(
        {name: pa.array([row[name] for row in rows], type=_SCHEMA.field(name).type) for name in names}
    )


def generate(
    out_dir: str | os.PathLike[str],
    hierarchy: str | os.PathLike[str] | pd.DataFrame | None = None,
    params: SyntheticParams | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the embedded dataset to the folder ``out_dir`` as one commit; return its manifest.

    The folder is written beside ``out_dir`` and swapped into place whole, under a lock
    (:func:`hglv2.fileio.folder_transaction`); ``out_dir`` must be new, empty or earlier synthetic
    data (an export or any other folder is an error, never overwritten).

    Layout: ``train.parquet``, ``query.parquet``, ``index.parquet`` (columns
    :data:`~hglv2.schema.SPLIT_COLUMNS`; ``query`` adds ``usage`` and ``recognition_landmark_id``,
    -1: the query landmarks are not training landmarks), ``images/a/b/c/<id>.jpg``,
    ``manifest.json`` and ``README.md``, written by :func:`hglv2.splits.write_split_folder`. Levels:
    ``level0`` = landmark id, ``level1`` / ``level2`` = dense ids of the cluster / top-level names
    in sorted order over the selected landmarks. The landmarks of each cluster are shuffled (seeded)
    and the first ``round(train_fraction * n)`` (at least 1, and at most n - 1 when n >= 2) go to
    ``train``; the others give ``query_images`` query and ``index_images`` index images each.
    """
    params = params or SyntheticParams()
    _check_params(params)
    with folder_transaction(out_dir, "synthetic") as staging:
        table, source = load_table(hierarchy)
        return _write(Path(staging), landmark_specs(table, params), source, params, progress)


def _check_params(params: SyntheticParams) -> None:
    if params.image_size < 16:
        raise InputError(f"synthetic: image_size {params.image_size} is too small (minimum 16)")
    if min(params.train_images, params.query_images, params.index_images) < 1:
        raise InputError("synthetic: train_images, query_images and index_images must be >= 1")
    if not 0.0 < params.train_fraction < 1.0:
        raise InputError(f"synthetic: train_fraction {params.train_fraction} must be in (0, 1)")


def _train_landmarks(specs: list[LandmarkSpec], params: SyntheticParams) -> set[int]:
    """The training landmarks: per cluster, the first ``round(train_fraction * n)`` of a seeded
    shuffle (at least 1, at most n - 1 when n >= 2)."""
    by_cluster: dict[str, list[LandmarkSpec]] = {}
    for spec in specs:
        by_cluster.setdefault(spec.cluster, []).append(spec)
    train_ids: set[int] = set()
    for cluster, members in sorted(by_cluster.items()):
        n = len(members)
        k = max(1, round(params.train_fraction * n))
        if n >= 2:
            k = min(k, n - 1)
        order = _rng(params.seed, "split", cluster).permutation(n)
        train_ids.update(members[i].landmark_id for i in order[:k])
    return train_ids


Job = tuple[LandmarkSpec, int, str]  # landmark, view, image path


def _split_rows(
    specs: list[LandmarkSpec], params: SyntheticParams
) -> tuple[dict[str, list[dict[str, Any]]], list[Job]]:
    """The rows of each split (sorted by landmark, then id) and the images to render."""
    level1 = _level_ids([s.cluster for s in specs])
    level2 = _level_ids([s.top for s in specs])
    train_ids = _train_landmarks(specs, params)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "query": [], "index": []}
    jobs: list[Job] = []
    for spec in specs:
        if spec.landmark_id in train_ids:
            views = [("train", v) for v in range(params.train_images)]
        else:
            views = [("query", v) for v in range(params.query_images)]
            views += [("index", params.query_images + v) for v in range(params.index_images)]
        for split, v in views:
            iid = image_id(params.seed, spec.landmark_id, v)
            row = {
                "id": iid,
                "landmark_id": spec.landmark_id,
                "path": image_relpath(iid),
                "category": None,
                "supercategory": spec.cluster,
                "hierarchical_label": spec.cluster,
                "natural_or_human_made": spec.top,
                "level0": spec.landmark_id,
                "level1": level1[spec.cluster],
                "level2": level2[spec.top],
                "hierarchy_complete": True,
            }
            if split == "query":
                row["usage"] = "Public" if v % 2 == 0 else "Private"
                row["recognition_landmark_id"] = -1
            splits[split].append(row)
            jobs.append((spec, v, row["path"]))
    for rows in splits.values():
        rows.sort(key=lambda row: (row["landmark_id"], row["id"]))
    return splits, jobs


def _render_images(
    image_root: Path, jobs: list[Job], params: SyntheticParams, progress: bool
) -> dict[str, Any]:
    """Render and write every image; returns the manifest's ``images`` (count and a sha256 over
    the sorted paths and the hashes of their files)."""
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synthetic images", unit="img", disable=None)  # None: off without a TTY
    for spec, v, rel in iterator:
        buf = io.BytesIO()
        render_image(spec, v, params.seed, params.image_size).save(buf, "JPEG", quality=params.jpeg_quality)
        with atomic_path(image_root / rel) as tmp:
            tmp.write_bytes(buf.getvalue())
    h = hashlib.sha256()
    for _, _, rel in sorted(jobs, key=lambda j: j[2]):
        h.update(rel.encode())
        h.update(sha256_file(image_root / rel).encode())
    return {"count": len(jobs), "sha256": h.hexdigest()}


def _write(
    out: Path, specs: list[LandmarkSpec], source: str, params: SyntheticParams, progress: bool
) -> dict[str, Any]:
    """Write the images, then the split folder (:func:`generate`) into ``out``; returns the manifest."""
    splits, jobs = _split_rows(specs, params)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "generator": "hglv2.synthetic",
        "params": asdict(params),
        "hierarchy": {"source": source},
        "levels": list(LEVEL_COLUMNS),
        "level_names": {
            LEVEL_COLUMNS[1]: sorted({s.cluster for s in specs}),
            LEVEL_COLUMNS[2]: sorted({s.top for s in specs}),
        },
        "image_root": "images",
        "splits": {},
        "images": _render_images(out / "images", jobs, params, progress),
    }
    tables = {name: _split_table(rows, query=name == "query") for name, rows in splits.items()}
    fmt = SplitFormat(row_group_size=100_000, brief=True, encode_ids=True)
    return write_split_folder(out, tables, manifest, _card, fmt)


def _card(manifest: dict[str, Any]) -> Card:
    """A short dataset card: what was generated, where the images are, how to load the splits."""
    rows = ", ".join(f"{name} {info['rows']} rows" for name, info in manifest["splits"].items())
    return Card(
        [
            "# The embedded hierarchical landmarks\n",
            f"Generated by `hglv2 synthesize` (`hglv2.synthetic`, seed {manifest['params']['seed']}): "
            f"{rows}; {manifest['images']['count']} JPEG images under `images/` (column `path`). "
            "Columns as the H-GLDv2 export (`hglv2.schema`); training and evaluation landmarks "
            "are disjoint. Parameters, hierarchy and sha256 in `manifest.json`.\n",
            "## Loading\n",
            "```python",
            *loading_lines(manifest["splits"]),
            "```",
            "",
        ]
    )
