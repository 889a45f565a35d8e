"""The one config path of ``hglv2 train`` and ``hglv2 benchmark``: overrides, validation, digests,
and one home for each name of the training package."""

from __future__ import annotations

import copy

import pytest

from hglv2.config import (
    DEFAULTS,
    apply_overrides,
    config_digest,
    load_config,
    parse_overrides,
    set_path,
)
from hglv2.errors import InputError


def test_parse_overrides_reads_yaml_values():
    got = parse_overrides(["train.steps=100", " loss.kwargs = {tau: 0.05}", "data.resize=null", "a=b=c"])
    assert got == {"train.steps": 100, "loss.kwargs": {"tau": 0.05}, "data.resize": None, "a": "b=c"}
    assert parse_overrides(["x=1", "x=2"]) == {"x": 2}
    for bad, message in (("train.steps", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE")):
        with pytest.raises(InputError, match=message):
            parse_overrides([bad])
    with pytest.raises(InputError, match="not valid YAML"):
        parse_overrides(["train.steps=[1, 2"])


def test_apply_overrides_sets_then_validates():
    cfg = load_config("synthetic")
    before = config_digest(cfg)
    out = apply_overrides(cfg, {"train.steps": 7, "loss.kwargs": {"tau": 0.05}}, "here")
    assert out is cfg and cfg["train"]["steps"] == 7 and cfg["loss"]["kwargs"] == {"tau": 0.05}
    assert config_digest(cfg) != before
    assert apply_overrides(copy.deepcopy(cfg), None) == cfg
    with pytest.raises(InputError, match="unknown key 'train.stepz'"):
        apply_overrides(load_config("synthetic"), {"train.stepz": 1})
    with pytest.raises(InputError, match=r"^suite: sampler.batch_size"):
        apply_overrides(load_config("synthetic"), {"sampler.batch_size": 1}, "suite")


def test_set_path_open_sections_accept_new_keys():
    cfg = load_config("synthetic")
    set_path(cfg, "loss.kwargs.tau", 0.5)
    assert cfg["loss"]["kwargs"]["tau"] == 0.5
    with pytest.raises(InputError, match="unknown key"):
        set_path(cfg, "model.no_such_key", 1)


def test_digest_depends_on_values_not_key_order():
    a = copy.deepcopy(DEFAULTS)
    b = dict(reversed(list(copy.deepcopy(DEFAULTS).items())))
    assert config_digest(a) == config_digest(b)
    b["seed"] = 1
    assert config_digest(a) != config_digest(b)


def test_training_names_have_one_home():
    import hglv2.train
    from hglv2.train import data, optim, trainer

    for name in ("prepare_data", "SeededItems", "hash_seed", "build_dataset", "build_batch_sampler"):
        assert getattr(hglv2.train, name) is getattr(data, name)
    assert hglv2.train.lr_factor is optim.lr_factor
    for name in ("Trainer", "train", "batch_gap", "seed_everything"):
        assert getattr(hglv2.train, name) is getattr(trainer, name)
    assert set(hglv2.train.__all__) <= set(dir(hglv2.train))
    # the config, the transforms and the device helpers live below training, not re-exported by it
    for name in ("load_config", "config_digest", "DEFAULTS", "build_transform", "resolve_device", "embed"):
        assert not hasattr(hglv2.train, name)
