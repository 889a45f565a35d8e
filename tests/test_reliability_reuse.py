"""Benchmark run reuse keys on the content of every input, never on paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hglv2.cli import main
from tests.fixtures.training import write_tiny_suite

ROOT = Path(__file__).resolve().parents[1]


def _bench(cli_runner, suite: Path, out: Path) -> dict:
    res = cli_runner.invoke(main, ["benchmark", str(suite), "--out", str(out), "--quiet", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text())


def test_editing_the_hierarchy_file_retrains_the_runs(tmp_path, cli_runner):
    hierarchy = tmp_path / "hierarchy.csv"
    shutil.copy(ROOT / "data/sample/train_label_to_hierarchical.csv", hierarchy)
    suite = tmp_path / "suite.yaml"
    write_tiny_suite(
        suite, tmp_path / "data", "reuse", losses={"SupAP": {"name": "SupAP"}}, hierarchy=hierarchy
    )
    out = tmp_path / "bench"

    first = _bench(cli_runner, suite, out)
    assert [r["reused"] for r in first["runs"]] == [False]
    assert [r["reused"] for r in _bench(cli_runner, suite, out)["runs"]] == [True]

    # same path, new content (a review decision moved landmarks): nothing old may be reused
    lines = hierarchy.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    rows = [r.replace(",human-made", ",natural") if i % 2 else r for i, r in enumerate(rows)]
    hierarchy.write_text("\n".join([header, *rows]) + "\n")
    third = _bench(cli_runner, suite, out)
    assert [r["reused"] for r in third["runs"]] == [False]
    assert third["runs"][0]["images_per_s"] > 0  # trained again, not resumed at its last step
    assert [r["reused"] for r in _bench(cli_runner, suite, out)["runs"]] == [True]


def test_run_key_depends_on_config_data_and_code_content(tmp_path):
    from hglv2.benchmark import code_digest, data_digest, run_key
    from hglv2.config import load_config

    cfg = load_config("synthetic")
    root = tmp_path / "d"
    root.mkdir()
    split = root / f"{cfg['data']['train_split']}.parquet"
    split.write_bytes(b"one")
    d1 = data_digest(cfg, root)
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert data_digest(cfg, moved) == d1  # content, not the folder's path
    split.write_bytes(b"two")
    d2 = data_digest(cfg, root)
    assert d2 != d1
    code = code_digest()
    assert len(code) == 64 and code == code_digest()
    k = run_key(cfg, d1, code)
    assert k != run_key(cfg, d2, code) and k != run_key(cfg, d1, "0" * 64)
    # the torch threads of a CPU run are part of its inputs (another count, other weights)
    assert run_key(cfg, d1, code, 1) != run_key(cfg, d1, code, 2) and run_key(cfg, d1, code, 1) != k
    changed = json.loads(json.dumps(cfg))
    changed["optimizer"]["lr"] = 0.5
    assert k != run_key(changed, d1, code)
