import json
import subprocess
import sys

import pyarrow as pa
import pytest

import hglv2
from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.fileio import atomic_open, sha256_file, write_json, write_parquet
from hglv2.hierarchy.labels import import_published, load_hierarchy_table
from hglv2.schema import HIERARCHY_COLUMNS, image_relpath


def test_version_and_help(cli_runner):
    res = cli_runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and hglv2.__version__ in res.output
    res = cli_runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "hglv2" in res.output


def test_console_script_module_runs():
    out = subprocess.run(
        [sys.executable, "-c", "from hglv2.cli import main; main()", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert hglv2.__version__ in out.stdout


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_deterministic_writers(tmp_path):
    table = pa.table({"a": [3, 1, 2], "b": ["x", "y", None]})
    write_parquet(table, tmp_path / "a.parquet")
    write_parquet(table, tmp_path / "b.parquet")
    assert sha256_file(tmp_path / "a.parquet") == sha256_file(tmp_path / "b.parquet")
    write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (tmp_path / "m.json").read_text().index('"a"') < (tmp_path / "m.json").read_text().index('"b"')


def test_image_relpath():
    assert image_relpath("abcdef0123456789") == "a/b/c/abcdef0123456789.jpg"


def test_import_published(tmp_path):
    p = tmp_path / "train_label_to_hierarchical.csv"
    p.write_text(
        "\ufefflandmark_id,category,supercategory,hierarchical_label,natural_or_human_made\r\n"
        '2,"http://commons.wikimedia.org/wiki/Category:A,_B",church,church,human-made\r\n'
        "1,http://commons.wikimedia.org/wiki/Category:Mont_Blanc,,,\r\n",
        encoding="utf-8",
    )
    table = import_published(p)
    assert list(table.columns) == list(HIERARCHY_COLUMNS)
    assert table["landmark_id"].tolist() == [1, 2]
    assert table["category"].iloc[1].endswith("A,_B")
    assert table["hierarchical_label"].isna().iloc[0]
    assert (table["provenance"] == "published").all()
    assert load_hierarchy_table(p).equals(table)


@pytest.mark.parametrize(
    "body, message",
    [
        ("landmark_id,category\n1,x\n", "missing column"),
        (
            "landmark_id,category,supercategory,hierarchical_label,natural_or_human_made\nx,a,b,c,d\n",
            ":2: landmark_id 'x'",
        ),
        (
            "landmark_id,category,supercategory,hierarchical_label,natural_or_human_made\n1,a,b,c,d\n"
            "1,a,b,c,d\n",
            ":3: duplicate landmark_id 1",
        ),
    ],
)
def test_import_published_errors(tmp_path, body, message):
    p = tmp_path / "h.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=message):
        import_published(p)


def test_atomic_output_has_default_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
