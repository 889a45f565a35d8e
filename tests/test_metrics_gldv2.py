"""hglv2.metrics.gldv2: the worked cases of the official GLDv2 metric tests, file rules, and
consistency with the embedding evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_metrics_oracle import ranking

from hglv2.errors import InputError
from hglv2.metrics import evaluate
from hglv2.metrics.gldv2 import (
    detect_task,
    evaluate_files,
    global_average_precision,
    mean_average_precision,
    mean_median_position,
    mean_precisions,
    read_solution,
    read_submission,
    top1_accuracy,
)

# The official tests' inputs (values re-typed; expectations are worked by hand in comments).
RECOGNITION_SOLUTION = {
    "0123456789abcdef": [0, 12],
    "0223456789abcdef": [100, 200, 300],
    "0323456789abcdef": [1],
    "0423456789abcdef": [],
    "0523456789abcdef": [],
}
RECOGNITION_PREDICTIONS = {
    "0223456789abcdef": {"class": 0, "score": 0.01},
    "0323456789abcdef": {"class": 1, "score": 10.0},
    "0423456789abcdef": {"class": 150, "score": 15.0},
}
RETRIEVAL_SOLUTION = {
    "0123456789abcdef": ["fedcba9876543210", "fedcba9876543220"],
    "0223456789abcdef": ["fedcba9876543210"],
    "0323456789abcdef": ["fedcba9876543230", "fedcba9876543240", "fedcba9876543250"],
    "0423456789abcdef": ["fedcba9876543230"],
}
RETRIEVAL_PREDICTIONS = {
    "0223456789abcdef": ["fedcba9876543200", "fedcba9876543210"],
    "0323456789abcdef": ["fedcba9876543240"],
    "0423456789abcdef": ["fedcba9876543230", "fedcba9876543240"],
}


def test_gap_official_cases():
    # sorted by score: 0423 (wrong, no gt), 0323 (right: 1/2), 0223 (wrong); 3 queries with gt
    assert global_average_precision(RECOGNITION_PREDICTIONS, RECOGNITION_SOLUTION) == pytest.approx(
        0.166667, abs=1e-6
    )
    # ignoring 0423: 0323 right at position 1 -> 1/3
    assert global_average_precision(RECOGNITION_PREDICTIONS, RECOGNITION_SOLUTION, True) == pytest.approx(
        0.333333, abs=1e-6
    )
    assert top1_accuracy(RECOGNITION_PREDICTIONS, RECOGNITION_SOLUTION) == pytest.approx(0.333333, abs=1e-6)


def test_retrieval_official_cases():
    # (0 + 1/2 + 1/3 + 1) / 4
    assert mean_average_precision(RETRIEVAL_PREDICTIONS, RETRIEVAL_SOLUTION) == pytest.approx(
        0.458333, abs=1e-6
    )
    # first prediction only: (0 + 0 + 1 + 1) / 4
    assert mean_average_precision(
        RETRIEVAL_PREDICTIONS, RETRIEVAL_SOLUTION, max_predictions=1
    ) == pytest.approx(0.5)
    np.testing.assert_allclose(mean_precisions(RETRIEVAL_PREDICTIONS, RETRIEVAL_SOLUTION, 2), [0.5, 0.375])
    mean, median = mean_median_position(RETRIEVAL_PREDICTIONS, RETRIEVAL_SOLUTION)
    assert (mean, median) == pytest.approx((26.25, 1.5))
    mean, median = mean_median_position(RETRIEVAL_PREDICTIONS, RETRIEVAL_SOLUTION, max_predictions=1)
    assert (mean, median) == pytest.approx((1.5, 1.5))


def test_duplicates_are_skipped_but_keep_their_position():
    sol = {"q": ["a", "b"]}
    # a (hit, P=1/1), a (duplicate, skipped), b (hit at position 3, P=2/3)
    assert mean_average_precision({"q": ["a", "a", "b"]}, sol) == pytest.approx((1 + 2 / 3) / 2)
    # normaliser is min(R, 100)
    sol = {"q": [f"g{i}" for i in range(150)]}
    assert mean_average_precision({"q": [f"g{i}" for i in range(150)]}, sol) == pytest.approx(1.0)
    # only the first 100 entries count
    assert mean_average_precision({"q": ["x"] * 100 + ["g0"]}, {"q": ["g0"]}) == 0.0


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_files_like_the_official_reader(tmp_path):
    sol = _write(
        tmp_path / "sol.csv",
        "id,images,Usage\n"
        "0123456789abcdef,None,Ignored\n"
        "0223456789abcdef,fedcba9876543210 fedcba9876543200,Public\n"
        "0323456789abcdef,fedcba9876543200,Private\n"
        "0423456789abcdef,fedcba9876543220,Private\n"
        "0523456789abcdef,None,Ignored\n",
    )
    public, private, ignored = read_solution(sol, "retrieval")
    assert public == {"0223456789abcdef": ["fedcba9876543210", "fedcba9876543200"]}
    assert private == {"0323456789abcdef": ["fedcba9876543200"], "0423456789abcdef": ["fedcba9876543220"]}
    assert ignored == ["0123456789abcdef", "0523456789abcdef"]
    sub = _write(
        tmp_path / "sub.csv",
        "id,images\n"
        "0123456789abcdef,fedcba9876543250 \n"
        "0423456789abcdef,fedcba9876543260\n"
        "0223456789abcdef,fedcba9876543210 fedcba9876543200 fedcba9876543220\n"
        "\n"
        "0523456789abcdef,\n",
    )
    pub_pred, priv_pred = read_submission(
        sub,
        "retrieval",
        ["0223456789abcdef"],
        ["0323456789abcdef", "0423456789abcdef"],
        ["0123456789abcdef", "0523456789abcdef"],
    )
    assert pub_pred == {"0223456789abcdef": ["fedcba9876543210", "fedcba9876543200", "fedcba9876543220"]}
    assert priv_pred == {"0423456789abcdef": ["fedcba9876543260"]}
    res = evaluate_files(sol, sub)
    assert res["task"] == "retrieval" and res["public"]["mAP@100"] == pytest.approx(1.0)
    assert res["private"]["mAP@100"] == 0.0 and res["n_ignored"] == 2


def test_read_recognition_files(tmp_path):
    sol = _write(
        tmp_path / "sol.csv",
        "id,landmarks,Usage\n"
        "0123456789abcdef,0 12,Public\n"
        "0223456789abcdef,,Public\n"
        "0323456789abcdef,100,Ignored\n"
        "0423456789abcdef,1,Private\n"
        "0523456789abcdef,,Ignored\n",
    )
    assert detect_task(sol) == "recognition"
    public, private, ignored = read_solution(sol, "recognition")
    assert public == {"0123456789abcdef": [0, 12], "0223456789abcdef": []}
    assert private == {"0423456789abcdef": [1]}
    assert ignored == ["0323456789abcdef", "0523456789abcdef"]
    sub = _write(
        tmp_path / "sub.csv",
        "id,landmarks\n0123456789abcdef,12 0.1 \n0423456789abcdef,0 19.0\n"
        "0223456789abcdef,\n\n0523456789abcdef,14 0.01\n",
    )
    pub_pred, priv_pred = read_submission(sub, "recognition", public, private, ignored)
    assert pub_pred == {"0123456789abcdef": {"class": 12, "score": 0.1}}
    assert priv_pred == {"0423456789abcdef": {"class": 0, "score": 19.0}}
    res = evaluate_files(sol, sub)
    assert res["public"]["GAP"] == pytest.approx(1.0) and res["private"]["GAP"] == 0.0


Q1, Q9, IA, IB = "0000000000000a01", "0000000000000a09", "00000000000000aa", "00000000000000bb"


@pytest.mark.parametrize(
    "sol_text, sub_text, message",
    [
        (f"id,images,Usage\n{Q1},{IA},Secret\n", "id,images\n", "sol.csv:2: Usage 'Secret'"),
        (
            f"id,images,Usage\n{Q1},{IA},Public\n{Q1},{IB},Public\n",
            "id,images\n",
            f"sol.csv:3: duplicate id '{Q1}'",
        ),
        (
            f"id,images,Usage\n{Q1},None,Public\n",
            "id,images\n",
            f"sol.csv:2: Public query '{Q1}' has no ground-truth",
        ),
        (
            f"id,images,Usage\n{Q1},{IA},Public\n",
            f"id,images\n{Q1},{IA}\n{Q1},{IB}\n",
            f"sub.csv:3: query '{Q1}' is repeated",
        ),
        (
            f"id,images,Usage\n{Q1},{IA},Public\n",
            f"id,images\n{Q9},{IA}\n",
            f"sub.csv:2: query '{Q9}' is not in the solution",
        ),
        (
            f"id,landmarks,Usage\n{Q1},1,Public\n",
            f"id,landmarks\n{Q1},1\n",
            "sub.csv:2: expected '<landmark_id> <score>'",
        ),
        (
            f"id,landmarks,Usage\n{Q1},x,Public\n",
            "id,landmarks\n",
            "sol.csv:2: landmark id 'x' is not an integer",
        ),
        (f"id,foo,Usage\n{Q1},x,Public\n", "id,landmarks\n", "sol.csv:1: second column"),
        ("", "id,images\n", "sol.csv: empty file"),
        # the one GLDv2 reader: a short row or an extra field is one error line naming the line
        (f"id,images,Usage\n{Q1},{IA},Public\n{Q9}\n", "id,images\n", "sol.csv:3: expected 3 fields, got 1"),
        (f"id,images,Usage\n{Q1},{IA},Public,x\n", "id,images\n", "sol.csv:2: expected 3 fields, got 4"),
        ("id,images,Usage\nq1,a,Public\n", "id,images\n", "sol.csv:2: id 'q1' is not a 16-character hex"),
    ],
)
def test_bad_files(tmp_path, sol_text, sub_text, message):
    sol = _write(tmp_path / "sol.csv", sol_text)
    sub = _write(tmp_path / "sub.csv", sub_text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("'", "'")):
        evaluate_files(sol, sub)
    with pytest.raises(InputError, match="no such file"):
        evaluate_files(tmp_path / "missing.csv", sub)


@given(st.data())
def test_file_map_at_100_equals_embedding_evaluator(data):
    """The same ranking written as a submission scores the same mAP@100 as evaluate()."""
    n_q = data.draw(st.integers(1, 4))
    n_g = data.draw(st.integers(1, 130))
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    q = rng.integers(-2, 3, size=(n_q, 2)).astype(np.float32)
    g = rng.integers(-2, 3, size=(n_g, 2)).astype(np.float32)
    ql = rng.integers(0, 3, size=n_q)
    gl = rng.integers(0, 3, size=n_g)
    solution, predictions = {}, {}
    for i in range(n_q):
        truth = [f"g{j}" for j in range(n_g) if gl[j] == ql[i]]
        if not truth:
            continue
        solution[f"q{i}"] = truth
        order = ranking(g @ q[i])
        predictions[f"q{i}"] = [f"g{j}" for j in order[:100]]
    res = evaluate(q, ql, g, gl, reduce=False)
    want = [v for v in res["mAP@100_level0"] if not math.isnan(v)]
    if solution:
        assert mean_average_precision(predictions, solution) == pytest.approx(float(np.mean(want)), rel=1e-12)
