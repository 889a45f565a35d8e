"""`hglv2 benchmark` and `hglv2 train` end to end on a tiny suite."""

from __future__ import annotations

import json

import pytest
import yaml

from hglv2.cli import main
from tests.fixtures.training import write_tiny_suite


def _tiny_suite(path, root):
    """Two seeds of Contrastive and SupHAP, 3 steps, evaluated at step 2."""
    losses = {"Contrastive": {"name": "Contrastive"}, "SupHAP": {"name": "SupHAP", "kwargs": {"alpha": 1.0}}}
    return write_tiny_suite(path, root, losses=losses, seeds=(0, 1), steps=3, eval_every=2)


def test_benchmark_writes_a_complete_report(tmp_path, cli_runner):
    suite = tmp_path / "tiny.yaml"
    _tiny_suite(suite, tmp_path / "data")
    out = tmp_path / "report"
    args = ["benchmark", str(suite), "--out", str(out), "--quiet", "--json", str(tmp_path / "b.json")]
    res = cli_runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"Report: {out / 'report.md'}" in res.output
    results = json.loads((out / "results.json").read_text())
    assert [(r["loss"], r["seed"]) for r in results["runs"]] == [
        ("Contrastive", 0),
        ("Contrastive", 1),
        ("SupHAP", 0),
        ("SupHAP", 1),
    ]
    for run in results["runs"]:
        assert 0.0 <= run["metrics"]["H-AP"] <= 1.0 and run["images_per_s"] > 0
        assert (out / "runs" / run["loss"] / f"seed{run['seed']}" / "metrics.json").is_file()  # as README
        assert [c["step"] for c in run["curve"] if "H-AP" in c] == [0, 2, 3]
    assert results["summary"]["SupHAP"]["H-AP"]["n"] == 2
    _check_uncertainty(out, results)
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Loss"))
    for col in ("AP L0", "R@1 L0", "AP L1", "R@1 L2", "H-AP", "ASI", "NDCG", "mAP@100 L0"):
        assert col in header
    rows = [line for line in report.splitlines() if line.startswith(("| Contrastive", "| SupHAP"))]
    assert len(rows) == 2 and all(" [" in r for r in rows)
    for png in ("per_level.png", "learning_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "b.json").read_text())["report"] == str(out / "report.md")

    # a second call reuses the finished runs; --losses/--seeds select a subset
    res = cli_runner.invoke(
        main, ["benchmark", str(suite), "--out", str(out), "--quiet", "--losses", "SupHAP", "--seeds", "1"]
    )
    assert res.exit_code == 0, res.output
    again = json.loads((out / "results.json").read_text())
    assert [(r["loss"], r["seed"], r["reused"]) for r in again["runs"]] == [("SupHAP", 1, True)]
    assert again["runs"][0]["metrics"] == results["runs"][3]["metrics"]

    # the number of parallel jobs does not change the results
    res = cli_runner.invoke(
        main,
        [
            "benchmark",
            str(suite),
            "--out",
            str(tmp_path / "seq"),
            "--quiet",
            "--losses",
            "SupHAP",
            "--seeds",
            "1",
            "--jobs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())
    assert seq["runs"][0]["metrics"] == results["runs"][3]["metrics"]
    per_query = "runs/SupHAP/seed1/per_query.parquet"
    assert (tmp_path / "seq" / per_query).read_bytes() == (out / per_query).read_bytes()

    res = cli_runner.invoke(main, ["benchmark", str(suite), "--out", str(out), "--losses", "Triplet"])
    assert res.exit_code == 2 and "Error: --losses: Triplet not in the suite" in res.output


def _check_uncertainty(out, results):
    """Per-query Parquet files whose means are the reported metrics; intervals and the pairwise
    table in results.json and report.md."""
    import numpy as np

    from hglv2.benchmark import read_per_query

    for run in results["runs"]:
        per = read_per_query(out / run["run_dir"] / "per_query.parquet")
        for key in ("H-AP", "AP_level0", "R@1_level1", "NDCG"):
            assert np.nanmean(per[key]) == pytest.approx(run["metrics"][key], abs=1e-12), key
    ci = results["intervals"]["SupHAP"]["H-AP"]
    assert ci["mean"] == pytest.approx(results["summary"]["SupHAP"]["H-AP"]["mean"], abs=1e-12)
    assert ci["low"] <= ci["mean"] <= ci["high"] and ci["seeds"] == 2
    pairs = [r for r in results["pairwise"] if r["metric"] == "H-AP"]
    assert [(r["a"], r["b"]) for r in pairs] == [("Contrastive", "SupHAP")]
    assert {"p_value", "p_holm", "significant", "low", "high"} <= set(pairs[0])
    report = (out / "report.md").read_text()
    assert "## Pairwise comparisons" in report and "| H-AP | Contrastive − SupHAP |" in report


def test_train_command(tmp_path, cli_runner):
    cfg = yaml.safe_load(open(_tiny_suite(tmp_path / "suite.yaml", tmp_path / "data")))
    del cfg["benchmark"]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = cli_runner.invoke(
        main,
        [
            "train",
            str(path),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "train.steps=2",
            "--set",
            "loss.name=SupAP",
            "--json",
            str(tmp_path / "t.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "trained tiny: H-AP" in res.output
    for name in ("config.yaml", "log.jsonl", "model.pt", "metrics.json", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"]["name"] == "SupAP"
    assert json.loads((tmp_path / "t.json").read_text())["metrics"]["H-AP"] >= 0
    res = cli_runner.invoke(main, ["train", str(path), "--set", "train.stepz=2"])
    assert res.exit_code == 2 and "Error: " in res.output and "train.stepz" in res.output
    for device in ("cuda:99", "tpu", "gpu!"):
        res = cli_runner.invoke(main, ["train", str(path), "--device", device, "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and "Error: --device" in res.output, res.output


def test_plan_jobs(monkeypatch):
    from hglv2.benchmark import plan_jobs

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    # one thread per run on CPU whatever the jobs and cores: the numbers do not depend on them
    assert plan_jobs(8, "cpu") == (4, 1)
    assert plan_jobs(2, "cpu") == (2, 1)
    assert plan_jobs(1, "cpu") == (1, 1)
    assert plan_jobs(8, "cpu", jobs=1) == (1, 1)
    assert plan_jobs(8, "cpu", jobs=2, threads=3) == (2, 3)
    assert plan_jobs(8, "cuda") == (1, None)


def test_a_run_embeds_its_evaluation_splits_once_for_metrics_and_per_query(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import torch

    from hglv2.benchmark import run_suite
    from hglv2.train.trainer import Trainer

    losses = {"Contrastive": {"name": "Contrastive"}}
    suite = write_tiny_suite(tmp_path / "s.yaml", tmp_path / "data", losses=losses)
    embedded = []
    build = Trainer._build_model

    def count_eval_images(module, args, out):
        if not module.training:
            embedded.append(len(args[0]))

    def counting(self):
        build(self)
        self.model.register_forward_hook(count_eval_images)

    monkeypatch.setattr(Trainer, "_build_model", counting)
    threads = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: threads.append(torch.get_num_threads()) or fit(self))
    before = torch.get_num_threads()
    results = run_suite(suite, tmp_path / "out", progress=False, jobs=1)
    # a run in this process trains on one thread, as in a worker, and gives the caller's back
    assert threads == [1] and results["environment"]["threads_per_run"] == 1
    assert torch.get_num_threads() == before
    n_query = pq.read_metadata(tmp_path / "data" / "query.parquet").num_rows
    n_index = pq.read_metadata(tmp_path / "data" / "index.parquet").num_rows
    assert sum(embedded) == n_query + n_index  # the final evaluation only (eval_every 0)
    per_query = pq.read_table(tmp_path / "out" / "runs" / "Contrastive" / "seed0" / "per_query.parquet")
    assert per_query.num_rows == n_query


def test_learning_curve_plot_skips_undefined_values(tmp_path):
    """A metric undefined at some step (NaN, written as null: e.g. H-AP of a one-level test set)
    and a run whose loss was never logged leave gaps in the curves, not a crash."""
    from hglv2.benchmark import plot_learning_curve

    curve = [
        {"step": 0, "H-AP": None, "AP_level0": 0.5, "loss": None},
        {"step": 5, "H-AP": 0.4, "AP_level0": None, "loss": 2.0},
        {"step": 10, "H-AP": 0.5, "AP_level0": 0.6, "loss": 1.0},
    ]
    runs = [{"loss": "SupAP", "curve": curve}, {"loss": "SupHAP", "curve": [{"step": 0, "H-AP": None}]}]
    plot_learning_curve({"suite": "s", "runs": runs}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
