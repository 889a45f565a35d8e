"""hglv2.splits.export: contents against an independent pandas oracle, flags, determinism, readers."""

from __future__ import annotations

import functools
import json
import os
import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hglv2.errors import InputError
from hglv2.gldv2.export import HierarchyIndex, image_paths
from hglv2.schema import SPLIT_COLUMNS, image_relpath
from hglv2.splits import export, manifest_image_root
from tests.fixtures.gldv2_example import write_example


def _csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _oracle(meta):
    """The expected splits, computed directly from the CSV files with pandas: each split joined to
    the hierarchy of its own numbering, queries labelled by their ground-truth index images."""
    hiers = {n: _csv(meta / f"{n}_label_to_hierarchical.csv") for n in ("train", "index")}
    both = pd.concat(hiers.values())
    l1 = {n: k for k, n in enumerate(sorted(set(both["hierarchical_label"]) - {""}))}
    l2 = {n: k for k, n in enumerate(sorted(set(both["natural_or_human_made"]) - {""}))}
    hmaps = {
        n: h.assign(landmark_id=h["landmark_id"].astype(int)).set_index("landmark_id")
        for n, h in hiers.items()
    }

    def rows(pairs, numbering):
        hmap = hmaps[numbering]
        out = []
        for i, lid in pairs:
            h = hmap.loc[lid] if lid in hmap.index else None
            lev1 = -1 if h is None else l1.get(h["hierarchical_label"], -1)
            lev2 = -1 if h is None else l2.get(h["natural_or_human_made"], -1)
            out.append(
                {
                    "id": i,
                    "landmark_id": lid,
                    "path": image_relpath(i),
                    "category": None if h is None else h["category"],
                    "hierarchical_label": None if h is None else (h["hierarchical_label"] or None),
                    "level0": lid,
                    "level1": lev1,
                    "level2": lev2,
                    "hierarchy_complete": lid >= 0 and lev1 >= 0 and lev2 >= 0,
                }
            )
        return out

    train = _csv(meta / "train.csv")
    clean = _csv(meta / "train_clean.csv")
    exploded = [(i, int(r.landmark_id)) for r in clean.itertuples() for i in r.images.split()]
    i2l = dict(
        zip(
            _csv(meta / "index_image_to_landmark.csv")["id"],
            _csv(meta / "index_image_to_landmark.csv")["landmark_id"].astype(int),
            strict=True,
        )
    )
    sol = _csv(meta / "retrieval_solution_v2.1.csv")
    rec = _csv(meta / "recognition_solution_v2.1.csv").set_index("id")
    queries = [(r.id, i2l[r.images.split()[0]]) for r in sol.itertuples() if r.images != "None"]
    return {
        "train": rows(exploded, "train"),
        "train_full": rows([(r.id, int(r.landmark_id)) for r in train.itertuples()], "train"),
        "index": rows([(i, i2l.get(i, -1)) for i in _csv(meta / "index.csv")["id"]], "index"),
        "query": rows(queries, "index"),
        "query_usage": [r.Usage for r in sol.itertuples() if r.images != "None"],
        "query_recognition": [
            int(rec.loc[r.id, "landmarks"].split()[0]) if rec.loc[r.id, "landmarks"] else -1
            for r in sol.itertuples()
            if r.images != "None"
        ],
    }


