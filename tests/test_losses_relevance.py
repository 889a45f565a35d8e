"""The one relevance convention (hglv2.relevance): torch-free, the same on numpy and torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from hglv2.errors import InputError
from hglv2.relevance import level_weights, pair_levels, relevance_columns


def test_relevance_module_needs_no_torch():
    code = "import sys, hglv2.relevance; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pair_levels_same_on_numpy_and_torch():
    q = np.array([[0, 5, 9], [1, 5, 9], [-1, 6, 9]])
    g = np.array([[0, 5, 9], [-1, 5, 9], [2, 6, 8], [1, 6, 9]])
    expected = [[3, 2, 0, 1], [2, 2, 0, 2], [1, 1, 1, 2]]  # unknown (-1) matches nothing
    assert pair_levels(q, g, np.zeros((3, 4), dtype=np.int64)).tolist() == expected
    out = torch.zeros(3, 4, dtype=torch.int8)
    assert pair_levels(torch.from_numpy(q), torch.from_numpy(g), out).tolist() == expected


@pytest.mark.parametrize("relevance", ["pop", "map"])
def test_relevance_columns_by_hand_and_on_both_backends(relevance):
    counts = np.array([[4.0, 2.0, 0.0, 1.0], [1.0, 0.0, 3.0, 0.0]])  # N_q(v), v = 0..3
    w = level_weights(3, 2.0)  # 1, 4, 9
    cols = np.stack(relevance_columns(list(counts.T), w.tolist(), relevance), 1)
    if relevance == "pop":
        expected = [[0, 1 / 2, 0, 9 / 1], [0, 0, 4 / 3, 0]]
    else:  # N_q(>= m): row 0: 3, 1, 1; row 1: 3, 3, 0
        expected = [[0, 1 / 3, 1 / 3 + 4, 1 / 3 + 4 + 9], [0, 1 / 3, 1 / 3 + 4 / 3, 1 / 3 + 4 / 3]]
    np.testing.assert_allclose(cols, expected, rtol=1e-15)
    t = torch.stack(relevance_columns(torch.from_numpy(counts).unbind(1), w.tolist(), relevance), 1)
    assert t.dtype == torch.float64 and t.numpy().tobytes() == cols.tobytes()


def test_level_weights_and_bad_input():
    assert level_weights(3).tolist() == [1.0, 2.0, 3.0]
    assert level_weights(2, [0.5, 2.0]).tolist() == [0.5, 2.0]
    for alpha in ([1.0], [1.0, float("nan")], [0.0, 0.0], [-1.0, 1.0]):
        with pytest.raises(InputError, match="alpha"):
            level_weights(2, alpha)
    with pytest.raises(InputError, match="relevance"):
        relevance_columns([np.ones(1)] * 2, [1.0], "ndcg")
