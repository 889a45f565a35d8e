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
