"""`hglv2 benchmark --tune N` end to end on the tiny suite: budget, validation split, resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from hglv2.cli import main
from tests.fixtures.training import write_tiny_suite

optuna = pytest.importorskip("optuna")


def _trials(out) -> dict[str, list]:
    storage = f"sqlite:///{out / 'tune' / 'optuna.sqlite3'}"
    return {
        s.study_name.rsplit("-", 1)[0]: optuna.load_study(study_name=s.study_name, storage=storage).trials
        for s in optuna.get_all_study_summaries(storage)
    }


def test_tune_end_to_end_and_resume(tmp_path, cli_runner):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", tmp_path / "data")
    out = tmp_path / "report"
    args = ["benchmark", suite, "--out", str(out), "--quiet", "--jobs", "1"]
    res = cli_runner.invoke(main, [*args, "--tune", "2"])
    assert res.exit_code == 0, res.output
    assert "s per trial" in res.output
    results = json.loads((out / "results.json").read_text())
    tuning = results["tuning"]
    assert tuning["trials"] == 2 and tuning["trials_run_now"] == 4 and tuning["seconds_per_trial"] > 0
    trials = _trials(out)
    assert sorted(trials) == ["Contrastive", "SupAP"]
    assert all(len(t) == 2 and all(x.state.name == "COMPLETE" for x in t) for t in trials.values())
    for run in results["runs"]:  # the final runs use the chosen settings
        best = tuning["best"][run["loss"]]["params"]
        assert run["loss_config"]["kwargs"] == {
            k.removeprefix("loss.kwargs."): v for k, v in best.items() if k.startswith("loss.kwargs.")
        }
        cfg = yaml.safe_load((out / run["run_dir"] / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == pytest.approx(best["optimizer.lr"])
    assert "## Tuned hyper-parameters" in (out / "report.md").read_text()

    # the validation split: class-disjoint, carved from the training landmarks, deterministic
    train = pq.read_table(tmp_path / "data" / "train.parquet").column("level0").to_numpy()
    fit = pq.read_table(out / "tune" / "data" / "train.parquet").column("level0").to_numpy()
    val = pq.read_table(out / "tune" / "data" / "val.parquet").column("level0").to_numpy()
    assert not set(fit) & set(val) and set(fit) | set(val) == set(train) and len(set(val)) == 2
    assert tuning["validation"] == {"classes": 2, "images": int(np.isin(train, val).sum())}

    # a rerun continues the studies: one more trial per loss for --tune 3, none for the same N
    res = cli_runner.invoke(main, [*args, "--tune", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["tuning"]["trials_run_now"] == 2
    assert {k: len(v) for k, v in _trials(out).items()} == {"Contrastive": 3, "SupAP": 3}
    res = cli_runner.invoke(main, [*args, "--tune", "3"])
    again = json.loads((out / "results.json").read_text())
    assert again["tuning"]["trials_run_now"] == 0 and all(r["reused"] for r in again["runs"])


def test_tune_without_optuna_names_the_extra(monkeypatch):
    import sys

    from hglv2.errors import InputError
    from hglv2.tune import _optuna

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ModuleNotFoundError
    with pytest.raises(InputError, match=r"pip install 'hglv2\[tune\]'"):
        _optuna()


def test_every_search_space_names_config_keys_and_loss_arguments():
    import inspect

    from hglv2.config import DEFAULTS
    from hglv2.losses.registry import SEARCH_SPACES, loss_factory

    for name, space in SEARCH_SPACES.items():
        params = inspect.signature(loss_factory(name)).parameters
        for key, r in space.items():
            assert 0 < r.low < r.high, (name, key)
            section, *rest = key.split(".")
            if key.startswith("loss.kwargs."):
                assert rest[1] in params, (name, key)
            else:
                assert rest[0] in DEFAULTS[section], (name, key)
