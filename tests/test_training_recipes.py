"""The shipped recipes hold the authors' values (elias-ramzi/SupRank, file named per row), and the
trainer capabilities they need work: per-group learning rates, BatchNorm freezing, pooling choice,
LayerNorm with/without affine, crops and evaluation resizing, backbone-freeze warm-up, schedules,
SGD Nesterov, per-class cap, proxies only for trained landmarks, averaged test sets and the
decomposability gap."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from hglv2.config import config_names, load_config
from hglv2.errors import InputError
from hglv2.models import GeM, build_model
from hglv2.train import Trainer
from hglv2.train.data import build_batch_sampler
from hglv2.train.optim import build_scheduler, lr_factor, model_optimizer
from hglv2.train.trainer import batch_gap
from hglv2.transforms import build_transform
from tests.fixtures.training import tiny_synthetic_config

S = "suprank/config/"
HAPPIER = {"tau": 0.01, "rho": 100.0, "offset": 1.44, "delta": 0.05, "start": 0.5}
HAPPIER_INAT = {**HAPPIER, "offset": 1.0, "start": 0.0}
RRC = {"data.crop_scale": [0.16, 1.0], "data.crop_ratio": [0.75, 1.33], "data.image_size": 224}
RESNET_LN = {  # S/model/resnet_ln.yaml + suprank/models/retrieval_net.py (LayerNorm without affine)
    "model.backbone": "resnet50",
    "model.embedding_dim": 512,
    "model.pretrained": True,
    "model.pooling": "avg",
    "model.layernorm": True,
    "model.layernorm_affine": False,
    "model.freeze_batchnorm": True,
}

# config -> {dotted key: the authors' value}; the comments name their files
AUTHORS: dict[str, dict[str, object]] = {
    "h-gldv2": {
        **RRC,
        # S/dataset/gldv2_hier.yaml
        "data.resize": 224,
        "data.eval_resize": "square",
        "sampler.kind": "m_per_class",
        "sampler.batch_size": 256,
        "sampler.m": 4,
        "sampler.max_per_class": 8,
        # S/model/resnet_ln_gem.yaml
        **RESNET_LN,
        "model.pooling": "gem",
        "model.gem_p": 3.0,
        "model.gem_learnable": True,
        # S/optimizer/gldv2.yaml
        "optimizer.name": "adam",
        "optimizer.lr": 1e-4,
        "optimizer.head_lr": None,  # mult 1
        "optimizer.weight_decay": 1e-4,
        "schedule.kind": "cosine",
        "schedule.min_lr": 0.0,
        # S/loss/HAPPIER.yaml: proxies on the head's optimizer and scheduler
        "loss.name": "SupHAP",
        "loss.weight": 0.9,
        "loss.kwargs": {"relevance": "pop", "alpha": 1.0, **HAPPIER},
        "loss.decomposability.weight": 0.1,
        "loss.decomposability.lr": 1e-4,
        "loss.decomposability.weight_decay": 1e-4,
        "loss.decomposability.min_lr": 0.0,
        "loss.decomposability.kwargs": {"temperature": 0.05},
        # S/default.yaml
        "train.epochs": 100,
        "train.freeze_backbone_epochs": 0,
        "train.clip_grad_norm": None,
    },
    "sop": {
        **RRC,
        # S/dataset/sop.yaml
        "data.train_resize": 256,
        "data.resize": 256,
        "data.eval_resize": "square",
        "data.levels": ["level0", "level1"],
        "sampler.kind": "hierarchical",
        "sampler.batch_size": 256,
        "sampler.m": 4,
        "sampler.clusters_per_batch": 2,
        "sampler.batches_per_super_tuple": 5,
        "train.recall_at": [1, 10, 100, 1000],
        **RESNET_LN,
        # S/optimizer/sop.yaml
        "optimizer.name": "adam",
        "optimizer.lr": 5e-5,
        "optimizer.head_lr": 1e-4,
        "optimizer.weight_decay": 1e-4,
        "schedule.min_lr": 0.0,
        # S/loss/HAPPIER_SOP.yaml
        "loss.weight": 0.9,
        "loss.kwargs": {"relevance": "pop", "alpha": 1.0, **HAPPIER},
        "loss.decomposability.lr": 10.0,
        "loss.decomposability.weight_decay": 0.0,
        "loss.decomposability.min_lr": 0.1,
        # README.md (SOP command): max_iter=100 warmup_step=5
        "train.epochs": 100,
        "train.freeze_backbone_epochs": 5,
        "train.clip_grad_norm": None,
    },
}
for _name, _levels, _src in (("inat2018", 7, "inat_full"), ("inat-base", 2, "inat_base")):
    AUTHORS[_name] = {
        **RRC,
        # S/dataset/{inat_full,inat_base}.yaml
        "data.levels": [f"level{k}" for k in range(_levels)],
        "data.resize": 256,
        "data.eval_resize": "shorter",
        "sampler.kind": "m_per_class",
        "sampler.batch_size": 256,
        "sampler.m": 4,
        "train.recall_at": [1, 4, 16, 32],
        **RESNET_LN,
        # S/optimizer/inat.yaml
        "optimizer.lr": 1e-5,
        "optimizer.head_lr": 2e-5,
        "optimizer.weight_decay": 4e-4,
        "schedule.min_lr": 1e-6,
        # S/loss/HAPPIER_inat.yaml
        "loss.kwargs": {"relevance": "pop", "alpha": 1.0, **HAPPIER_INAT},
        "loss.decomposability.lr": 10.0,
        "loss.decomposability.weight_decay": 0.0,
        "loss.decomposability.min_lr": 0.1,
        # README.md (iNat commands): warmup_step=5
        "train.freeze_backbone_epochs": 5,
        "train.epochs": 100,
    }
for _name, _w in (("dyml-vehicle", 0.9), ("dyml-animal", 0.5)):
    AUTHORS[_name] = {
        **RRC,
        # S/dataset/dyml_{vehicle,animal}.yaml: three test sets, one label each
        "data.test_sets": [
            {"name": g, "query": f"query_{g}", "index": f"gallery_{g}", "levels": ["level0"]}
            for g in ("fine", "middle", "coarse")
        ],
        "data.resize": 256,
        "data.eval_resize": "shorter",
        "sampler.batch_size": 256,
        "sampler.m": 4,
        "train.recall_at": [1, 10, 20],  # + README.md recall_rate=[10,20]
        # S/model/dyml_resnet34.yaml
        "model.backbone": "resnet34",
        "model.pretrained": False,
        "model.pooling": "avg",
        "model.layernorm_affine": False,
        "model.freeze_batchnorm": False,
        # S/optimizer/dyml.yaml
        "optimizer.name": "sgd",
        "optimizer.lr": 0.1,
        "optimizer.head_lr": None,
        "optimizer.weight_decay": 1e-4,
        "optimizer.momentum": 0.9,
        "optimizer.nesterov": True,
        "schedule.min_lr": 1e-6,
        # S/loss/HAPPIER.yaml (vehicle), S/loss/HAPPIER_5.yaml (animal)
        "loss.weight": _w,
        "loss.decomposability.weight": round(1 - _w, 10),
        "loss.kwargs": {"relevance": "pop", "alpha": 1.0, **HAPPIER},
        "train.epochs": 100,
        "train.freeze_backbone_epochs": 0,
    }
AUTHORS["dyml-product"] = {
    **RRC,
    "data.resize": 256,  # S/dataset/dyml_product.yaml
    "data.levels": ["level0", "level1", "level2"],
    "sampler.batch_size": 256,
    "sampler.m": 4,
    # S/model/dyml_resnet34_product.yaml
    "model.backbone": "resnet34",
    "model.pretrained": True,
    "model.pooling": "avg",
    "model.freeze_batchnorm": True,
    # S/optimizer/dyml_product.yaml
    "optimizer.name": "sgd",
    "optimizer.lr": 0.01,
    "optimizer.head_lr": 0.02,
    "optimizer.weight_decay": 1e-4,
    "optimizer.momentum": 0.9,
    "optimizer.nesterov": True,
    "schedule.min_lr": 1e-5,
    # S/loss/HAPPIER_product.yaml; README.md max_iter=20 warmup_step=5
    "loss.weight": 0.9,
    "loss.decomposability.weight": 0.1,
    "train.epochs": 20,
    "train.freeze_backbone_epochs": 5,
    "train.recall_at": [1, 10, 20],
}
AUTHORS["cub"] = {
    **RRC,
    # S/dataset/cub.yaml
    "data.levels": ["level0", "level1", "level2"],
    "data.resize": 256,
    "data.eval_resize": "shorter",
    "sampler.batch_size": 256,
    "sampler.m": 4,
    "train.recall_at": [1, 2, 4, 8],
    # S/model/resnet_ln_max.yaml
    **RESNET_LN,
    "model.pooling": "max",
    # S/optimizer/cub.yaml
    "optimizer.name": "adam",
    "optimizer.lr": 1e-6,
    "optimizer.head_lr": 2e-6,
    "optimizer.weight_decay": 4e-4,
    "schedule.min_lr": 0.0,
    # S/loss/HAPPIER.yaml, proxies on the head's optimizer
    "loss.weight": 0.9,
    "loss.decomposability.lr": 2e-6,
    "loss.decomposability.weight_decay": 4e-4,
    "train.epochs": 100,
}


def _get(cfg, dotted):
    node = cfg
    for k in dotted.split("."):
        node = node[k]
    return node


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_shipped_recipe_holds_the_authors_values(name):
    cfg = load_config(name)
    wrong = {k: (_get(cfg, k), v) for k, v in AUTHORS[name].items() if _get(cfg, k) != v}
    assert not wrong, wrong
    assert cfg["data"]["augment"] is True and cfg["train"]["gap_batches"] > 0
    if cfg["loss"]["decomposability"] is not None:
        assert cfg["loss"]["decomposability"]["name"] == "NormalizedSoftmaxProxyLoss"


def test_every_paper_config_is_shipped_and_every_value_line_cites_a_source():
    from importlib.resources import files

    assert set(AUTHORS) | {"synthetic"} == set(config_names())
    for name in AUTHORS:
        text = (files("hglv2") / "configs" / f"{name}.yaml").read_text("utf-8")
        section = None
        for line in text.splitlines():
            if line and not line.startswith((" ", "#")):
                section = line.split(":")[0]
            cited = section in ("model", "optimizer", "schedule", "sampler")
            if cited and line.startswith("  ") and not line.strip().startswith("#") and line.strip():
                assert "#" in line, (name, line)


# ----------------------------------------------------------------------------------------------
# models


def _tiny(**kw) -> nn.Module:
    return build_model(backbone="tiny", pretrained=False, width=8, embedding_dim=4, **kw)


def test_pooling_choices_match_their_definitions():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 5)
    model = _tiny(pooling="avg")
    assert torch.allclose(model.pool(x).flatten(1), x.mean(dim=(2, 3)))
    model = _tiny(pooling="max")
    assert torch.allclose(model.pool(x).flatten(1), x.amax(dim=(2, 3)))
    gem = _tiny(pooling="gem", gem_p=3.0, gem_learnable=True).pool
    assert isinstance(gem, GeM) and gem.p.requires_grad
    assert torch.allclose(gem(x), x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)
    assert not _tiny(pooling="gem", gem_learnable=False).pool.p.requires_grad
    for pooling in ("avg", "max", "gem"):
        out = _tiny(pooling=pooling)(torch.rand(3, 3, 32, 32))
        assert out.shape == (3, 4) and torch.allclose(out.norm(dim=1), torch.ones(3))


def test_layernorm_with_and_without_affine():
    assert not list(_tiny(layernorm=True, layernorm_affine=False).norm.parameters())
    assert len(list(_tiny(layernorm=True, layernorm_affine=True).norm.parameters())) == 2
    assert isinstance(_tiny(layernorm=False).norm, nn.Identity)


def test_frozen_batchnorm_keeps_its_statistics_and_batch_independence():
    torch.manual_seed(0)
    frozen = _tiny(norm="batch", freeze_batchnorm=True).train()
    free = _tiny(norm="batch", freeze_batchnorm=False).train()
    before = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    x = torch.rand(4, 3, 32, 32)
    one = frozen(x[:1])
    both = frozen(x)
    assert torch.allclose(one, both[:1], atol=1e-6)  # no batch statistics used
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in before.items())
    free(x)
    assert any(not torch.equal(free.state_dict()[k], v) for k, v in before.items())
    bn = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(not m.training and m.weight.requires_grad for m in bn)


def test_head_and_backbone_parameters_split_the_model():
    model = _tiny(pooling="gem", gem_learnable=True)
    head, body = model.head_parameters(), model.backbone_parameters()
    assert {id(p) for p in head} | {id(p) for p in body} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in head} & {id(p) for p in body}
    assert any(p is model.pool.p for p in head)


@pytest.mark.parametrize("backbone", ["resnet34", "resnet101"])
def test_new_resnet_backbones_build_from_random_init(backbone):
    model = build_model(backbone=backbone, pretrained=False, embedding_dim=8, pooling="max")
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 8)


# ----------------------------------------------------------------------------------------------
# optimisation


def _cfg(**sections) -> dict:
    cfg = load_config("synthetic")
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


def test_per_group_learning_rates_and_sgd_nesterov():
    model = _tiny()
    opt = model_optimizer(
        _cfg(optimizer__lr=0.01, optimizer__head_lr=0.02, optimizer__weight_decay=1e-4), model
    )
    assert [g["name"] for g in opt.param_groups] == ["backbone", "head"]
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4]
    assert len(opt.param_groups[1]["params"]) == len(model.head_parameters())
    single = model_optimizer(_cfg(optimizer__lr=0.01), model)
    assert len(single.param_groups) == 1  # same settings: one group
    sgd = model_optimizer(_cfg(optimizer__name="sgd", optimizer__nesterov=True, optimizer__lr=0.1), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9


def test_schedules_absolute_floor_multistep_and_freeze_hold():
    model = _tiny()
    cfg = _cfg(optimizer__lr=1e-5, optimizer__head_lr=2e-5, schedule__min_lr=1e-6, schedule__warmup_steps=0)
    opt = model_optimizer(cfg, model)
    sch = build_scheduler(cfg, opt, total_steps=10, steps_per_epoch=2)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sch.step()
    lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0] == pytest.approx([1e-5, 2e-5])
    assert lrs[-1] == pytest.approx([1e-6, 1e-6])  # the authors' eta_min, absolute, for both groups
    # multistep: milestones in steps for lr_factor, in epochs in the config (2 steps per epoch here)
    f = [lr_factor(s, 20, 0, "multistep", milestones=[4, 8], gamma=0.1) for s in range(10)]
    assert f == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    cfg = _cfg(schedule__kind="multistep", schedule__milestones=[2, 4], schedule__warmup_steps=0)
    opt = model_optimizer(cfg, model)
    sch = build_scheduler(cfg, opt, total_steps=10, steps_per_epoch=2)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"] / cfg["optimizer"]["lr"])
        opt.step()
        sch.step()
    assert got == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    # backbone-freeze warm-up: the schedule holds for 4 steps, then runs over the remaining 6
    held = [lr_factor(s, 10, 0, "cosine", hold=4) for s in range(11)]
    assert held[:5] == [1.0] * 5 and held[10] == pytest.approx(0.0)
    assert held[7] == pytest.approx(lr_factor(3, 6, 0, "cosine"))


# ----------------------------------------------------------------------------------------------
# data


def test_transforms_crop_and_eval_resize_settings():
    """The recipe's crop and resize settings give torchvision's transforms pixel for pixel (the
    training randomness from a generator seeded s equals torchvision's after manual_seed(s))."""
    import torchvision.transforms as T
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8))

    def as_uint8(t):
        return T.Compose(t + [T.PILToTensor()])

    cfg = _cfg(data__image_size=224, data__augment=True, data__crop_scale=[0.16, 1.0], data__train_resize=256)
    tf = build_transform(cfg, train=True)
    assert (tf.train_resize, tf.scale, tf.ratio) == (256, (0.16, 1.0), (0.75, 4 / 3))
    ref = as_uint8(
        [
            T.Resize(256),
            T.RandomResizedCrop(224, scale=(0.16, 1.0), ratio=(0.75, 4 / 3)),
            T.RandomHorizontalFlip(),
        ]
    )
    for seed in range(5):
        torch.manual_seed(seed)
        expected = ref(img)
        assert torch.equal(tf(img, torch.Generator().manual_seed(seed)), expected)

    cfg["data"].update(resize=256, eval_resize="square")
    out = build_transform(cfg, train=False)(img)
    assert torch.equal(out, as_uint8([T.Resize((256, 256)), T.CenterCrop(224)])(img))
    cfg["data"]["eval_resize"] = "shorter"
    out = build_transform(cfg, train=False)(img)
    assert torch.equal(out, as_uint8([T.Resize(256), T.CenterCrop(224)])(img))
    cfg["data"].update(resize=224, eval_resize="square")
    assert build_transform(cfg, train=False)(img).shape == (3, 224, 224)


