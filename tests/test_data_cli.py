"""``hglv2 download`` / ``hglv2 export``: outputs, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json

from test_data_network import TEST, TRAIN

from hglv2.cli import main
from tests.fixtures.gldv2_example import write_example
from tests.fixtures.http_server import FileServer


def _err(res):
    return res.stderr.strip().splitlines()


def test_export_cli_writes_splits_and_json(cli_runner, tmp_path):
    write_example(tmp_path / "meta", seed=9)
    res = cli_runner.invoke(
        main,
        [
            "export",
            "--metadata",
            str(tmp_path / "meta"),
            "--out",
            str(tmp_path / "out"),
            "--split",
            "train",
            "--split",
            "query",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "train " in res.stdout and "coverage level0=100.0%" in res.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text()) == manifest
    assert sorted(manifest["splits"]) == ["query", "train"]
    assert manifest["command"][:4] == ["hglv2", "export", "--metadata", str(tmp_path / "meta")]
    assert manifest["command"].count("--split") == 2


def test_export_cli_bad_input_is_one_error_line(cli_runner, tmp_path):
    meta = tmp_path / "meta"
    write_example(meta, seed=9)
    lines = (meta / "train.csv").read_text().splitlines()
    lines[3] = "../../../etc/passwd," + lines[3].split(",", 1)[1]
    (meta / "train.csv").write_text("\n".join(lines) + "\n")
    res = cli_runner.invoke(
        main,
        [
            "export",
            "--metadata",
            str(meta),
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 2
    assert _err(res) == ["Error: train.csv:4: id '../../../etc/passwd' is not a 16-character hex image id"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()
    res = cli_runner.invoke(main, ["export", "--metadata", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and _err(res)[0].startswith("Error: ") and len(_err(res)) == 1
    res = cli_runner.invoke(
        main,
        [
            "export",
            "--metadata",
            str(meta),
            "--out",
            str(tmp_path / "o"),
            "--hierarchy",
            str(tmp_path / "missing.csv"),
        ],
    )
    assert res.exit_code == 2 and _err(res) == [f"Error: {tmp_path / 'missing.csv'}: no such file"]


def test_download_cli_against_local_server(cli_runner, tmp_path):
    files = {"/g/metadata/train.csv": TRAIN, "/g/metadata/test.csv": TEST}
    with FileServer(files, {"/g/metadata/test.csv": ["drop"]}) as srv:
        args = [
            "download",
            "train.csv",
            "test.csv",
            "--dest",
            str(tmp_path / "d"),
            "--base-url",
            srv.url + "/g",
            "--no-progress",
            "--contact",
            "tests@example.org",
            "--json",
            str(tmp_path / "dl.json"),
        ]
        res = cli_runner.invoke(main, args)
        assert res.exit_code == 0, res.output
        out = json.loads((tmp_path / "dl.json").read_text())
        assert [f["status"] for f in out["files"]] == ["downloaded", "downloaded"]
        assert (tmp_path / "d" / "test.csv").read_bytes() == TEST
        assert all(r.user_agent.startswith("hglv2/") and "tests@example.org" in r.user_agent for r in srv.log)
        res = cli_runner.invoke(main, ["download", "train.csv", "--dest", str(tmp_path / "d"), "--offline"])
        assert res.exit_code == 0 and "verified" in res.stdout
        # a file the server does not have: one error line, exit 2
        res = cli_runner.invoke(
            main,
            [
                "download",
                "index.csv",
                "--dest",
                str(tmp_path / "d"),
                "--base-url",
                srv.url + "/g",
                "--no-progress",
            ],
        )
        assert res.exit_code == 2 and len(_err(res)) == 1 and "HTTP 404" in _err(res)[0]
    res = cli_runner.invoke(main, ["download", "nope.csv", "--dest", str(tmp_path / "d")])
    assert res.exit_code == 2 and _err(res)[0].startswith("Error: nope.csv: not a GLDv2 metadata file")
    res = cli_runner.invoke(main, ["download", "test.csv", "--dest", str(tmp_path / "e"), "--offline"])
    assert res.exit_code == 2 and "not on disk" in _err(res)[0]
