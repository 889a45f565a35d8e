"""hglv2 convert: tiny folders in each dataset's official format (awkward cases included)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hglv2.cli import main
from hglv2.convert import convert
from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError
from tests.fixtures.datasets import SOP_TRAIN, make_cub, make_dyml, make_inat, make_sop, write_image


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------------------- SOP


def test_sop_converts_and_loads(tmp_path):
    root = make_sop(tmp_path / "Stanford_Online_Products", images=True)
    out = tmp_path / "out"
    res = _run("convert", "sop", "--root", str(root), "--out", str(out))
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["level_names"] == ["class", "super_class"]
    assert manifest["splits"]["train"]["rows"] == 4 and manifest["splits"]["test"]["rows"] == 3
    assert manifest["command"][:2] == ["hglv2", "convert"]
    t = pq.read_table(out / "train.parquet").to_pydict()
    assert t["id"] == ["1", "2", "5", "9"]
    assert t["level0"] == [1, 1, 7, 7] and t["level1"] == [1, 1, 3, 3]
    assert t["level1_name"] == ["bicycle", "bicycle", "chair", "chair"]
    assert t["path"][2] == "chair_final/ünïcode_0.JPG"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "Stanford Online Products" in card
    ds = HGLDv2Dataset(out / "train.parquet", root)  # default levels: every levelK column
    assert ds.labels.tolist() == [[1, 1], [1, 1], [7, 3], [7, 3]]
    assert ds[2]["labels"].tolist() == [7, 3]
    # deterministic: a rerun gives the same bytes
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    convert("sop", root, out, command=manifest["command"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (["image_id class_id path", "1 1 a/b.JPG"], "Ebay_train.txt:1: expected the header"),
        (
            [SOP_TRAIN[0], "1 1 1 a/b.JPG", "2 x 1 a/c.JPG"],
            "Ebay_train.txt:3: class_id 'x' is not an integer",
        ),
        ([SOP_TRAIN[0], "1 1 1 a/b.JPG", "2 1 1"], "Ebay_train.txt:3: expected 4 space-separated fields"),
        ([SOP_TRAIN[0], "1 1 1 ../etc/passwd"], "Ebay_train.txt:2: unsafe image path"),
        ([SOP_TRAIN[0], "1 1 1 /abs/x.JPG"], "Ebay_train.txt:2: unsafe image path"),
        ([SOP_TRAIN[0], "1 1 1 a/b.JPG", "1 2 1 a/c.JPG"], "Ebay_train.txt:3: image id '1' is listed twice"),
        ([SOP_TRAIN[0], "1 0 1 a/b.JPG"], "Ebay_train.txt:2: class_id 0 must be >= 1"),
        (
            [SOP_TRAIN[0], "1 1 1 a/b.JPG", "2 1 2 a/c.JPG"],
            "Ebay_train.txt:3: class_id 1 has super_class_id 2",
        ),
    ],
)
def test_sop_malformed(tmp_path, train, message):
    root = make_sop(tmp_path / "sop", train=train)
    out = tmp_path / "out"
    res = _run("convert", "sop", "--root", str(root), "--out", str(out))
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [res.output.strip()]
    assert res.output.startswith("Error: " + message), res.output
    assert not out.exists()  # nothing written


def test_sop_missing_file(tmp_path):
    root = tmp_path / "sop"
    root.mkdir()
    res = _run("convert", "sop", "--root", str(root), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "Ebay_train.txt: no such file" in res.output


# ------------------------------------------------------------------------------------------- CUB


def test_cub_dml_and_classification(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    m = convert("cub", root, tmp_path / "dml")
    assert m["splits"]["train"]["rows"] == 2 and m["splits"]["test"]["rows"] == 3
    t = pq.read_table(tmp_path / "dml" / "train.parquet").to_pydict()
    # the authors' trees: class 1 -> family 35, order 12; class 2 the same
    assert t["level0"] == [1, 2] and t["level1"] == [35, 35] and t["level2"] == [12, 12]
    assert t["path"][0] == "images/001.Black_footed_Albatross/a_1.jpg"
    assert t["level0_name"][0] == "001.Black_footed_Albatross"
    test = pq.read_table(tmp_path / "dml" / "test.parquet").to_pydict()
    assert test["level0"] == [101, 200, 200] and test["level2"] == [9, 8, 8]  # pelican group 9, passerines 8
    m = convert("cub", root, tmp_path / "cls", protocol="classification")
    assert m["splits"]["train"]["rows"] == 3 and m["protocol"] == "classification"


def test_cub_hierarchy_counts_match_the_authors_config():
    from hglv2.convert.cub import cub_hierarchy

    tree = cub_hierarchy()
    train = tree.loc[1:100]
    assert len(tree) == 200 and train["family"].nunique() == 30 and train["order"].nunique() == 13


def test_cub_errors(tmp_path):
    root = make_cub(tmp_path / "c1", extra_label="99 5\n")
    with pytest.raises(InputError, match=r"image_class_labels.txt:6: image 99 is not in images.txt"):
        convert("cub", root, tmp_path / "o")
    root = make_cub(tmp_path / "c2", extra_label="3 4\n")
    with pytest.raises(InputError, match=r"image_class_labels.txt:6: id 3 is listed twice"):
        convert("cub", root, tmp_path / "o")
    root = make_cub(tmp_path / "c3")
    (root / "images.txt").write_text("3 ../../x.jpg\n")
    with pytest.raises(InputError, match=r"images.txt:1: unsafe image path"):
        convert("cub", root, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------- iNaturalist


def test_inat_retrieval_full_and_base(tmp_path):
    root = make_inat(tmp_path / "inat", split_files=True)
    m = convert("inat2018", root, tmp_path / "full")
    assert m["protocol"] == "retrieval" and len(m["levels"]) == 7
    assert m["level_names"] == ["species", "genus", "family", "order", "class", "phylum", "kingdom"]
    t = pq.read_table(tmp_path / "full" / "test.parquet").to_pydict()
    assert t["id"] == ["40", "3"]
    # species dense over category ids 0,5,7,9; genus names G1,G2,G3 -> 0,1,2 (G1 shared by 0 and 9)
    assert t["level0"] == [2, 3] and t["level1"] == [2, 0]
    assert t["level2"] == [1, 2] and t["level6"] == [1, 1]
    train = pq.read_table(tmp_path / "full" / "train.parquet").to_pydict()
    assert train["level0"] == [0, 1, 0] and train["level1_name"] == ["G1", "G2", "G1"]
    m = convert("inat-base", root, tmp_path / "base")
    assert m["level_names"] == ["species", "supercategory"]
    b = pq.read_table(tmp_path / "base" / "test.parquet").to_pydict()
    assert b["level1_name"] == ["Insecta", "Insecta"] and b["level1"] == [0, 0]


def test_inat_official(tmp_path):
    root = make_inat(tmp_path / "inat", split_files=False)
    m = convert("inat2018", root, tmp_path / "o")
    assert m["protocol"] == "official" and set(m["splits"]) == {"train", "val"}
    v = pq.read_table(tmp_path / "o" / "val.parquet").to_pydict()
    assert v["id"] == ["3", "77"] and v["level0"] == [3, 0]


def test_inat_errors(tmp_path):
    root = make_inat(tmp_path / "i1", split_files=True)
    (root / "Inat_dataset_splits" / "Inaturalist_test_set1.txt").write_text("train_val2018/Insecta/8/x.jpg\n")
    with pytest.raises(InputError, match=r"Inaturalist_test_set1.txt:1: category 8 is not in train2018.json"):
        convert("inat2018", root, tmp_path / "o")
    root = make_inat(tmp_path / "i2", split_files=False)
    (root / "val2018.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(InputError, match=r"val2018.json:2: not valid JSON"):
        convert("inat2018", root, tmp_path / "o")
    root = make_inat(tmp_path / "i3", split_files=False)
    data = json.loads((root / "train2018.json").read_text())
    del data["categories"][1]["genus"]
    (root / "train2018.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"categories\[1\] \(id 5\): missing taxonomy field 'genus'"):
        convert("inat2018", root, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- DyML


@pytest.mark.parametrize("glued", [True, False])
def test_dyml_vehicle(tmp_path, glued):
    root = make_dyml(tmp_path / "dyml_vehicle", "vehicle", glued)
    m = convert("dyml-vehicle", root, tmp_path / "o")
    assert set(m["splits"]) == {"train"} | {
        f"{s}_{g}" for s in ("query", "gallery") for g in ("fine", "middle", "coarse")
    }
    assert bool(m["header_repaired"]) == glued
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    assert t["path"] == ["train/imgs/0.jpg", "train/imgs/1.jpg", "train/imgs/2.jpg"]  # first row kept
    assert (t["level0"], t["level1"], t["level2"]) == ([30, 31, 32], [4, 4, 5], [1, 1, 2])
    q = pq.read_table(tmp_path / "o" / "query_middle.parquet")
    assert q.column_names[:3] == ["id", "path", "level0"] and "level1" not in q.column_names
    assert q["path"].to_pylist() == ["bmk_middle/query/0.jpg", "bmk_middle/query/1.jpg"]
    assert m["splits"]["query_middle"]["levels"] == ["level0"]


def test_dyml_product_and_errors(tmp_path):
    root = make_dyml(tmp_path / "dyml_product", "product")
    m = convert("dyml-product", root, tmp_path / "o")
    assert set(m["splits"]) == {"train", "test"}
    assert pq.read_table(tmp_path / "o" / "test.parquet")["level0"].to_pylist() == [90, 90]
    (root / "train/label.csv").write_text("fname, coarse_id, middle_id, fine_id\n0.jpg, 1, 4\n")
    with pytest.raises(InputError, match=r"label.csv:2: expected 4 comma-separated fields"):
        convert("dyml-product", root, tmp_path / "o2")
    (root / "train/label.csv").write_text("name, a, b\n0.jpg, 1, 4\n")
    with pytest.raises(InputError, match=r"label.csv:1: expected a header"):
        convert("dyml-product", root, tmp_path / "o2")
    (root / "train/label.csv").write_text("fname, coarse_id, middle_id, fine_id\n0.jpg, 1, 4, -3\n")
    with pytest.raises(InputError, match=r"label.csv:2: fine_id -3 must be >= 0"):
        convert("dyml-product", root, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_convert_levels_load_through_one_dataset(tmp_path):
    root = make_inat(tmp_path / "inat", split_files=True)
    for p in [
        "train_val2018/Plantae/0/a.jpg",
        "train_val2018/Plantae/5/b.jpg",
        "train_val2018/Plantae/0/e.jpg",
    ]:
        write_image(root / p)
    convert("inat2018", root, tmp_path / "o")
    ds = HGLDv2Dataset(tmp_path / "o" / "train.parquet", root)
    assert ds.labels.shape == (3, 7) and np.all(ds.labels >= 0)
    assert ds[1]["labels"].shape == (7,)


def test_dyml_variant_from_the_folder_name(tmp_path):
    root = make_dyml(tmp_path / "dyml_animal", "animal")
    res = _run("convert", "dyml", "--root", str(root), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["dataset"]["name"] == "dyml-animal"
    other = make_dyml(tmp_path / "somewhere", "vehicle")
    res = _run("convert", "dyml", "--root", str(other), "--out", str(tmp_path / "o2"))
    assert res.exit_code == 2 and "cannot tell the DyML variant" in res.output


def test_check_images(tmp_path):
    root = make_sop(tmp_path / "sop", images=True)
    (root / "chair_final" / "3_0.JPG").unlink()
    assert _run("convert", "sop", "--root", str(root), "--out", str(tmp_path / "a")).exit_code == 0
    res = _run("convert", "sop", "--root", str(root), "--out", str(tmp_path / "b"), "--check-images")
    assert res.exit_code == 2 and "3_0.JPG: image 8 of split test not found" in res.output
    assert not (tmp_path / "b").exists()


def test_output_folder_is_one_commit_and_owned(tmp_path):
    root = make_sop(tmp_path / "sop")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = _run("convert", "sop", "--root", str(root), "--out", str(foreign))
    assert res.exit_code == 2 and "refusing to overwrite it" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "out"
    convert("sop", root, out)
    convert("sop", root, out)  # an earlier conversion is replaced whole
    assert (out / "manifest.json").is_file() and not list(tmp_path.glob(".out.staging-*"))


def test_manifest_image_root_is_relative_so_the_output_is_relocatable(tmp_path, monkeypatch):
    manifests = []
    for where in ("a", "b/deeper"):  # the same layout under two different absolute places
        base = tmp_path / where
        make_sop(base / "sop", images=True)
        monkeypatch.chdir(base)
        res = _run("convert", "sop", "--root", "sop", "--out", "data/sop")
        assert res.exit_code == 0, res.output
        manifests.append((base / "data/sop/manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    m = json.loads(manifests[0])
    assert m["image_root"] == "../../sop"
    assert m["command"] == ["hglv2", "convert", "sop", "--root", "sop", "--out", "data/sop"]
    # the training loader and hglv2 evaluate resolve it against the converted folder
    from hglv2.splits import manifest_image_root

    assert manifest_image_root(tmp_path / "a/data/sop").resolve() == (tmp_path / "a/sop").resolve()
