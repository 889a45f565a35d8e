"""Every bad config value is one ``Error:`` line naming the key, exit 2, before any work starts
(issue 12, items 7, 8 and 10 as they concern config keys)."""

from __future__ import annotations

import copy

import pytest

from hglv2.config import (
    DEFAULTS,
    RESULT_NEUTRAL,
    config_digest,
    config_errors,
    load_config,
    parse_overrides,
)
from hglv2.errors import InputError
from tests.fixtures.training import tiny_synthetic_config

# (--set KEY=VALUE, the key the message must name); each was a traceback or silently accepted
BAD_VALUES = [
    ("train.eval_batch_size=0", "train.eval_batch_size"),  # crashed after training
    ("train.eval_batch_size=-4", "train.eval_batch_size"),
    ("train.recall_at=[0]", "train.recall_at"),
    ("train.recall_at=[]", "train.recall_at"),
    ("model.width=-3", "model.width"),
    ("optimizer.betas=[2, 3]", "optimizer.betas"),
    ("optimizer.betas=0.9", "optimizer.betas"),
    ("seed=-1", "seed"),
    ("seed=1.5", "seed"),
    ("data.resize=-1", "data.resize"),
    ("schedule.min_lr_ratio=-5", "schedule.min_lr_ratio"),  # trained by gradient ascent
    ("name=../../escape", "name"),  # wrote outside runs/
    ("name=/tmp/abs", "name"),
    ("data.crop_scale=[0.9, 0.1]", "data.crop_scale"),
    ("model.pooling=median", "model.pooling"),
    ("schedule.milestones=[5, 3]", "schedule.milestones"),
    ("optimizer.head_lr=-1", "optimizer.head_lr"),
    ("sampler.max_per_class=0", "sampler.max_per_class"),
    ("train.gap_batches=-1", "train.gap_batches"),
    ("data.augment=yes please", "data.augment"),
    ("optimizer.lr=nan", "optimizer.lr"),
    ("data.synthetic.train_fraction=1.5", "data.synthetic.train_fraction"),
    ("data.synthetic.jpeg_quality=0", "data.synthetic.jpeg_quality"),
    ("sampler.batches_per_super_tuple=5", "sampler.batches_per_super_tuple"),  # m_per_class
    ("train.freeze_backbone_epochs=-1", "train.freeze_backbone_epochs"),
]


@pytest.mark.parametrize("pair,key", BAD_VALUES, ids=[p for p, _ in BAD_VALUES])
def test_each_bad_value_is_one_message_naming_the_key(pair, key):
    cfg = load_config("synthetic")
    from hglv2.config import apply_overrides

    with pytest.raises(InputError) as err:
        apply_overrides(cfg, parse_overrides([pair]))
    message = str(err.value)
    assert "\n" not in message
    assert f"{key} " in message, message


def test_all_bad_keys_are_reported_together():
    cfg = copy.deepcopy(load_config("synthetic"))
    cfg["seed"] = -1
    cfg["model"]["width"] = -3
    cfg["train"]["eval_batch_size"] = 0
    errors = config_errors(cfg)
    assert len(errors) == 3
    assert [e.split()[0] for e in errors] == ["seed", "model.width", "train.eval_batch_size"]


def test_cli_bad_values_exit_2_with_one_error_line_and_write_nothing(tmp_path, cli_runner, monkeypatch):
    from hglv2.cli import main

    monkeypatch.chdir(tmp_path)
    for pair, key in BAD_VALUES[:12]:
        res = cli_runner.invoke(main, ["train", "synthetic", "--quiet", "--set", pair])
        assert res.exit_code == 2, (pair, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and key in lines[0], (pair, res.stderr)
        assert res.exception is None or isinstance(res.exception, SystemExit)
        assert list(tmp_path.iterdir()) == [], pair  # nothing written (no data, no run folder)


def test_non_utf8_yaml_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_config(bad)


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: {lr: 1e-3, weight_decay: 4E-4}\nschedule: {min_lr: 1.0e-6}\n")
    cfg = load_config(path)
    assert cfg["optimizer"]["lr"] == 1e-3 and cfg["optimizer"]["weight_decay"] == 4e-4
    assert cfg["schedule"]["min_lr"] == 1e-6
    assert parse_overrides(["optimizer.lr=5e-5"]) == {"optimizer.lr": 5e-5}
    assert parse_overrides(["data.root=1e-3x"]) == {"data.root": "1e-3x"}


def test_shipped_digest_is_unchanged_by_the_keys_added_after_v01():
    # digest of the synthetic config as v0.1 computed it (sha256 of the whole resolved config)
    assert config_digest(load_config("synthetic")) == "47b52940c0696c36"
    cfg = load_config("synthetic")
    cfg["model"]["pooling"] = "max"  # a new key away from its default is part of the identity
    assert config_digest(cfg) != "47b52940c0696c36"


@pytest.mark.parametrize("key", RESULT_NEUTRAL)
def test_result_neutral_settings_are_not_part_of_the_identity(key):
    cfg = load_config("synthetic")
    before = config_digest(cfg)
    section, name = key.split(".")
    cfg[section][name] = DEFAULTS[section][name] + 3
    assert config_digest(cfg) == before


def test_resume_after_changing_num_workers_only(tmp_path):
    from hglv2.train import Trainer

    cfg = tiny_synthetic_config(tmp_path / "data", steps=4, checkpoint_every=1)
    part = Trainer(cfg, tmp_path / "run", progress=False, max_steps=2)
    part.fit()
    cfg2 = copy.deepcopy(cfg)
    cfg2["data"]["num_workers"] = 1
    cfg2["train"]["log_every"] = 2
    resumed = Trainer(cfg2, tmp_path / "run", progress=False)
    resumed.fit()
    assert resumed.step == 4
    cfg3 = copy.deepcopy(cfg)
    cfg3["optimizer"]["lr"] = 0.5
    with pytest.raises(InputError, match="different config"):
        Trainer(cfg3, tmp_path / "run", progress=False).fit()
