"""The GLDv2 release layout end to end: two overlapping landmark numberings, queries labelled from
their ground-truth index images, one validating reader for every GLDv2 file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.metrics import evaluate
from hglv2.splits import export
from tests.fixtures.gldv2_example import write_example

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
LEVELS = ("landmark_id", "level0", "level1", "level2", "hierarchical_label", "natural_or_human_made")


def _csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _err(res):
    return res.stderr.strip().splitlines()


def _check_queries_match_their_ground_truth(meta: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each query row has the labels of its ground-truth index images at every level, and
    evaluate() on query vs index finds all its positives (a perfect ranking scores AP 1)."""
    query = pq.read_table(out / "query.parquet").to_pandas().set_index("id")
    index = pq.read_table(out / "index.parquet").to_pandas().set_index("id")
    sol = _csv(meta / "retrieval_solution_v2.1.csv")
    sol = sol[sol["images"] != "None"]
    assert len(query) == len(sol) > 0
    for r in sol.itertuples():
        gt = index.loc[r.images.split()]
        for col in LEVELS:
            want = query.loc[r.id, col]
            got = gt[col].tolist()
            assert gt[col].isna().all() if pd.isna(want) else got == [want] * len(gt), (r.id, col)
    # evaluate: embeddings that rank each query's landmark first; its positives are its GT images
    lids = sorted(set(index["landmark_id"]) | set(query["landmark_id"]))
    onehot = {lid: k for k, lid in enumerate(lids)}
    emb = np.eye(len(lids), dtype=np.float32)
    q_lab = query[["level0", "level1", "level2"]].to_numpy()
    g_lab = index[["level0", "level1", "level2"]].to_numpy()
    res = evaluate(
        emb[[onehot[x] for x in query["landmark_id"]]],
        q_lab,
        emb[[onehot[x] for x in index["landmark_id"]]],
        g_lab,
        recall_at=(1,),
        reduce=False,
    )
    n_gt = [len(sol.set_index("id").loc[q, "images"].split()) for q in query.index]
    assert np.asarray(res["n_positives_level0"]).tolist() == n_gt
    assert np.all(np.asarray(res["AP_level0"]) == 1.0) and np.all(np.asarray(res["R@1_level0"]) == 1.0)
    return query, index


def test_overlapping_numberings_export_with_right_labels(tmp_path, cli_runner):
    meta = tmp_path / "meta"
    write_example(meta, n_landmarks=30, n_index_landmarks=20, seed=11)
    train_h = _csv(meta / "train_label_to_hierarchical.csv").set_index("landmark_id")
    index_h = _csv(meta / "index_label_to_hierarchical.csv").set_index("landmark_id")
    both = train_h.index.intersection(index_h.index)
    assert len(both) >= 5  # the two numberings overlap...
    clash = [x for x in both if train_h.loc[x, "hierarchical_label"] and index_h.loc[x, "hierarchical_label"]]
    assert any(train_h.loc[x, "hierarchical_label"] != index_h.loc[x, "hierarchical_label"] for x in clash)
    out = tmp_path / "out"
    res = cli_runner.invoke(main, ["export", "--metadata", str(meta), "--out", str(out)])
    assert res.exit_code == 0, res.output
    query, index = _check_queries_match_their_ground_truth(meta, out)
    train = pq.read_table(out / "train_full.parquet").to_pandas()
    # each split takes its own numbering: landmark 3 is a train place and another index place
    x = int(clash[0]) if clash else 3
    assert set(train.loc[train["landmark_id"] == x, "category"]) == {train_h.loc[str(x), "category"]}
    assert set(index.loc[index["landmark_id"] == x, "category"]) == {index_h.loc[str(x), "category"]}
    # one vocabulary: a name has the same integer in every split
    pairs = pd.concat(
        [t[["hierarchical_label", "level1"]] for t in (train, index, query)], ignore_index=True
    ).dropna()
    assert pairs.groupby("hierarchical_label")["level1"].nunique().max() == 1
    names = sorted((set(train_h["hierarchical_label"]) | set(index_h["hierarchical_label"])) - {""})
    assert {n: i for i, n in enumerate(names)} == dict(pairs.drop_duplicates().to_numpy())
    # the recognition solution stays, in the train numbering
    rec = _csv(meta / "recognition_solution_v2.1.csv").set_index("id")
    for qid, got in query["recognition_landmark_id"].items():
        want = rec.loc[qid, "landmarks"].split()
        assert got == (int(want[0]) if want else -1)
        assert got == -1 or str(got) in train_h.index
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_numbering"] == {
        "train": "train",
        "train_full": "train",
        "index": "index",
        "query": "index",
    }
    assert manifest["query_ground_truth"]["queries_mixed_landmarks"] == 0
    assert "train_label_to_category.csv" in manifest["inputs"]
    assert "index_label_to_category.csv" in manifest["inputs"]


