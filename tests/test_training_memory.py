"""The memory bank (XBM) in training, the baselines and gradient caching inside the trainer."""

from __future__ import annotations

import copy

import pytest
import torch

from hglv2.config import load_config
from hglv2.errors import InputError
from hglv2.losses import build_loss
from hglv2.train import Trainer
from hglv2.train.memory import MemoryBank, build_memory_bank
from tests.test_training_train import _batch, assert_ddp_matches_one_process, sgd, tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_mem")


def test_memory_bank_formula_with_weights():
    crit = build_loss("pml.Triplet", {})
    bank = MemoryBank(size=10, embedding_dim=4, label_columns=2, weight=3.0, batch_weight=1.0, start_step=1)
    g = torch.Generator().manual_seed(0)
    seen_e, seen_l = [], []
    for step in range(3):
        e = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
        y = torch.randint(0, 3, (6, 2), generator=g)
        seen_e.append(e)
        seen_l.append(y)
        mem_e, mem_l = torch.cat(seen_e)[-10:], torch.cat(seen_l)[-10:]  # FIFO, enqueued first
        value, logs = bank.loss(crit, e, y, epoch=0, step=step)
        batch = crit(e, y)
        if step == 0:  # not active yet: the batch loss alone (the memory still fills)
            assert float(value) == float(batch) and "memory_loss" not in logs
        else:
            expected = (1.0 * batch + 3.0 * crit(e, y, ref_embeddings=mem_e, ref_labels=mem_l)) / 4.0
            assert float(value) == pytest.approx(float(expected), rel=1e-6)
        assert len(bank.memory) == min(6 * (step + 1), 10)


def test_memory_config_is_validated(data_root):
    cfg = load_config("synthetic")
    for bad, match in (
        ({"size": 0}, "size"),
        ({"size": 8, "sizes": 1}, "unknown key"),
        ({"size": 8, "weight": -1}, "weight"),
        ({"size": 8, "start_epoch": 1.5}, "start_epoch"),
        ({"size": 8, "weight": 0, "batch_weight": 0}, "> 0"),
        ("big", "mapping"),
    ):
        c = copy.deepcopy(cfg)
        c["loss"]["memory"] = bad
        with pytest.raises(InputError, match=match):
            load_config(c)
    with pytest.raises(InputError, match="takes no reference set"):
        build_memory_bank({"size": 8}, build_loss("pml.FastAP", {}), 4, 1)
    c = copy.deepcopy(cfg)
    c["train"]["grad_cache_chunk"] = -1
    with pytest.raises(InputError, match="grad_cache_chunk"):
        load_config(c)


def test_trainer_memory_loss_equals_the_manual_computation(data_root, tmp_path):
    cfg = tiny_config(data_root)
    cfg["loss"].update(name="SupAP", memory={"size": 24, "start_step": 1, "weight": 1.0})
    cfg["schedule"]["warmup_steps"] = 0
    trainer = Trainer(cfg, tmp_path, progress=False, resume=False)
    assert trainer.memory is not None
    crit = build_loss("SupAP", {})
    mem_e, mem_l = [], []
    for k in range(3):
        images, labels = _batch(trainer, k % 2)  # two batches per epoch here
        with torch.no_grad():
            emb = trainer.model(images)
        mem_e.append(emb)
        mem_l.append(labels)
        ref_e, ref_l = torch.cat(mem_e)[-24:], torch.cat(mem_l)[-24:]
        batch = crit(emb, labels)
        expected = (
            batch if k == 0 else (batch + crit(emb, labels, ref_embeddings=ref_e, ref_labels=ref_l)) / 2
        )
        trainer.step = k
        out = trainer.train_step(images, labels)
        assert out["loss"] == pytest.approx(float(expected), rel=1e-5)
        assert ("memory_loss" in out) == (k > 0)
    state = trainer.state_dict()
    assert int(state["memory"]["memory.count"]) == 24


@pytest.mark.parametrize("loss", ["SupHAP", "pml.ArcFace"])
def test_trainer_grad_cache_equals_the_direct_step(data_root, tmp_path, loss):
    cfg = tiny_config(data_root)
    cfg["loss"]["name"] = loss
    cfg["schedule"]["warmup_steps"] = 0
    direct = Trainer(cfg, tmp_path / "direct", progress=False, resume=False)
    cached_cfg = copy.deepcopy(cfg)
    cached_cfg["train"]["grad_cache_chunk"] = 5  # 16 images: chunks of 5, 5, 5, 1
    cached = Trainer(cached_cfg, tmp_path / "cached", progress=False, resume=False)
    cached.model.load_state_dict(direct.model.state_dict())
    cached.criterion.load_state_dict(direct.criterion.state_dict())
    for k in range(2):
        images, labels = _batch(direct, k)
        a = direct.train_step(images, labels)
        b = cached.train_step(images, labels)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for (name, p), q in zip(
        direct.model.state_dict().items(), cached.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    if loss == "pml.ArcFace":  # the proxies have their own optimizer and do learn
        assert direct.crit_optimizer is not None
        torch.testing.assert_close(direct.criterion.loss.W, cached.criterion.loss.W, rtol=1e-4, atol=1e-5)
        init = Trainer(cfg, tmp_path / "init", progress=False, resume=False).criterion.loss.W
        assert not torch.equal(init, direct.criterion.loss.W)


@pytest.mark.slow
def test_two_gloo_processes_with_memory_and_grad_cache_equal_one_process(data_root, tmp_path, gloo_pool):
    """DDP + memory bank (global batches enqueued) + gradient caching (no_sync re-forwards)."""
    cfg = sgd(tiny_config(data_root, steps=3, grad_cache_chunk=4))
    cfg["loss"].update(name="SupHAP", memory={"size": 24, "start_step": 1})
    assert_ddp_matches_one_process(cfg, tmp_path, gloo_pool)