@pytest.mark.parametrize("overlap", [True, False])
def test_export_matches_oracle(tmp_path, overlap):
    meta = tmp_path / "meta"
    write_example(meta, n_landmarks=40, n_index_landmarks=15, seed=3, overlap=overlap)
    # an index image without a landmark row, and a train landmark missing from the hierarchy
    with open(meta / "index.csv", "a") as fh:
        fh.write("00000000000000ff\n")
    hier = (meta / "train_label_to_hierarchical.csv").read_text().splitlines()
    (meta / "train_label_to_hierarchical.csv").write_text("\n".join(hier[:1] + hier[2:]) + "\n")
    dropped_lid = int(hier[1].split(",")[0])

    manifest = export(meta, tmp_path / "out")
    expected = _oracle(meta)
    for split in ("train", "train_full", "index", "query"):
        t = pq.read_table(tmp_path / "out" / f"{split}.parquet")
        assert tuple(t.column_names[:11]) == SPLIT_COLUMNS
        got = t.to_pylist()
        keys = [
            "id",
            "landmark_id",
            "path",
            "category",
            "hierarchical_label",
            "level0",
            "level1",
            "level2",
            "hierarchy_complete",
        ]
        assert [{k: r[k] for k in keys} for r in got] == expected[split], split
        info = manifest["splits"][split]
        assert info["rows"] == len(got)
        for lev in ("level0", "level1", "level2"):
            assert info["coverage"][lev] == pytest.approx(np.mean([r[lev] >= 0 for r in got]), abs=1e-6)
    q = pq.read_table(tmp_path / "out" / "query.parquet")
    assert q["usage"].to_pylist() == expected["query_usage"]
    assert q["recognition_landmark_id"].to_pylist() == expected["query_recognition"]
    idx = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    assert idx[-1]["id"] == "00000000000000ff" and idx[-1]["landmark_id"] == -1
    assert not idx[-1]["hierarchy_complete"]
    train_full = pq.read_table(tmp_path / "out" / "train_full.parquet").to_pylist()
    flagged = [r for r in train_full if r["landmark_id"] == dropped_lid]
    assert flagged and all(
        not r["hierarchy_complete"] and r["level1"] == -1 and r["category"] is None for r in flagged
    )
    assert manifest["splits"]["index"]["rows_without_landmark"] == 1
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest
    assert [s["file"] for s in manifest["hierarchy"]["sources"]] == [
        "train_label_to_hierarchical.csv",
        "index_label_to_hierarchical.csv",
    ]


