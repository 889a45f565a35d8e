"""The one config path of ``hglv2 train`` and ``hglv2 benchmark``: overrides, validation, digests,
and the compatibility of the names that moved when ``hglv2/train.py`` became a package."""

from __future__ import annotations

import copy

import pytest

from hglv2.errors import InputError
from hglv2.train.config import (
    DEFAULTS,
    apply_overrides,
    config_digest,
    load_config,
    parse_overrides,
    set_path,
)


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


def test_moved_names_are_still_importable_from_their_old_homes():
    import hglv2.dataset
    import hglv2.losses
    import hglv2.samplers
    import hglv2.train
    from hglv2.train import config, data, optim, trainer

    assert hglv2.train.ContrastiveLoss is hglv2.losses.ContrastiveLoss
    assert hglv2.train.contrastive_loss is hglv2.losses.contrastive_loss
    assert hglv2.train.build_loss is hglv2.losses.build_loss
    for name in ("load_config", "validate_config", "set_path", "config_digest", "config_names", "DEFAULTS"):
        assert getattr(hglv2.train, name) is getattr(config, name)
    for name in ("prepare_data", "SeededItems", "hash_seed"):
        assert getattr(hglv2.train, name) is getattr(data, name)
    assert hglv2.train.lr_factor is optim.lr_factor
    for name in ("Trainer", "train", "embed", "resolve_device", "seed_everything"):
        assert getattr(hglv2.train, name) is getattr(trainer, name)
    assert set(hglv2.train.__all__) <= set(dir(hglv2.train))
