"""The GPU check's training part runs (tiny, on the CPU; its figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_gpu_check_train_smoke(tmp_path):
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--part", "train"]
    cmd += ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "r.json")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = json.loads((tmp_path / "r.json").read_text())["train"]
    h = out["harness"]
    assert h["steps"] == 6 and h["batch_size"] == 16 and h["images_per_s_run"] > 0
    assert h["images_per_s_compute_floor"] > 0 and h["data"]["images"] > 0
    assert all("error" not in v for v in out["recipe"].values() if isinstance(v, dict))


def test_gpu_check_without_cuda_skips():
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present")
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--part", "losses"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert proc.stdout.startswith("gpu_check: no CUDA device") and len(proc.stdout.splitlines()) == 1


def test_docs_performance_tables_match_the_results_files(tmp_path):
    """docs/performance.md's generated tables are those `make bench-tables` writes from
    benchmarks/results/*.json, and the results files carry their conditions."""
    sys.path.insert(0, str(BENCH))
    try:
        import _tables
    finally:
        sys.path.remove(str(BENCH))
    assert _tables.main(["--check"]) == 0, "stale tables: run make bench-tables"
    for path in sorted((BENCH / "results").glob("*.json")):
        res = json.loads(path.read_text())
        assert {"load_before", "load_after", "machine", "versions", "command", "figures"} <= set(res), path
        for fig in res["figures"].values():
            if isinstance(fig, dict) and "samples" in fig:
                assert fig["min"] <= fig["median"] <= fig["max"] and fig["n"] == len(fig["samples"]), path


def test_tables_compare_flags_figures_that_do_not_reproduce(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import _tables
    finally:
        sys.path.remove(str(BENCH))

    def results(folder: Path, a: float, b: float) -> Path:
        folder.mkdir()
        fig = {"x.time": {"min": a, "median": a, "max": a}, "x.ratio": {"min": b, "median": b, "max": b}}
        doc = {"load_before": [0.5, 0, 0], "load_after": [0.7, 0, 0], "figures": {**fig, "entities": 3}}
        (folder / "x_speed.json").write_text(json.dumps(doc))
        return folder

    first = results(tmp_path / "a", 1.0, 2.0)
    assert _tables.main(["--results", str(first), "--compare", str(results(tmp_path / "b", 1.19, 1.7))]) == 0
    assert _tables.main(["--results", str(first), "--compare", str(results(tmp_path / "c", 1.25, 2.0))]) == 1
    out = capsys.readouterr().out
    assert "x.time" in out and "25.0% <-- over" in out and "1 figure(s) differ by more than 20%" in out
    assert _tables.main(["--results", str(first), "--compare", str(tmp_path / "none")]) == 1
    # a folder without the results files leaves every table as it is
    assert _tables.main(["--results", str(tmp_path / "none"), "--check"]) == 0


def test_tables_rerun_builds_each_results_files_command(tmp_path):
    """``make bench-check``: each results file's command again, under its thread setting, into the
    new folder; a command that is not one of this repository's benchmark scripts is refused."""
    sys.path.insert(0, str(BENCH))
    try:
        import _tables
    finally:
        sys.path.remove(str(BENCH))

    def results(folder: Path, name: str, command: str, omp: str | None) -> None:
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(json.dumps({"command": command, "machine": {"OMP_NUM_THREADS": omp}}))

    src, out = tmp_path / "results", tmp_path / "again"
    results(src, "a.json", "python benchmarks/export_speed.py --rows 10 --results old/a.json --repeat 3", "2")
    results(src, "b.json", "python3.11 benchmarks/dump_speed.py --formats gz", None)
    (env_a, argv_a), (env_b, argv_b) = _tables.rerun_commands(src, out)
    assert env_a == {"OMP_NUM_THREADS": "2"} and env_b == {}
    assert argv_a == [sys.executable, "benchmarks/export_speed.py", "--rows", "10", "--repeat", "3",
                      "--results", str(out / "a.json")]  # fmt: skip
    assert argv_b[1:] == ["benchmarks/dump_speed.py", "--formats", "gz", "--results", str(out / "b.json")]
    for bad in ("rm -rf benchmarks/x.py", "python benchmarks/no_such_script.py", "python -c 1"):
        results(src, "c.json", bad, None)
        with pytest.raises(SystemExit, match="not a benchmark script"):
            _tables.rerun_commands(src, out)
