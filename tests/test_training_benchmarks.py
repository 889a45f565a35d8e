"""The training benchmarks' scripts run (tiny CPU versions; their figures are not checked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its process pool pickles functions by module name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_train_smoke(tmp_path):
    out = _load("gpu_check_train").main(
        ["--smoke", "--data", str(tmp_path / "data"), "--json", str(tmp_path / "r.json")]
    )
    assert out["steps"] == 6 and out["batch_size"] == 16 and out["images_per_s_run"] > 0
    assert out["images_per_s_compute_floor"] > 0 and out["data"]["images"] > 0
    assert (tmp_path / "r.json").is_file()
