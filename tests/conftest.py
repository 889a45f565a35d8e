"""Shared test settings: offline, small thread counts, deterministic hypothesis profile, and the
grouping of the suite for parallel runs (pytest-xdist, ``make test``)."""

import os
import zlib

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HGLV2_OFFLINE_TESTS", "1")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


@pytest.fixture(autouse=True)
def _seeded_global_generators(request):
    """The global torch, NumPy and ``random`` generators start from a seed of the test's own id, so
    a test draws the same numbers whichever worker runs it and whatever ran before it."""
    import random

    import numpy as np
    import torch

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def gloo_pool():
    """Two gloo ranks shared by the DDP tests of the session (tests/fixtures/gloo.py)."""
    from tests.fixtures.gloo import GlooPool

    pool = GlooPool(2)
    yield pool
    pool.close()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``), every test that uses :func:`gloo_pool` runs in one
    worker, so the session starts one pair of gloo ranks, not one per worker."""
    for item in items:
        if "gloo_pool" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("gloo"))