def test_export_is_byte_identical(tmp_path):
    meta = tmp_path / "meta"
    write_example(meta, seed=5)
    for out in ("a", "b"):
        export(meta, tmp_path / out, command=["hglv2", "export"], row_group_size=7)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [
        ".hglv2-owner.json",  # the owner marker of hglv2.fileio.folder_transaction
        "README.md",
        "index.parquet",
        "manifest.json",
        "query.parquet",
        "train.parquet",
        "train_full.parquet",
    ]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    pf = pq.ParquetFile(tmp_path / "a" / "train_full.parquet")
    assert pf.metadata.num_row_groups == -(-pf.metadata.num_rows // 7)
    assert pf.schema_arrow.metadata is None  # no pandas/timestamp metadata


def test_our_hierarchy_table_and_conflicts(tmp_path):
    meta = tmp_path / "meta"
    write_example(meta, seed=1)
    train = pd.read_csv(meta / "train.csv")
    lids = sorted(train["landmark_id"].unique())
    ours = pd.DataFrame(
        {
            "landmark_id": lids,
            "category": [f"c{x}" for x in lids],
            "qid": "Q1",
            "supercategory": "s",
            "supercategory_qid": "",
            "hierarchical_label": ["Zürich ß" if x % 2 else "église" for x in lids],
            "natural_or_human_made": "human-made",
            "provenance": "rule",
            "revision": "1",
        }
    )
    ours.to_csv(tmp_path / "ours.csv", index=False)
    m = export(meta, tmp_path / "out", hierarchy=[tmp_path / "ours.csv"], splits=["train_full"])
    t = pq.read_table(tmp_path / "out" / "train_full.parquet").to_pandas()
    assert t["hierarchy_complete"].all() and m["splits"]["train_full"]["coverage"]["level1"] == 1.0
    # sorted-name dense ids: "Zürich ß" < "église" in code-point order
    assert set(t.loc[t["landmark_id"] % 2 == 1, "level1"]) == {0}
    assert set(t.loc[t["landmark_id"] % 2 == 0, "level1"]) == {1}
    assert m["hierarchy"]["provenance"] == ["rule"]
    # a second table disagreeing on one landmark is refused
    other = ours.iloc[:1].copy()
    other["hierarchical_label"] = "castle"
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(
        InputError, match=rf"landmark_id {lids[0]} \(train numbering\) has different hierarchy"
    ):
        export(meta, tmp_path / "out2", hierarchy=[tmp_path / "ours.csv", tmp_path / "other.csv"])
    assert not (tmp_path / "out2").exists()
    # the same row twice is fine
    export(
        meta,
        tmp_path / "out3",
        hierarchy=[tmp_path / "ours.csv", tmp_path / "ours.csv"],
        splits=["train_full"],
    )


def _append_line(path, line):
    text = path.read_text()
    path.write_text(text + line + "\n")


@pytest.mark.parametrize(
    "case", ["clean_not_in_train", "clean_landmark_differs", "index_unknown", "query_unknown"]
)
def test_cross_file_inconsistencies_write_nothing(tmp_path, case):
    meta = tmp_path / "meta"
    write_example(meta, seed=2)
    if case == "clean_not_in_train":
        _append_line(meta / "train_clean.csv", "999999,00000000000000ab")
        match = "train_clean.csv:.*: image 00000000000000ab is not in train.csv"
    elif case == "clean_landmark_differs":
        train = pd.read_csv(meta / "train.csv", dtype=str)
        _append_line(meta / "train_clean.csv", f"999999,{train['id'][0]}")
        match = f"image {train['id'][0]} has landmark 999999 here but"
    elif case == "index_unknown":
        _append_line(meta / "index_image_to_landmark.csv", "00000000000000cd,100000")
        match = "index_image_to_landmark.csv:.*00000000000000cd is not in index.csv"
    else:
        _append_line(meta / "retrieval_solution_v2.1.csv", "00000000000000ef,None,Public")
        match = "retrieval_solution_v2.1.csv:.*00000000000000ef is not in test.csv"
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match):
        export(meta, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="no GLDv2 files"):
        export(tmp_path, tmp_path / "out")
    write_example(tmp_path / "m")
    (tmp_path / "m" / "train_clean.csv").unlink()
    with pytest.raises(InputError, match="split train needs train_clean.csv"):
        export(tmp_path / "m", tmp_path / "out", splits=["train"])
    m = export(tmp_path / "m", tmp_path / "out")  # default: the splits that can be built
    assert sorted(m["splits"]) == ["index", "query", "train_full"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "split: train_full" in card and "split: train\n" not in card


def test_hugging_face_datasets_and_duckdb_read_the_export(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    duckdb = pytest.importorskip("duckdb")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_example(tmp_path / "m", seed=4)
    m = export(tmp_path / "m", tmp_path / "out")
    cache = str(tmp_path / "hf")
    d = datasets.load_dataset(str(tmp_path / "out"), cache_dir=cache)
    assert sorted(d) == ["index", "train", "train_full"]
    assert d["train"].num_rows == m["splits"]["train"]["rows"]
    assert list(d["train"].features) == list(SPLIT_COLUMNS)
    q = datasets.load_dataset(str(tmp_path / "out"), "query", cache_dir=cache)
    assert q["query"].num_rows == m["splits"]["query"]["rows"] and "usage" in q["query"].features
    index_file = tmp_path / "out" / "index.parquet"
    n = duckdb.sql(f"SELECT count(*) FROM '{index_file}' WHERE level1 >= 0").fetchall()[0][0]
    assert n == round(m["splits"]["index"]["coverage"]["level1"] * m["splits"]["index"]["rows"])


def _run_card_loading_code(folder, datasets, cache):
    """Run the Hugging Face lines of the card's Loading code in ``folder``; return the names they set."""
    card = (folder / "README.md").read_text()
    code = card.split("## Loading", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    lines = [ln for ln in code.splitlines() if not ln.startswith("import ")]
    assert any("load_dataset(" in ln for ln in lines)
    hf = types.SimpleNamespace(load_dataset=functools.partial(datasets.load_dataset, cache_dir=cache))
    ns = {"datasets": hf, "os": os}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for ln in lines:
            exec(ln, ns)  # the card's own documented call, verbatim
    finally:
        os.chdir(cwd)
    return ns


@pytest.mark.parametrize("kind", ["export", "export_without_query", "synthetic"])
def test_dataset_card_loads_every_split_as_documented(tmp_path, monkeypatch, kind):
    """Each split loads with the call the card gives for it, with exactly its rows:
    ``load_dataset(folder, "query")`` works on every folder with a query split, and the generic
    Parquet builder is shown with ``data_files`` (its ``data_dir=`` merges train and train_full)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    if kind == "synthetic":
        from hglv2.synthetic import SyntheticParams, generate

        params = SyntheticParams(image_size=16, train_images=2, query_images=1, index_images=1)
        m = generate(out, params=params)
    else:
        write_example(tmp_path / "m", seed=5)
        splits = ["train", "train_full"] if kind == "export_without_query" else None
        m = export(tmp_path / "m", out, splits=splits)
    ns = _run_card_loading_code(out, datasets, str(tmp_path / "hf"))
    rows = {name: info["rows"] for name, info in m["splits"].items()}
    for name, n in rows.items():
        assert ns[name].num_rows == n, name
    again = [k for k in ns if k.endswith("_again")]
    assert len(again) == 1 and ns[again[0]].num_rows == rows[again[0].removesuffix("_again")]
    plain = sorted(s for s in rows if s != "query")
    assert sorted(ns["splits"]) == plain
    assert all(ns["splits"][s].num_rows == rows[s] for s in plain)
    if "query" in rows:
        assert "usage" in ns["query"].features
        q = datasets.load_dataset(str(out), "query", cache_dir=str(tmp_path / "hf"))
        assert q["query"].num_rows == rows["query"]


@given(st.lists(st.text(alphabet="0123456789abcdefé/", min_size=3, max_size=18), max_size=30), st.booleans())
def test_image_paths_match_schema_relpath(ids, fixed):
    if fixed:
        ids = [(i * 16)[:16].replace("é", "e").replace("/", "0") for i in ids]
    got = image_paths(pa.array(ids, pa.string())).to_pylist()
    assert got == [image_relpath(i) for i in ids]
    if len(ids) > 2:  # chunked input, with an offset
        arr = pa.chunked_array([pa.array(["zzzzzzzzzzzzzzzz"] + ids[:2]).slice(1), pa.array(ids[2:])])
        assert image_paths(arr).to_pylist() == [image_relpath(i) for i in ids]


@given(
    st.lists(st.integers(0, 60), unique=True, max_size=40),
    st.lists(st.integers(-2, 70), max_size=60),
    st.sampled_from([1, 10**15]),
)
def test_hierarchy_positions_match_dict_lookup(table_ids, query_ids, scale):
    """Both join paths (dense lookup table, and searchsorted for huge ids) against a dict."""
    table_ids = sorted(x * scale for x in table_ids)
    query = np.array([q * scale if q >= 0 else q for q in query_ids], dtype=np.int64)
    df = pd.DataFrame({"landmark_id": np.array(table_ids, dtype=np.int64)})
    for c in ("category", "supercategory", "hierarchical_label", "natural_or_human_made"):
        df[c] = pd.Series([f"{c}{x % 3}" for x in table_ids], dtype="string")
    index = HierarchyIndex(df)
    pos, found = index._positions(query)
    where = {v: k for k, v in enumerate(table_ids)}
    assert found.tolist() == [int(q) in where for q in query]
    expected = [where[int(q)] for q in query if int(q) in where]
    assert [int(p) for p, f in zip(pos, found, strict=True) if f] == expected


def test_manifest_image_root_one_reader(tmp_path):
    """The synthetic data records ``images`` (inside the folder); an export records no image folder
    (GLDv2 images are not included), so the reader asks for one."""
    from hglv2.synthetic import SyntheticParams, generate

    params = SyntheticParams(image_size=16, train_images=1, query_images=1, index_images=1, max_clusters=1)
    generate(tmp_path / "syn", "builtin", params)
    assert manifest_image_root(tmp_path / "syn") == tmp_path / "syn" / "images"
    meta = write_example(tmp_path / "meta")
    export(meta, tmp_path / "exp")
    with pytest.raises(InputError, match="names no image folder; give --image-root"):
        manifest_image_root(tmp_path / "exp")
    with pytest.raises(InputError, match="names no image folder; give data.image_root"):
        manifest_image_root(tmp_path / "exp", option="data.image_root")
