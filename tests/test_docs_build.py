"""The documentation site builds offline with ``mkdocs build --strict`` (``make docs``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install 'hglv2[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: pip install 'hglv2[docs]'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env |= {
        "NO_MKDOCS_2_WARNING": "1",
        "NO_PROXY": "*",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    site = tmp_path / "site"
    for page in ("index.html", "metrics/index.html", "api/metrics/index.html", "api/losses/index.html"):
        assert (site / page).is_file(), page
    # the API pages come from the docstrings
    assert "evaluate" in (site / "api" / "metrics" / "index.html").read_text(encoding="utf-8")
    assert "SupAP" in (site / "api" / "losses" / "index.html").read_text(encoding="utf-8")
