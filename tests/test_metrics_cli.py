"""``hglv2 evaluate``: table + --json, file formats, GLDv2 mode, and bad inputs (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hglv2.cli import main
from hglv2.metrics import evaluate


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(5)
    n = 60
    fine = rng.integers(0, 12, size=n)
    lab = np.stack([fine, fine // 3, fine // 6], 1)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "lab.npy", lab)
    return tmp_path, emb, lab


def test_example_prints_table_and_json(cli_runner, tmp_path):
    out = tmp_path / "ex.json"
    res = cli_runner.invoke(main, ["evaluate", "--example", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "H-AP" in res.output and "level2" in res.output and "hierarchical" in res.output
    data = json.loads(out.read_text())
    hier, flat = data["results"]["hierarchical"], data["results"]["flat"]
    # the hierarchy-aware embedding wins on the hierarchical metrics
    assert hier["H-AP"] > flat["H-AP"] and hier["ASI"] > flat["ASI"]
    assert hier["n_queries"] == 240


def test_evaluate_announces_its_json_file_after_the_table(cli_runner, tmp_path):
    out = tmp_path / "ex.json"
    res = cli_runner.invoke(main, ["evaluate", "--example", "--json", str(out)])
    plain = cli_runner.invoke(main, ["evaluate", "--example"])
    assert res.exit_code == plain.exit_code == 0, res.output
    assert res.output == plain.output + f"wrote {out}\n"


def test_json_option_writes_the_output_data_and_announces_it_only_when_asked(tmp_path):
    import click

    from hglv2.cli._options import Output, json_option, write_json_output

    def command(announce):
        @click.command()
        @json_option(announce=announce)
        def cmd():
            return Output({"x": float("nan")}, ["table"])

        return cmd

    for announce in (True, False):
        path = tmp_path / f"{announce}.json"
        cmd = command(announce)
        with cmd.make_context("cmd", ["--json", str(path)]) as ctx:
            after = write_json_output(ctx, cmd.invoke(ctx))
        assert after == ([f"wrote {path}"] if announce else [])
        assert json.loads(path.read_text()) == {"x": None}
        with cmd.make_context("cmd", []) as ctx:
            assert write_json_output(ctx, cmd.invoke(ctx)) == []


def test_npy_files_table_and_json(cli_runner, case):
    tmp, emb, lab = case
    out = tmp / "out" / "res.json"
    args = [
        "evaluate",
        "-e",
        str(tmp / "emb.npy"),
        "-l",
        str(tmp / "lab.npy"),
        "--recall-at",
        "1,5",
        "--ndcg-at",
        "10",
        "--json",
        str(out),
    ]
    res = cli_runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "AP" in res.output and "NDCG@10" in res.output
    got = json.loads(out.read_text())["results"]
    want = evaluate(emb, lab, recall_at=(1, 5), ndcg_at=10)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    # deterministic output
    first = out.read_bytes()
    assert cli_runner.invoke(main, args).exit_code == 0
    assert out.read_bytes() == first


def test_parquet_with_gallery(cli_runner, case):
    tmp, emb, lab = case
    table = pa.table(
        {
            "embedding": pa.array(list(emb), type=pa.list_(pa.float32())),
            "level0": lab[:, 0],
            "level1": lab[:, 1],
            "level2": pa.array([None] * 3 + list(lab[3:, 2])),
        }
    )
    pq.write_table(table, tmp / "all.parquet")
    res = cli_runner.invoke(
        main,
        [
            "evaluate",
            "-e",
            str(tmp / "all.parquet"),
            "--gallery-embeddings",
            str(tmp / "all.parquet"),
            "--json",
            str(tmp / "r.json"),
            "--normalize",
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp / "r.json").read_text())["results"]
    lab2 = lab.copy()
    lab2[:3, 2] = -1
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = evaluate(unit, lab2, unit, lab2)
    assert got["H-AP"] == pytest.approx(want["H-AP"]) and got["AP_level2"] == pytest.approx(want["AP_level2"])
    # query counted as its own positive in explicit-gallery mode
    assert got["R@1_level0"] == pytest.approx(1.0)


def test_gldv2_mode(cli_runner, tmp_path):
    (tmp_path / "sol.csv").write_text(
        "id,images,Usage\n0000000000000a01,00000000000000aa 00000000000000bb,Public\n"
        "0000000000000a02,00000000000000cc,Private\n0000000000000a03,None,Ignored\n"
    )
    (tmp_path / "sub.csv").write_text(
        "id,images\n0000000000000a01,00000000000000ee 00000000000000aa 00000000000000bb\n"
        "0000000000000a02,00000000000000cc\n0000000000000a03,00000000000000aa\n"
    )
    res = cli_runner.invoke(
        main,
        [
            "evaluate",
            "--solution",
            str(tmp_path / "sol.csv"),
            "--submission",
            str(tmp_path / "sub.csv"),
            "--json",
            str(tmp_path / "g.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "g.json").read_text())["results"]
    assert data["public"]["mAP@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert data["private"]["mAP@100"] == 1.0
    assert "mAP@100" in res.output


def _error(cli_runner, args, fragment):
    res = cli_runner.invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and fragment in lines[0], res.output
    assert "Traceback" not in res.output


def test_bad_inputs(cli_runner, case):
    tmp, emb, lab = case
    np.save(tmp / "short.npy", lab[:-1])
    _error(cli_runner, ["evaluate", "-e", str(tmp / "emb.npy"), "-l", str(tmp / "short.npy")], "59 rows")
    bad = emb.copy()
    bad[7, 2] = np.nan
    np.save(tmp / "nan.npy", bad)
    _error(
        cli_runner,
        ["evaluate", "-e", str(tmp / "nan.npy"), "-l", str(tmp / "lab.npy")],
        "row 7: embedding is not finite",
    )
    _error(
        cli_runner, ["evaluate", "-e", str(tmp / "missing.npy"), "-l", str(tmp / "lab.npy")], "no such file"
    )
    (tmp / "junk.npy").write_bytes(b"not numpy")
    _error(
        cli_runner,
        ["evaluate", "-e", str(tmp / "junk.npy"), "-l", str(tmp / "lab.npy")],
        "not a readable .npy",
    )
    np.save(tmp / "flab.npy", lab + 0.5)
    _error(
        cli_runner,
        ["evaluate", "-e", str(tmp / "emb.npy"), "-l", str(tmp / "flab.npy")],
        "row 0: label is not an integer",
    )
    _error(cli_runner, ["evaluate"], "give exactly one of")
    _error(cli_runner, ["evaluate", "--example", "--recall-at", "0"], "--recall-at")
    (tmp / "sol.csv").write_text("id,images,Usage\n0000000000000a01,00000000000000aa,Publik\n")
    (tmp / "sub.csv").write_text("id,images\n")
    _error(
        cli_runner,
        ["evaluate", "--solution", str(tmp / "sol.csv"), "--submission", str(tmp / "sub.csv")],
        "sol.csv:2: Usage 'Publik'",
    )
    (tmp / "bad.parquet").write_bytes(b"PAR1 nope")
    _error(cli_runner, ["evaluate", "-e", str(tmp / "bad.parquet")], "not a readable Parquet")
    out = tmp / "never.json"
    _error(
        cli_runner,
        ["evaluate", "-e", str(tmp / "emb.npy"), "-l", str(tmp / "short.npy"), "--json", str(out)],
        "rows",
    )
    assert not out.exists()