@pytest.mark.parametrize("kind", ["m_per_class", "hierarchical"])
def test_per_class_cap_per_epoch(kind):
    rng = np.random.default_rng(0)
    labels = np.stack([np.repeat(np.arange(40), 30), np.repeat(np.arange(40) % 4, 30)], axis=1)
    labels = labels[rng.permutation(len(labels))]
    cfg = _cfg(sampler__kind=kind, sampler__batch_size=16, sampler__m=4, sampler__max_per_class=8)
    sampler = build_batch_sampler(cfg, labels, seed=0)
    seen_epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        rows = np.concatenate(sampler.global_batches())
        per_class = {c: set(rows[labels[rows, 0] == c]) for c in range(40)}
        assert max(len(v) for v in per_class.values()) <= 8
        assert min(len(v) for v in per_class.values()) == 8  # every class still used
        seen_epochs.append(set(rows.tolist()))
    assert seen_epochs[0] != seen_epochs[1]  # a fresh subset each epoch


# ----------------------------------------------------------------------------------------------
# decomposability gap


def _ap_oracle(scores: np.ndarray, positives: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def _map_oracle(emb: np.ndarray, lab: np.ndarray) -> float:
    aps = []
    for q in range(len(emb)):
        others = np.arange(len(emb)) != q
        pos = lab[others] == lab[q]
        if pos.any():
            aps.append(_ap_oracle(emb[others] @ emb[q], pos))
    return float(np.mean(aps))


def test_batch_gap_matches_a_brute_force_oracle():
    rng = np.random.default_rng(3)
    for _ in range(5):
        emb = rng.normal(size=(24, 5))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        lab = np.stack([rng.integers(0, 4, 24), np.zeros(24, dtype=int)], axis=1)
        batches = [np.arange(0, 12), np.arange(12, 24)]
        got = batch_gap(emb, lab, batches)["AP_level0"]
        want_batch = np.mean([_map_oracle(emb[b], lab[b, 0]) for b in batches])
        want_whole = _map_oracle(emb, lab[:, 0])
        assert got["batch"] == pytest.approx(want_batch, abs=1e-6)
        assert got["whole"] == pytest.approx(want_whole, abs=1e-6)
        assert got["gap"] == pytest.approx(want_batch - want_whole, abs=1e-6)


def _tiny_run_config(root) -> dict:
    return tiny_synthetic_config(root, steps=5, log_every=1)


def test_gap_is_logged_per_epoch_and_changes_no_result(tmp_path):
    cfg = _tiny_run_config(tmp_path / "data")
    plain = Trainer(cfg, tmp_path / "plain", progress=False, resume=False)
    plain.fit()
    per_epoch = plain.batches_per_epoch
    gap_cfg = copy.deepcopy(cfg)
    gap_cfg["train"]["gap_batches"] = 2
    gap_cfg["train"]["steps"] = 5
    run = Trainer(gap_cfg, tmp_path / "gap", progress=False, resume=False)
    run.fit()
    recs = [json.loads(x) for x in (tmp_path / "gap" / "log.jsonl").read_text().splitlines()]
    gaps = [r for r in recs if "decomposability_gap" in r]
    assert len(gaps) == 5 // per_epoch and gaps
    for rec in gaps:
        g = rec["decomposability_gap"]
        assert g["batches"] == 2 and g["images"] <= 32
        for key in ("AP_level0", "H-AP"):
            assert g[key]["gap"] == pytest.approx(g[key]["batch"] - g[key]["whole"])
            assert 0 <= g[key]["whole"] <= 1 and 0 <= g[key]["batch"] <= 1
    for (k, a), (_, b) in zip(plain.model.state_dict().items(), run.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert plain.last_eval == run.last_eval


def test_freeze_warmup_trains_only_the_head_and_proxies_trained_landmarks(tmp_path):
    cfg = _tiny_run_config(tmp_path / "data")
    cfg["train"].update(steps=None, epochs=2, freeze_backbone_epochs=1)
    cfg["optimizer"]["head_lr"] = 0.01
    cfg["schedule"]["warmup_steps"] = 0
    cfg["loss"]["decomposability"] = {"name": "NormalizedSoftmaxProxyLoss", "weight": 0.1, "lr": 0.1}
    trainer = Trainer(cfg, tmp_path / "run", progress=False, resume=False)
    n_trained = len(np.unique(np.asarray(trainer.train_set.labels)[trainer.sampler.rows, 0]))
    assert trainer.dec.proxies.shape[0] == n_trained == len(trainer.class_ids)
    body0 = [p.detach().clone() for p in trainer.model.backbone_parameters()]
    head0 = [p.detach().clone() for p in trainer.model.head_parameters()]
    trainer.max_steps = trainer.batches_per_epoch  # the first epoch: backbone frozen
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(body0, trainer.model.backbone_parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head0, trainer.model.head_parameters(), strict=True))
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([cfg["optimizer"]["lr"], 0.01])  # schedule held during the freeze
    trainer.max_steps = None
    trainer.fit()  # the second epoch: the backbone learns
    assert not all(torch.equal(a, b) for a, b in zip(body0, trainer.model.backbone_parameters(), strict=True))


@pytest.mark.parametrize("grad_cache_chunk", [0, 8])
def test_freeze_warmup_skips_the_backbone_backward_with_the_same_updates(
    tmp_path, monkeypatch, grad_cache_chunk
):
    """During the warm-up the backbone's parameters require no gradient, so no backbone gradient is
    ever computed; the model after two epochs equals the one trained by computing and dropping
    those gradients (the behaviour under DDP)."""
    cfg = _tiny_run_config(tmp_path / "data")
    cfg["train"].update(steps=None, epochs=2, freeze_backbone_epochs=1, grad_cache_chunk=grad_cache_chunk)
    cfg["schedule"]["warmup_steps"] = 0

    def train(name, toggle):
        if not toggle:
            monkeypatch.setattr(Trainer, "_freeze_backbone", lambda self, frozen: None)
        trainer = Trainer(cfg, tmp_path / name, progress=False, resume=False)
        computed = []
        for i, p in enumerate(trainer.model.backbone_parameters()):
            p.register_hook(lambda g, i=i: computed.append((trainer.epoch, i)))
        trainer.fit()
        monkeypatch.undo()
        return trainer, computed

    fast, computed_fast = train("toggle", True)
    slow, computed_slow = train("drop", False)
    assert computed_fast and {e for e, _ in computed_fast} == {1}  # none in the frozen epoch 0
    assert {e for e, _ in computed_slow} == {0, 1}
    assert all(p.requires_grad for p in fast.model.backbone_parameters())  # restored afterwards
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_several_test_sets_are_averaged_like_the_authors_overall_accuracy(tmp_path):
    cfg = _tiny_run_config(tmp_path / "data")
    cfg["data"]["test_sets"] = [
        {"name": "fine", "query": "query", "index": "index", "levels": ["level0"]},
        {"name": "coarse", "query": "query", "index": "index", "levels": ["level1"]},
    ]
    trainer = Trainer(cfg, tmp_path / "run", progress=False, resume=False)
    res = trainer.evaluate()
    for key in ("AP_level0", "ASI", "R@1_level0"):
        assert res[key] == pytest.approx((res[f"fine/{key}"] + res[f"coarse/{key}"]) / 2)
    assert res["n_queries"] == res["fine/n_queries"] + res["coarse/n_queries"]
    assert res["fine/AP_level0"] != res["coarse/AP_level0"]  # each set scored on its own labels
    assert "AP_level1" not in res  # binary relevance per set: ASI is DyML's binary ASI
    cfg["data"]["test_sets"][1]["index"] = "gallery_coarse"
    with pytest.raises(InputError, match="gallery_coarse.parquet does not exist"):
        Trainer(cfg, tmp_path / "run2", progress=False, resume=False)


def test_hierarchical_sampler_with_the_authors_epoch_of_batches_per_cluster_pair():
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 60, 900)
    labels = np.stack([fine, fine % 5], axis=1)  # 60 classes in 5 clusters
    cfg = _cfg(sampler__kind="hierarchical", sampler__batch_size=32, sampler__m=4)
    cfg["sampler"]["batches_per_super_tuple"] = 3
    sampler = build_batch_sampler(cfg, labels, seed=0)
    batches = np.asarray(sampler.global_batches())
    assert batches.shape == (10 * 3, 32)  # C(5, 2) pairs x 3 batches
    pairs = []
    for b in batches:
        clusters, counts = np.unique(labels[b, 1], return_counts=True)
        assert len(clusters) == 2 and (counts == 16).all()
        classes, per = np.unique(labels[b, 0], return_counts=True)
        assert len(classes) == 8 and (per == 4).all()
        pairs.append(tuple(clusters))
    assert sorted(set(pairs)) == sorted({(a, b) for a in range(5) for b in range(a + 1, 5)})
    assert all(pairs.count(p) == 3 for p in set(pairs))
    again = build_batch_sampler(cfg, labels, seed=0).global_batches()
    assert again == batches.tolist()  # deterministic given (seed, epoch)


