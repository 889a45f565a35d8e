"""hglv2 convert: tiny folders in each dataset's official format (awkward cases included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from hglv2.cli import main
from hglv2.convert import convert
from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError


def _img(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------------------- SOP

SOP_TRAIN = [
    "image_id class_id super_class_id path",
    "1 1 1 bicycle_final/111085122871_0.JPG",
    "2 1 1 bicycle_final/111085122871_1.JPG",
    "5 7 3 chair_final/ünïcode_0.JPG",  # ids not contiguous, a unicode path
    "9 7 3 chair_final/ünïcode_1.JPG",
]
SOP_TEST = [
    "image_id class_id super_class_id path",
    "3 11319 1 bicycle_final/2_0.JPG",
    "4 11319 1 bicycle_final/2_1.JPG",
    "8 11400 3 chair_final/3_0.JPG",
]


def make_sop(root: Path, train=SOP_TRAIN, test=SOP_TEST, images: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Ebay_train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "Ebay_test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    if images:
        for line in train[1:] + test[1:]:
            _img(root / line.split(" ")[3])
    return root


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


def make_cub(root: Path, extra_label: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # ids not contiguous; classes 1 and 2 (train under DML), 101 and 200 (test)
    images = {
        3: "001.Black_footed_Albatross/a_1.jpg",
        10: "002.Laysan_Albatross/b_2.jpg",
        11: "101.White_Pelican/c_3.jpg",
        40: "200.Common_Yellowthroat/d_4.jpg",
        41: "200.Common_Yellowthroat/e_5.jpg",
    }
    cls = {3: 1, 10: 2, 11: 101, 40: 200, 41: 200}
    is_train = {3: 1, 10: 0, 11: 1, 40: 0, 41: 1}
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in images.items()))
    lines = "".join(f"{i} {c}\n" for i, c in cls.items()) + (extra_label or "")
    (root / "image_class_labels.txt").write_text(lines)
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, t in is_train.items()))
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    return root


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

CATS = [
    # id, supercategory, kingdom, phylum, class, order, family, genus (obfuscated names, as released)
    (0, "Plantae", "K1", "P1", "C1", "O1", "F1", "G1"),
    (5, "Plantae", "K1", "P1", "C1", "O1", "F1", "G2"),
    (7, "Insecta", "K2", "P2", "C2", "O2", "F2", "G3"),
    (9, "Insecta", "K2", "P2", "C2", "O3", "F3", "G1"),  # genus name shared with another family
]


def _coco(images, labels):
    cats = [
        dict(
            zip(
                ("id", "supercategory", "kingdom", "phylum", "class", "order", "family", "genus"),
                c,
                strict=True,
            )
        )
        | {"name": f"S{c[0]}"}
        for c in CATS
    ]
    return {
        "info": {"year": 2018},
        "images": [{"id": i, "file_name": p, "width": 8, "height": 8} for i, p in images.items()],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(labels.items())
        ],
        "categories": cats,
        "licenses": [],
    }


def make_inat(root: Path, split_files: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train = {
        10: "train_val2018/Plantae/0/a.jpg",
        12: "train_val2018/Plantae/5/b.jpg",
        40: "train_val2018/Insecta/7/c.jpg",
    }
    val = {3: "train_val2018/Insecta/9/d.jpg", 77: "train_val2018/Plantae/0/e.jpg"}
    (root / "train2018.json").write_text(json.dumps(_coco(train, {10: 0, 12: 5, 40: 7})))
    (root / "val2018.json").write_text(json.dumps(_coco(val, {3: 9, 77: 0})))
    if split_files:
        d = root / "Inat_dataset_splits"
        d.mkdir()
        (d / "Inaturalist_train_set1.txt").write_text(train[10] + "\n" + train[12] + "\n" + val[77] + "\n")
        (d / "Inaturalist_test_set1.txt").write_text(train[40] + "\n" + val[3] + "\n")
    return root


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


def _dyml_csv(path: Path, header: list[str], rows: list[list], glued: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [", ".join(str(v) for v in r) for r in rows]
    if glued:  # the released files: no line end between the header and the first row
        text = ", ".join(header) + body[0] + "\n" + "\n".join(body[1:]) + "\n"
    else:
        text = ", ".join(header) + "\n" + "\n".join(body) + "\n"
    path.write_text(text)


def make_dyml(root: Path, variant: str, glued: bool = True) -> Path:
    head = ["fname", "coarse_id", "middle_id", "fine_id"]
    _dyml_csv(
        root / "train/label.csv", head, [["0.jpg", 1, 4, 30], ["1.jpg", 1, 4, 31], ["2.jpg", 2, 5, 32]], glued
    )
    if variant == "product":
        _dyml_csv(
            root / "mini-bmk_all_in_one/label.csv", head, [["0.jpg", 1, 6, 90], ["7.jpg", 1, 6, 90]], glued
        )
    else:
        for g in ("fine", "middle", "coarse"):
            _dyml_csv(root / f"bmk_{g}/query.csv", ["fname", "labels"], [["0.jpg", 3], ["1.jpg", 4]], glued)
            _dyml_csv(root / f"bmk_{g}/gallery.csv", ["fname", "labels"], [["0.jpg", 3], ["5.jpg", 3]], glued)
    return root


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
        _img(root / p)
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
