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