@pytest.mark.slow
def test_every_recipe_trains_end_to_end_on_a_tiny_stand_in(tmp_path):
    """Each recipe's settings together (pooling, frozen BN, head lr, SGD, warm-up, samplers, test
    sets, gap), with the data and backbone swapped for the embedded landmarks and the tiny net."""
    data = tmp_path / "data"
    for name in sorted(AUTHORS):
        cfg = load_config(name)
        tiny = _tiny_run_config(data)
        cfg["data"].update(
            {k: tiny["data"][k] for k in ("kind", "root", "synthetic", "image_root")},
            train_split="train",
            query_split="query",
            index_split="index",
            levels=["level0", "level1", "level2"][: max(2, min(3, len(cfg["data"]["levels"])))],
            image_size=32,
            resize=36,
            train_resize=36 if cfg["data"]["train_resize"] else None,
            num_workers=0,
        )
        if cfg["data"]["test_sets"]:
            cfg["data"]["test_sets"] = [
                {"name": "fine", "query": "query", "index": "index", "levels": ["level0"]},
                {"name": "coarse", "query": "query", "index": "index", "levels": ["level1"]},
            ]
        cfg["model"].update(backbone="tiny", pretrained=False, width=8, embedding_dim=16, norm="batch")
        cfg["sampler"].update(batch_size=16, m=4)
        cfg["sampler"]["max_per_class"] = cfg["sampler"]["max_per_class"] and 4
        cfg["train"].update(steps=3, eval_every=0, eval_batch_size=64, amp=False, gap_batches=1)
        cfg["train"]["freeze_backbone_epochs"] = min(cfg["train"]["freeze_backbone_epochs"], 1)
        cfg["train"]["recall_at"] = [1, 2]
        trainer = Trainer(cfg, tmp_path / name, progress=False, resume=False)
        metrics = trainer.fit()
        assert trainer.step == 3 and np.isfinite(metrics["AP_level0"]), name
        assert all(np.isfinite(r["loss"]) for r in trainer.history if "loss" in r), name
