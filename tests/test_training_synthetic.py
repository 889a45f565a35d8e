"""The embedded hierarchical landmarks: layout, determinism, recoverable hierarchy."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hglv2.errors import InputError
from hglv2.schema import QUERY_SCHEMA, SPLIT_COLUMNS, image_relpath
from hglv2.synthetic import SyntheticParams, builtin_hierarchy, generate, image_id, landmark_specs

SMALL = SyntheticParams(
    seed=3,
    image_size=32,
    train_images=3,
    query_images=1,
    index_images=2,
    max_clusters=2,
    landmarks_per_cluster=4,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_matches_the_export(tmp_path):
    manifest = generate(tmp_path, "builtin", SMALL)
    splits = {name: pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("train", "query", "index")}
    for name, df in splits.items():
        expected = QUERY_SCHEMA.names if name == "query" else list(SPLIT_COLUMNS)
        assert list(df.columns) == expected  # the export's columns, query's included
        assert manifest["splits"][name]["rows"] == len(df)
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in df["id"])
        assert all(p == image_relpath(i) for p, i in zip(df["path"], df["id"], strict=True))
        assert (df["level0"] == df["landmark_id"]).all() and df["hierarchy_complete"].all()
        if name == "query":  # synthetic query landmarks are never training landmarks
            assert (df["recognition_landmark_id"] == -1).all()
        for rel in df["path"]:
            with Image.open(tmp_path / "images" / rel) as img:
                assert img.size == (32, 32) and img.mode == "RGB"
    train_lm = set(splits["train"]["landmark_id"])
    eval_lm = set(splits["query"]["landmark_id"])
    assert eval_lm == set(splits["index"]["landmark_id"])
    assert train_lm and eval_lm and not train_lm & eval_lm  # disjoint, as in H-GLDv2
    # 2 top levels x 2 clusters x 4 landmarks; each cluster split 2 / 2
    assert len(train_lm) == 8 and len(eval_lm) == 8
    assert len(splits["train"]) == 8 * 3 and len(splits["query"]) == 8 and len(splits["index"]) == 16
    allrows = pd.concat(splits.values())
    # integer levels are dense ids of the sorted names, consistent across splits
    for name_col, level_col in (("hierarchical_label", "level1"), ("natural_or_human_made", "level2")):
        names = sorted(allrows[name_col].unique())
        assert (allrows[level_col] == allrows[name_col].map({n: k for k, n in enumerate(names)})).all()
    assert len(set(allrows["id"])) == len(allrows)
    assert manifest["images"]["count"] == len(allrows)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert pq.read_metadata(tmp_path / "train.parquet").metadata is None  # no pandas metadata


def test_deterministic_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, "builtin", SMALL)
    generate(b, "builtin", SMALL)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) > 10
    assert all(fa[k] == fb[k] for k in fa)
    generate(a, "builtin", SMALL)  # regenerating in place changes nothing
    assert _files(a) == fa
    c = tmp_path / "c"
    generate(c, "builtin", SyntheticParams(**{**SMALL.__dict__, "seed": 4}))
    assert _files(c)["train.parquet"] != fa["train.parquet"]


def test_image_ids():
    assert image_id(0, 5, 1) == image_id(0, 5, 1)
    assert len({image_id(0, lid, v) for lid in range(50) for v in range(20)}) == 1000


def _chroma_hist(path, bins=8):
    """A fixed feature: histogram of (r, g) chromaticity (brightness-invariant), Hellinger-embedded."""
    a = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(float) + 1
    c = a / a.sum(1, keepdims=True)
    i = np.minimum((c[:, :2] * bins / 0.75).astype(int), bins - 1)
    h = np.bincount(i[:, 0] * bins + i[:, 1], minlength=bins * bins).astype(float)
    return np.sqrt(h / h.sum())


def test_hierarchy_is_recoverable_with_colour_histograms(tmp_path):
    params = SyntheticParams(
        seed=0, image_size=48, train_images=6, query_images=1, index_images=1, landmarks_per_cluster=4
    )
    generate(tmp_path, "builtin", params)
    df = pd.read_parquet(tmp_path / "train.parquet")
    x = np.stack([_chroma_hist(tmp_path / "images" / p) for p in df["path"]])
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    lab = df[["level0", "level1", "level2"]].to_numpy()
    shared = (lab[:, None, :] == lab[None, :, :]).sum(-1)  # number of equal levels (0..3)
    off = ~np.eye(len(df), dtype=bool)
    means = [d[off & (shared == k)].mean() for k in (3, 2, 1, 0)]
    # same landmark < same cluster < same top level < different top level
    assert means[0] < means[1] < means[2] < means[3], means
    # 1-NN under the fixed feature finds the landmark well above chance (5 / 95 here)
    nn = np.where(off, d, np.inf).argmin(1)
    assert (lab[nn, 0] == lab[:, 0]).mean() > 0.15
    assert (lab[nn, 1] == lab[:, 1]).mean() > 0.3
    assert (lab[nn, 2] == lab[:, 2]).mean() > 0.9


def test_published_hierarchy_csv(tmp_path):
    csv = tmp_path / "h.csv"
    rows = ["landmark_id,category,supercategory,hierarchical_label,natural_or_human_made"]
    for k in range(12):
        cluster = ["bridge", "church", "lake"][k % 3]
        top = "natural" if cluster == "lake" else "human-made"
        rows.append(f"{100 + k},http://commons.wikimedia.org/wiki/Category:X{k},{cluster},{cluster},{top}")
    rows.append("999,,,,")  # incomplete hierarchy: not drawn
    csv.write_text("\n".join(rows) + "\n")
    manifest = generate(tmp_path / "out", csv, SMALL)
    assert manifest["hierarchy"]["source"].startswith("h.csv sha256:")
    df = pd.concat(pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "query", "index"))
    assert set(df["landmark_id"]) == set(range(100, 112))
    assert set(df["hierarchical_label"]) == {"bridge", "church", "lake"}


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("landmark_id,category\n1,x\n")
    with pytest.raises(InputError, match="missing column"):
        generate(tmp_path / "o", bad, SMALL)
    with pytest.raises(InputError, match="no such file"):
        generate(tmp_path / "o", tmp_path / "nope.csv", SMALL)
    with pytest.raises(InputError, match="train_fraction"):
        generate(tmp_path / "o", "builtin", SyntheticParams(train_fraction=1.0))
    empty = builtin_hierarchy(2).assign(hierarchical_label=pd.NA)
    with pytest.raises(InputError, match="no landmark"):
        landmark_specs(empty, SMALL)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_cli_synthesize(tmp_path, cli_runner):
    from hglv2.cli import main

    out = tmp_path / "syn"
    res = cli_runner.invoke(
        main,
        [
            "synthesize",
            "--out",
            str(out),
            "--hierarchy",
            "builtin",
            "--image-size",
            "32",
            "--train-images",
            "2",
            "--landmarks-per-cluster",
            "2",
            "--quiet",
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "train: 16 images of 8 landmarks" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["splits"]["train"]["rows"] == 16
    res = cli_runner.invoke(main, ["synthesize", "--out", str(out), "--hierarchy", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and res.output.startswith("Error: ") or "Error: " in res.output