def test_disjoint_twin_gives_the_same_labels(tmp_path):
    """The layout that hid the bug (disjoint id ranges) still works, and labels queries the same way."""
    meta = tmp_path / "meta"
    write_example(meta, seed=11, overlap=False)
    export(meta, tmp_path / "out")
    _check_queries_match_their_ground_truth(meta, tmp_path / "out")


def test_the_embedded_sample_is_the_release_layout(tmp_path):
    for name in (
        "index.csv",
        "index_image_to_landmark.csv",
        "index_label_to_category.csv",
        "index_label_to_hierarchical.csv",
        "test.csv",
        "retrieval_solution_v2.1.csv",
        "recognition_solution_v2.1.csv",
    ):
        assert (SAMPLE / name).is_file(), name
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 1_000_000
    train_ids = set(_csv(SAMPLE / "train_label_to_category.csv")["landmark_id"])
    index_cat = _csv(SAMPLE / "index_label_to_category.csv").set_index("landmark_id")
    assert len(train_ids & set(index_cat.index)) >= 10
    sol = _csv(SAMPLE / "retrieval_solution_v2.1.csv")
    assert set(sol.loc[sol["images"] == "None", "Usage"]) == {"Ignored"}
    m = export(SAMPLE, tmp_path / "out")
    assert m["splits"]["query"]["rows"] == (sol["images"] != "None").sum()
    _check_queries_match_their_ground_truth(SAMPLE, tmp_path / "out")


