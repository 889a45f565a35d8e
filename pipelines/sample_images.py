"""Images for the embedded sample's metadata (data/sample has ids and labels but no pixels).

Draws every image listed in ``train.csv``, ``index_image_to_landmark.csv`` and the retrieval
queries with :func:`hglv2.synthetic.render_image`, so the vote stage of ``make hierarchy`` has
input. A landmark looks like its cluster in the published hierarchy of its numbering
(``*_label_to_hierarchical.csv``); a landmark absent there gets a cluster picked from the
published vocabulary by a hash of (numbering, id): the hidden truth a good image model would find.
An index landmark linked to a train landmark by the queries is drawn as that train landmark (the
same place under its two ids), and a query image is a view of its ground-truth landmark.

Writes ``OUT/{train,index,test}/images_NNN.tar`` (members ``a/b/c/<id>.jpg``, fixed tar metadata,
deterministic bytes) and ``OUT/truth.csv`` (numbering, landmark_id, cluster, top, source).

    python -m pipelines.sample_images --metadata data/sample --out out/hierarchy/sample_images
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from pathlib import Path

import pandas as pd

from hglv2.fileio import atomic_open, atomic_path
from hglv2.gldv2 import specs
from hglv2.gldv2.readers import metadata_files, read_file
from hglv2.hierarchy.consistency import LINK_FILES, query_links
from hglv2.schema import HIERARCHY_COLUMNS, image_relpath
from hglv2.synthetic import SyntheticParams, landmark_specs, render_image

SHARD_SIZE = 1000


def _pick(numbering: str, lid: int, options: list[tuple[str, str]]) -> tuple[str, str]:
    h = int.from_bytes(hashlib.sha256(f"{numbering}:{lid}".encode()).digest()[:8], "little")
    return options[h % len(options)]


def truth_table(files: dict[str, Path]) -> pd.DataFrame:
    """(numbering, landmark_id) -> cluster, top for every landmark with images."""
    published, lists = [], []
    for numbering, pub, images, kind in (
        ("train", specs.hierarchy_file("train"), specs.TRAIN, "train"),
        ("index", specs.hierarchy_file("index"), specs.INDEX_IMAGE_TO_LANDMARK, "image_to_landmark"),
    ):
        if pub in files:
            t = (
                read_file(files[pub])
                .to_pandas()
                .dropna(subset=["hierarchical_label", "natural_or_human_made"])
            )
            published.append(t.assign(numbering=numbering))
        if images in files:
            lids = sorted(set(read_file(files[images], kind)["landmark_id"].to_pylist()))
            lists.append(pd.DataFrame({"numbering": numbering, "landmark_id": lids}))
    pub = pd.concat(published, ignore_index=True)
    options = sorted(set(zip(pub["hierarchical_label"], pub["natural_or_human_made"], strict=True)))
    known = {
        (n, int(lid)): (c, t)
        for n, lid, c, t in zip(
            pub["numbering"],
            pub["landmark_id"],
            pub["hierarchical_label"],
            pub["natural_or_human_made"],
            strict=True,
        )
    }
    rows = []
    for r in pd.concat(lists, ignore_index=True).itertuples(index=False):
        key = (r.numbering, int(r.landmark_id))
        cluster, top = known.get(key) or _pick(*key, options)
        rows.append((*key, cluster, top, "published" if key in known else "hidden"))
    return pd.DataFrame(rows, columns=["numbering", "landmark_id", "cluster", "top", "source"])


def _specs(truth: pd.DataFrame, seed: int) -> dict[tuple[str, int], object]:
    out = {}
    for k, numbering in enumerate(("train", "index")):
        part = truth[truth["numbering"] == numbering]
        table = pd.DataFrame({c: pd.Series([None] * len(part), dtype="string") for c in HIERARCHY_COLUMNS})
        table["landmark_id"] = part["landmark_id"].to_numpy()
        table["hierarchical_label"] = part["cluster"].to_numpy()
        table["natural_or_human_made"] = part["top"].to_numpy()
        for s in landmark_specs(table, SyntheticParams(seed=seed + k)):
            out[(numbering, s.landmark_id)] = s
    return out


def _write_tar(path: Path, items: list[tuple[str, bytes]]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for image_id, data in items:
            info = tarfile.TarInfo(image_relpath(image_id))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))


def render_sample(metadata: Path, out: Path, size: int = 64, seed: int = 0) -> dict[str, int]:
    """Write the shards and ``truth.csv``; returns the image count per folder."""
    files = metadata_files(metadata)
    truth = truth_table(files)
    drawn = _specs(truth, seed)
    lists = {"train": read_file(files[specs.TRAIN]).to_pandas()[["id", "landmark_id"]]}
    lists["index"] = read_file(files[specs.INDEX_IMAGE_TO_LANDMARK]).to_pandas()
    if all(n in files for n in LINK_FILES):
        links = query_links(files)
        pairs = links[(links["train_landmark_id"] >= 0) & (links["index_landmark_id"] >= 0)]
        for t, i in zip(pairs["train_landmark_id"], pairs["index_landmark_id"], strict=True):
            if ("train", int(t)) in drawn:  # the same place: draw it the same way
                drawn[("index", int(i))] = drawn[("train", int(t))]
        q = links[links["index_landmark_id"] >= 0]
        lists["test"] = pd.DataFrame({"id": q["id"], "landmark_id": q["index_landmark_id"]})
    counts = {}
    for folder, df in lists.items():
        numbering = "train" if folder == "train" else "index"
        items, views = [], {}
        for image_id, lid in sorted(zip(df["id"], df["landmark_id"].astype(int), strict=True)):
            spec = drawn.get((numbering, lid))
            if spec is None:
                continue
            view = views[lid] = views.get(lid, -1) + 1
            buf = io.BytesIO()
            render_image(spec, view + (1000 if folder == "test" else 0), seed, size).save(
                buf, "JPEG", quality=90
            )
            items.append((image_id, buf.getvalue()))
        for k in range(0, len(items), SHARD_SIZE):
            _write_tar(out / folder / f"images_{k // SHARD_SIZE:03d}.tar", items[k : k + SHARD_SIZE])
        counts[folder] = len(items)
    with atomic_open(out / "truth.csv") as fh:
        truth.to_csv(fh, index=False, lineterminator="\n")
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metadata", type=Path, default=Path("data/sample"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    counts = render_sample(args.metadata, args.out, args.size)
    print("sample images: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {args.out}")


if __name__ == "__main__":
    main()
