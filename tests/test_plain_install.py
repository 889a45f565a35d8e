"""A plain install (no extras): the public API imports and ``hglv2 evaluate --example`` runs with the
optional peers unavailable, and a feature that needs one says which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("pytorch_metric_learning", "torchmetrics", "datasets", "duckdb", "sklearn", "hypothesis")

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_public_api_and_evaluate_example_without_extras():
    proc = _run(
        """
        import sys

        from hglv2.dataset import HGLDv2Dataset
        from hglv2.losses import SmoothAP, SupAP, SupHAP, SupNDCG, SupRecall
        from hglv2.metrics import evaluate
        import runpy

        for name in BLOCKED:
            assert name not in sys.modules, name
        sys.argv = ["hglv2", "evaluate", "--example"]  # python -m hglv2.cli evaluate --example
        runpy.run_module("hglv2.cli", run_name="__main__", alter_sys=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "H-AP" in proc.stdout


def test_pml_loss_without_the_extra_is_a_one_line_error():
    proc = _run(
        """
        from hglv2.errors import InputError
        from hglv2.losses import build_loss, loss_names

        assert "pml.Triplet" in loss_names()
        try:
            build_loss("pml.Triplet", {})
        except InputError as exc:
            print(exc)
        else:
            raise SystemExit("no error")
        try:
            import hglv2.losses.pml  # noqa: F401
        except ModuleNotFoundError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "pytorch-metric-learning is needed for loss 'pml.Triplet': pip install 'hglv2[pml]'",
        "pytorch-metric-learning is needed for the pml.* losses: pip install 'hglv2[pml]'",
    ]
