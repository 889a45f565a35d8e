"""GLDv2 file readers: schemas, hostile inputs and FILE:LINE error messages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hglv2.errors import InputError
from hglv2.gldv2.readers import hex_ids_to_uint64, read_file
from hglv2.gldv2.specs import FILES, file_url, spec_for
from tests.fixtures.gldv2_example import write_example

A = "0123456789abcdef"
B = "fedcba9876543210"
C = "00000000000000aa"


def _write(tmp_path, name, text, *, bom=False, crlf=False, encoding="utf-8"):
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_example_files_read_back(tmp_path):
    files = write_example(tmp_path)
    assert set(files) == set(FILES)
    for name, path in files.items():
        t = read_file(path)
        assert t.num_rows > 0, name
    clean = read_file(files["train_clean.csv"])
    train = read_file(files["train.csv"])
    assert set(clean["id"].to_pylist()) <= set(train["id"].to_pylist())


def test_train_with_bom_crlf_quoted_commas_and_unicode(tmp_path):
    p = _write(
        tmp_path,
        "train.csv",
        f'id,url,landmark_id\n{A},"http://x/a,b.jpg",7\n{B},http://x/Zürich_Ω.jpg, 12 \n',
        bom=True,
        crlf=True,
    )
    t = read_file(p)
    assert t.column_names == ["id", "url", "landmark_id"]
    assert t.to_pylist() == [
        {"id": A, "url": "http://x/a,b.jpg", "landmark_id": 7},
        {"id": B, "url": "http://x/Zürich_Ω.jpg", "landmark_id": 12},
    ]
    assert str(t.schema.field("landmark_id").type) == "int64"


def test_hierarchical_unicode_and_empty_fields(tmp_path):
    p = _write(
        tmp_path,
        "train_label_to_hierarchical.csv",
        "landmark_id,category,supercategory,hierarchical_label,natural_or_human_made\n"
        '1,"http://commons.wikimedia.org/wiki/Category:Église_Saint-Étienne,_Caen",église,church,human-made\n'
        "2,http://commons.wikimedia.org/wiki/Category:富士山,,,\n",
        bom=True,
    )
    rows = read_file(p).to_pylist()
    assert rows[0]["category"].endswith("Église_Saint-Étienne,_Caen") and rows[0]["supercategory"] == "église"
    assert rows[1]["category"].endswith("富士山") and rows[1]["hierarchical_label"] is None


def test_none_markers_in_solution_files(tmp_path):
    p = _write(
        tmp_path,
        "retrieval_solution_v2.1.csv",
        f"id,images,Usage\n{A},{B} {C},Public\n{B},None,Ignored\n{C},{A},Private\n",
        crlf=True,
    )
    t = read_file(p)
    assert t["images"].to_pylist() == [[B, C], None, [A]]
    assert t["usage"].to_pylist() == ["Public", "Ignored", "Private"]
    p = _write(
        tmp_path,
        "recognition_solution_v2.1.csv",
        f"id,landmarks,Usage\n{A},12 7,Public\n{B},,Private\n{C},None,Private\n",
    )
    assert read_file(p)["landmarks"].to_pylist() == [[12, 7], [], []]


def test_train_clean_is_exploded_in_order(tmp_path):
    p = _write(tmp_path, "train_clean.csv", f"landmark_id,images\n5,{A}  {B}\n9,{C}\n")
    assert read_file(p).to_pylist() == [
        {"id": A, "landmark_id": 5},
        {"id": B, "landmark_id": 5},
        {"id": C, "landmark_id": 9},
    ]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("train.csv", f"id,landmark_id\n{A},1\n", "train.csv:1: missing column(s) url"),
        (
            "train.csv",
            f"id,url,landmark_id\n{A},u,1\n../../etc/passwd,u,2\n",
            "train.csv:3: id '../../etc/passwd' is not a 16-character hex image id",
        ),
        ("train.csv", f"id,url,landmark_id\n{A},u,1\n{A.upper()},u,2\n", "train.csv:3: id"),
        (
            "train.csv",
            f"id,url,landmark_id\n{A},u,1\n{B},u,x7\n",
            "train.csv:3: landmark_id 'x7' is not a non-negative integer",
        ),
        ("train.csv", f"id,url,landmark_id\n{A},u,1\n{B},u,-4\n", "train.csv:3: landmark_id '-4'"),
        ("train.csv", f"id,url,landmark_id\n{A},u,1\n{B},u,2\n{A},v,3\n", f"train.csv:4: duplicate id '{A}'"),
        ("train.csv", f"id,url,landmark_id\n{A},u,1\n{B},,2\n", "train.csv:3: empty url"),
        (
            "train.csv",
            f"id,url,landmark_id\n{A},u,1\n{B},u,2,extra\n",
            "train.csv:3: expected 3 fields, got 4",
        ),
        ("train.csv", f"id,url,landmark_id\n{A},u,1\n\n{B},u,2\n", "train.csv:3: id ''"),
        ("train.csv", "", "train.csv:1: empty file"),
        ("index.csv", f"id\n{A}\n\n", "index.csv:3: id '' is not a 16-character hex"),
        (
            "train_clean.csv",
            f"landmark_id,images\n1,{A}\n2,{B} {A}\n",
            f"train_clean.csv:3: image id '{A}' is listed twice",
        ),
        (
            "train_clean.csv",
            f"landmark_id,images\n1,{A}\n1,{B}\n",
            "train_clean.csv:3: duplicate landmark_id 1",
        ),
        ("train_clean.csv", f"landmark_id,images\n1,{A} ../x\n", "train_clean.csv:2: image id '../x'"),
        ("train_clean.csv", "landmark_id,images\n1,\n", "train_clean.csv:2: empty images"),
        (
            "retrieval_solution_v2.1.csv",
            f"id,images,Usage\n{A},{B},Public\n{B},,Public\n",
            "retrieval_solution_v2.1.csv:3: empty images",
        ),
        (
            "retrieval_solution_v2.1.csv",
            f"id,images,Usage\n{A},{B} none,Public\n",
            "retrieval_solution_v2.1.csv:2: index image id 'none'",
        ),
        (
            "recognition_solution_v2.1.csv",
            f"id,landmarks,Usage\n{A},1 x,Public\n",
            "recognition_solution_v2.1.csv:2: landmark id 'x' is not an integer",
        ),
        (
            "recognition_solution_v2.1.csv",
            f"id,landmarks,Usage\n{A},1,\n",
            "recognition_solution_v2.1.csv:2: empty Usage",
        ),
        (
            "train_label_to_category.csv",
            "landmark_id,category\n1,c\n2,\n",
            "train_label_to_category.csv:3: empty",
        ),
        ("train.csv", "id,id,url,landmark_id\n", "train.csv:1: duplicate column(s) id"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    p = _write(tmp_path, name, text)
    with pytest.raises(InputError) as err:
        read_file(p)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_utf8_names_the_line(tmp_path):
    p = tmp_path / "train.csv"
    p.write_bytes(f"id,url,landmark_id\n{A},u,1\n{B},caf\xe9,2\n".encode("latin-1"))
    with pytest.raises(InputError, match="train.csv:3: not valid UTF-8"):
        read_file(p)


def test_spec_and_urls():
    assert spec_for("x/index_label_to_hierarchical.csv").kind == "label_to_hierarchical"
    assert spec_for("retrieval_solution_v2.1.csv").folder == "ground_truth"
    with pytest.raises(InputError, match="not a known"):
        spec_for("foo.csv")
    assert file_url("train.csv") == "https://s3.amazonaws.com/google-landmark/metadata/train.csv"
    assert file_url("retrieval_solution_v2.1.csv", "http://127.0.0.1:1/g/") == (
        "http://127.0.0.1:1/g/ground_truth/retrieval_solution_v2.1.csv"
    )
    with pytest.raises(InputError):
        file_url("../secret.csv")


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50), st.integers(0, 5))
def test_hex_ids_to_uint64_matches_int_parsing(values, cut):
    arr = pa.array(["ffffffffffffffff"] * cut + [f"{v:016x}" for v in values])
    got = hex_ids_to_uint64(arr.slice(cut))  # a sliced array has a non-zero offset
    assert got.dtype == np.uint64 and got.tolist() == values
    chunked = pa.chunked_array([arr.slice(cut, 3), arr.slice(cut + 3)]) if len(values) > 3 else None
    if chunked is not None:
        assert hex_ids_to_uint64(chunked).tolist() == values


_ID_CHARS = st.sampled_from(list("0123456789abcdefABg -\u00e9"))


@given(
    values=st.lists(st.text(_ID_CHARS, min_size=14, max_size=18), min_size=1, max_size=6),
    start=st.integers(0, 2),
    chunked=st.booleans(),
)
def test_fast_column_checks_agree_with_the_pyarrow_kernels(values, start, chunked):
    """The buffer-level checks of the reader (hex ids, non-empty fields) give the answer of the
    regex / pyarrow kernels they stand in front of: an id column passes iff the regex matches
    every value; a field column passes the fast check only if no value is empty or blank."""
    import pyarrow.compute as pc

    from hglv2.gldv2 import readers

    values = [v[:16] if k % 2 else v for k, v in enumerate(values)] + ["0123456789abcdef"] * 2
    arr = pa.array(values, pa.string()).slice(min(start, len(values) - 1))
    col = pa.chunked_array([arr[:1], arr[1:]]) if chunked else pa.chunked_array([arr])
    want = pc.all(pc.match_substring_regex(col, readers.ID_PATTERN)).as_py()
    assert readers._all_hex_ids(col) == want
    blank = pc.any(pc.or_(pc.equal(pc.utf8_length(col), 0), pc.utf8_is_space(col))).as_py()
    if readers._starts_printable(col):
        assert not blank
    assert readers._starts_printable(pa.chunked_array([pa.array(["https://a", "b c"])]))
    assert not readers._starts_printable(pa.chunked_array([pa.array(["b", " "])]))  # the kernel decides
    with_null = pa.chunked_array([pa.array(["0123456789abcdef", None])])
    assert not readers._all_hex_ids(with_null) and not readers._starts_printable(with_null)