def _copy(meta: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(meta, dst)
    return dst


def test_mixed_ground_truth_is_an_error_or_the_authors_rule(tmp_path):
    meta = tmp_path / "meta"
    write_example(meta, seed=12)
    sol = _csv(meta / "retrieval_solution_v2.1.csv")
    i2l = _csv(meta / "index_image_to_landmark.csv")
    row = int(np.flatnonzero(sol["images"] != "None")[0])
    first = sol.loc[row, "images"].split()[0]
    other = i2l.loc[i2l["landmark_id"] != i2l.set_index("id").loc[first, "landmark_id"], "id"].iloc[0]
    sol.loc[row, "images"] = f"{sol.loc[row, 'images']} {other}"
    sol.to_csv(meta / "retrieval_solution_v2.1.csv", index=False)
    with pytest.raises(InputError, match=rf"retrieval_solution_v2.1.csv:{row + 2}: the ground-truth images"):
        export(meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    m = export(meta, tmp_path / "out", mixed_ground_truth="first")
    assert m["query_ground_truth"]["queries_mixed_landmarks"] == 1
    q = pq.read_table(tmp_path / "out" / "query.parquet").to_pandas().set_index("id")
    assert q.loc[sol.loc[row, "id"], "landmark_id"] == int(i2l.set_index("id").loc[first, "landmark_id"])


def test_ground_truth_images_must_be_in_the_index(tmp_path):
    meta = tmp_path / "meta"
    write_example(meta, seed=13)
    sol = _csv(meta / "retrieval_solution_v2.1.csv")
    row = int(np.flatnonzero(sol["images"] != "None")[0])
    sol.loc[row, "images"] += " 00000000000000ab"
    sol.to_csv(meta / "retrieval_solution_v2.1.csv", index=False)
    with pytest.raises(InputError, match=rf":{row + 2}: index image 00000000000000ab is not in index.csv"):
        export(meta, tmp_path / "out")


def test_drop_incomplete_gives_the_authors_evaluation_set(tmp_path, cli_runner):
    meta = tmp_path / "meta"
    write_example(meta, seed=14, complete_fraction=0.5)
    # a landmark with a cluster but no natural_or_human_made: the authors' remove_nan keeps it
    hier = _csv(meta / "index_label_to_hierarchical.csv")
    i2l = _csv(meta / "index_image_to_landmark.csv")
    with_cluster = hier["hierarchical_label"].notna() & hier["landmark_id"].isin(i2l["landmark_id"])
    half = int(hier.index[with_cluster][0])
    hier.loc[half, "natural_or_human_made"] = None
    hier.to_csv(meta / "index_label_to_hierarchical.csv", index=False)
    keep = export(meta, tmp_path / "keep")
    res = cli_runner.invoke(
        main, ["export", "--metadata", str(meta), "--out", str(tmp_path / "drop"), "--drop-incomplete"]
    )
    assert res.exit_code == 0, res.output
    drop = json.loads((tmp_path / "drop" / "manifest.json").read_text())
    assert drop["drop_incomplete"] and not keep["drop_incomplete"]
    for s in ("index", "query"):
        t = pq.read_table(tmp_path / "drop" / f"{s}.parquet").to_pandas()
        k = pq.read_table(tmp_path / "keep" / f"{s}.parquet").to_pandas()
        assert ((t["level0"] >= 0) & (t["level1"] >= 0)).all() and len(t) > 0
        unknown = int(((k["level0"] < 0) | (k["level1"] < 0)).sum())
        assert drop["dropped_incomplete"][s] == unknown > 0
        assert drop["splits"][s]["rows"] == len(k) - unknown
    t = pq.read_table(tmp_path / "drop" / "index.parquet").to_pandas()
    kept = t[t["landmark_id"] == int(hier.loc[half, "landmark_id"])]
    assert len(kept) > 0 and (kept["level2"] == -1).all() and not kept["hierarchy_complete"].any()
    assert drop["splits"]["train"]["rows"] == keep["splits"]["train"]["rows"]  # train is kept whole
    assert "whose landmark or cluster is unknown" in res.stdout


@pytest.mark.parametrize(
    "name, line, expected",
    [
        ("train_label_to_hierarchical.csv", "5", "expected 5 fields, got 1"),
        ("index_label_to_hierarchical.csv", "5,a,b,c,d,e", "expected 5 fields, got 6"),
        ("index_label_to_category.csv", "7", "expected 2 fields, got 1"),
        ("train_label_to_category.csv", "7,a,b", "expected 2 fields, got 3"),
        ("index_image_to_landmark.csv", "00000000000000ab", "expected 2 fields, got 1"),
        ("retrieval_solution_v2.1.csv", "00000000000000ab,None", "expected 3 fields, got 2"),
    ],
)
def test_a_short_or_long_row_is_one_error_line_in_export(tmp_path, cli_runner, name, line, expected):
    meta = tmp_path / "meta"
    write_example(meta, seed=15)
    n = len((meta / name).read_text().splitlines())
    with open(meta / name, "a") as fh:
        fh.write(line + "\n")
    res = cli_runner.invoke(main, ["export", "--metadata", str(meta), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert _err(res) == [f"Error: {name}:{n + 1}: {expected}"]


def test_the_hierarchy_stages_read_through_the_gldv2_reader(tmp_path, cli_runner):
    meta = tmp_path / "meta"
    shutil.copytree(SAMPLE, meta)
    with open(meta / "train_label_to_hierarchical.csv", "a") as fh:
        fh.write("99\n")
    n = len((meta / "train_label_to_hierarchical.csv").read_text().splitlines())
    res = cli_runner.invoke(
        main,
        [
            "hierarchy",
            "diff",
            str(SAMPLE / "train_label_to_hierarchical.csv"),
            str(meta / "train_label_to_hierarchical.csv"),
        ],
    )
    assert res.exit_code == 2 and _err(res) == [
        f"Error: train_label_to_hierarchical.csv:{n}: expected 5 fields, got 1"
    ]
    with open(meta / "index_label_to_category.csv", "a") as fh:
        fh.write("12,http://commons.wikimedia.org/wiki/Category:X,extra\n")
    n = len((meta / "index_label_to_category.csv").read_text().splitlines())
    res = cli_runner.invoke(
        main,
        [
            "hierarchy",
            "resolve",
            "--categories",
            str(meta / "index_label_to_category.csv"),
            "--out",
            str(tmp_path / "r.parquet"),
            "--cache",
            str(SAMPLE / "wikidata_cache.jsonl"),
            "--offline",
        ],
    )
    assert res.exit_code == 2 and _err(res) == [
        f"Error: index_label_to_category.csv:{n}: expected 2 fields, got 3"
    ]
    from hglv2.hierarchy.clusters import image_counts

    with open(meta / "train.csv", "a") as fh:
        fh.write("00000000000000ab,http://x\n")
    n = len((meta / "train.csv").read_text().splitlines())
    with pytest.raises(InputError, match=rf"^train.csv:{n}: expected 3 fields, got 2$"):
        image_counts([meta / "train.csv"])
    counts = image_counts([SAMPLE / "train.csv", SAMPLE / "index_image_to_landmark.csv"])
    i2l = _csv(SAMPLE / "index_image_to_landmark.csv")
    lid = int(i2l["landmark_id"].iloc[0])
    assert counts[("index", lid)] == int((i2l["landmark_id"] == str(lid)).sum())
