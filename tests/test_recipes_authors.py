"""The paper recipes against the authors' code (elias-ramzi/SupRank), through expected outputs
recorded once from their code (tests/fixtures/suprank/, README.md there): samplers, decoding and
resizing, optimizer groups and schedules, the model's state-dict layout and embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hglv2.samplers import (
    HierarchicalBatchSampler,
    MPerClassBatchSampler,
    super_tuple_batches,
    whole_group_batches,
)

FIX = Path(__file__).parent / "fixtures" / "suprank"


def _load(name: str) -> dict:
    return json.loads((FIX / name).read_text("utf-8"))


@pytest.mark.parametrize("case", range(4))
def test_m_per_class_epochs_equal_the_authors(case):
    fx = _load("samplers.json")["m_per_class"]
    labels = np.array(fx["labels"])
    c = fx["cases"][case]
    rs = np.random.RandomState(c["seed"])  # their sampler ran after np.random.seed(seed)
    for expected in c["epochs"]:  # epoch 0 (constructor), epoch 1 (set_epoch) on the same stream
        got = whole_group_batches(labels[:, 0], c["m"], c["batch_size"] // c["m"], rs, c["reduce_per_class"])
        assert got.tolist() == expected


def test_m_per_class_sampler_default_is_the_authors_epoch():
    fx = _load("samplers.json")["m_per_class"]
    labels = np.array(fx["labels"])
    counts = np.bincount(labels[:, 0])
    for c in fx["cases"]:
        m, bs, cap = c["m"], c["batch_size"], c["reduce_per_class"]
        s = MPerClassBatchSampler(labels, m=m, batch_size=bs, seed=3, max_per_class=cap)
        for epoch in range(2):
            s.set_epoch(epoch)
            batches = list(s)
            groups = np.minimum(counts, cap or counts.max()) // m
            assert len(batches) <= groups.sum() // (bs // m)
            for b in batches:
                per = np.bincount(labels[b, 0])
                assert len(b) == bs and set(per[per > 0].tolist()) == {m}
            drawn = labels[np.array(batches, dtype=np.int64).ravel(), 0]
            assert not np.isin(drawn, np.flatnonzero(counts < m)).any()  # small classes: never
        # the top-up deviation draws every image, hence more batches than the authors' epochs
        if cap is None:
            top = MPerClassBatchSampler(labels, m=m, batch_size=bs, seed=3, top_up=True)
            assert len(top) > max(len(e) for e in c["epochs"])
            assert set(np.concatenate(list(top)).tolist()) == set(range(len(labels)))


@pytest.mark.parametrize("case", range(2))
def test_hierarchical_epochs_equal_the_authors(case):
    fx = _load("samplers.json")["hierarchical"]
    labels = np.array(fx["labels"])
    c = fx["cases"][case]
    s = HierarchicalBatchSampler(
        labels,
        m=c["m"],
        batch_size=c["batch_size"],
        clusters_per_batch=c["super_classes_per_batch"],
        batches_per_super_tuple=c["batches_per_super_tuple"],
    )
    rs = np.random.RandomState(c["seed"])
    per_slot = c["batch_size"] // (c["super_classes_per_batch"] * c["m"])
    for expected in c["epochs"]:
        got = super_tuple_batches(
            s.class_of_row,
            s.cluster_of_class,
            c["m"],
            per_slot,
            c["super_classes_per_batch"],
            c["batches_per_super_tuple"],
            rs,
        )
        assert s.rows[got].tolist() == expected


# ---- the authors' checkpoints ------------------------------------------------------------------


def _rule(key: str, shape: list[int], integer: bool):
    """The fixture's weights (tests/fixtures/suprank/README.md)."""
    import zlib

    import torch

    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if integer:
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith(".p"):
        return torch.full(shape, 2.5)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / int(np.prod(shape[1:])) ** 0.5
    return torch.randn(shape, generator=g) * 0.1


def _their_checkpoint(path: Path, net_state: dict, monkeypatch) -> None:
    """A file in the layout of suprank/engine/checkpoint.py, with an object of a package that is
    not installed (their omegaconf config) and numpy's generator state around the weights."""
    import random
    import sys
    import types

    import torch

    mod = types.ModuleType("omegaconf_like_for_test")

    class DictConfig:  # stands for omegaconf's: pickled by reference to its module
        def __init__(self, content):
            self._content = content

    DictConfig.__module__ = mod.__name__
    DictConfig.__qualname__ = "DictConfig"
    mod.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    torch.save(
        {
            "net_state": {f"module.{k}": v for k, v in net_state.items()},  # saved under DDP
            "optimizer_state": {"backbone": {}, "head": {}},
            "scheduler": {},
            "criterion_state": [{}],
            "scaler_state": {},
            "epoch": 100,
            "config": DictConfig({"max_iter": 100}),
            "command": "python suprank/run.py",
            "metrics": None,
            "RANDOM_STATE": random.getstate(),
            "NP_STATE": np.random.get_state(),
            "TORCH_STATE": torch.random.get_rng_state(),
            "TORCH_CUDA_STATE": [],
        },
        path,
    )
    monkeypatch.delitem(sys.modules, mod.__name__)  # reading must not need it


def _recipe(tmp_path: Path, pooling: str) -> Path:
    import yaml

    from hglv2.config import load_config

    cfg = load_config("h-gldv2")
    cfg["model"].update(backbone="resnet18", embedding_dim=32, pooling=pooling, pretrained=False)
    path = tmp_path / f"recipe-{pooling}.yaml"
    path.write_text(yaml.safe_dump({"name": "h-gldv2", "model": cfg["model"]}), "utf-8")
    return path


@pytest.mark.parametrize(("name", "pooling"), [("resnet18_gem", "gem"), ("resnet18_avg", "avg")])
def test_authors_checkpoint_gives_their_embeddings(tmp_path, monkeypatch, name, pooling):
    import torch

    from hglv2.evaluation.suprank import load_suprank_model

    fx = _load("model.json")
    m = fx["models"][name]
    state = {}
    for key, shape in zip(m["keys"], m["shapes"], strict=True):
        canonical = key.replace("head.0.", "pooling.").replace("head.3.", "fc.")
        state[key] = _rule(canonical, shape, key.endswith("num_batches_tracked"))
    ckpt = tmp_path / "epoch_100.ckpt"
    _their_checkpoint(ckpt, state, monkeypatch)
    model, cfg = load_suprank_model(ckpt, _recipe(tmp_path, pooling))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = model(x).numpy()
    np.testing.assert_allclose(emb, np.array(m["embeddings"]), rtol=0, atol=2e-6)
    # their optimizer groups are ours: backbone = net.backbone, head = pooling + fc
    ours_head = {n for n, p in model.named_parameters() if any(p is q for q in model.head_parameters())}
    theirs_head = {k.replace("head.0.", "pool.").replace("head.3.", "proj.") for k in m["head_params"]}
    assert ours_head == theirs_head
    assert {n for n, _ in model.named_parameters()} - ours_head == set(m["backbone_params"])


# ---- optimizer groups and learning-rate schedules ----------------------------------------------


def _recipe_cfg(name: str) -> dict:
    from hglv2.benchmark import suite_runs
    from hglv2.config import load_config

    recipe, _, label = name.partition("/")
    cfg = load_config(recipe)
    if label:
        cfg = next(run for lab, _, run in suite_runs(cfg, losses=[label]) if lab == label)
    cfg["model"].update(backbone="resnet18", pretrained=False)  # same groups, faster
    return cfg


def _lr_per_epoch(cfg: dict, optimizer, min_lr=None) -> list[list[float]]:
    """The learning rate of each group during each epoch, stepped as the trainer does."""
    from hglv2.train.optim import build_scheduler, steps_per_epoch_end

    steps_per_epoch = 7
    epochs = cfg["train"]["epochs"]
    sch = build_scheduler(cfg, optimizer, epochs * steps_per_epoch, steps_per_epoch, min_lr)
    out = []
    for epoch in range(1, epochs + 1):
        out.append([g["lr"] for g in optimizer.param_groups])
        for _ in range(steps_per_epoch):
            optimizer.step()
            if cfg["schedule"]["interval"] == "step":
                sch.step()
        if steps_per_epoch_end(cfg, epoch):
            sch.step()
    return out


@pytest.mark.parametrize("name", sorted(_load("schedules.json")["recipes"]))
def test_optimizer_groups_and_schedules_equal_the_authors(name):
    import torch

    from hglv2.models import build_model
    from hglv2.train.optim import decomposability_optimizer, model_optimizer

    theirs = _load("schedules.json")["recipes"][name]
    cfg = _recipe_cfg(name)
    assert cfg["train"]["epochs"] == theirs["max_iter"]
    assert cfg["train"]["freeze_backbone_epochs"] == (theirs["warmup_step"] or 0)
    model = build_model(**cfg["model"])
    opt = model_optimizer(cfg, model)
    lrs = np.array(_lr_per_epoch(cfg, opt))
    head_ids = {id(p) for p in model.head_parameters()}
    groups = theirs["groups"]
    for i, g in enumerate(opt.param_groups):
        in_head = {id(p) in head_ids for p in g["params"]}
        if "net" in groups:  # one optimizer for the whole net
            expected = [groups["net"]]
        elif in_head == {True}:
            expected = [groups["head"]]
        elif in_head == {False}:
            expected = [groups["backbone"]]
        else:  # one group for both: their two groups must agree
            expected = [groups["backbone"], groups["head"]]
        for e in expected:
            assert g["weight_decay"] == e["weight_decay"]
            np.testing.assert_allclose(lrs[:, i], e["lr_per_epoch"], rtol=1e-9, atol=1e-15)
    dec = decomposability_optimizer(cfg, torch.nn.Linear(2, 2))
    dc = cfg["loss"]["decomposability"]
    lrs = np.array(_lr_per_epoch(cfg, dec, dc.get("min_lr")))
    assert dec.param_groups[0]["weight_decay"] == groups["proxies"]["weight_decay"]
    np.testing.assert_allclose(lrs[:, 0], groups["proxies"]["lr_per_epoch"], rtol=1e-9, atol=1e-15)


# ---- dropping rows with an unknown hierarchy ---------------------------------------------------


@pytest.mark.parametrize("kind", ["m_per_class", "hierarchical"])
def test_training_drops_only_rows_whose_cluster_is_unknown(kind):
    from hglv2.config import load_config
    from hglv2.train.data import build_batch_sampler

    cfg = load_config("synthetic")
    cfg["sampler"].update(kind=kind, m=2, batch_size=8, clusters_per_batch=2)
    cls = np.repeat(np.arange(24), 4)
    labels = np.stack([cls, cls % 4, cls % 2], axis=1)
    labels[cls == 5, 1] = -1  # cluster unknown: dropped (their remove_nan)
    labels[cls == 6, 2] = -1  # only the top level unknown: kept, as theirs
    s = build_batch_sampler(cfg, labels, seed=0)
    kept = set(np.asarray(s.rows).tolist())
    assert not kept & set(np.flatnonzero(cls == 5).tolist())
    assert set(np.flatnonzero(cls == 6).tolist()) <= kept
    assert len(kept) == len(cls) - 4


# ---- decoding and resizing ---------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(_load("decode.json")["outputs"]))
def test_decoded_pixels_equal_the_authors(key):
    import hashlib

    import torch
    from PIL import Image

    from hglv2.config import load_config
    from hglv2.transforms import build_transform

    expected = _load("decode.json")["outputs"][key]
    recipe, mode = key.split("/")
    cfg = load_config(recipe)
    assert cfg["data"]["decode"] == "full"
    tf = build_transform(cfg, train=mode == "train")
    gen = None if expected["seed"] is None else torch.Generator().manual_seed(expected["seed"])
    with Image.open(FIX / "photo.jpg") as img:  # opened, not decoded: as the dataset passes it
        out = tf(img, gen).numpy()
    assert list(out.shape) == expected["shape"]
    assert out.reshape(3, -1).sum(1).tolist() == expected["sum_per_channel"]
    assert hashlib.sha256(out.tobytes()).hexdigest() == expected["sha256"]
    # the opt-in draft decoding gives other pixels where it applies (the region to resize is at
    # least twice the output: h-gldv2's square 224 evaluation of this 640 x 480 photo)
    cfg["data"]["decode"] = "draft"
    gen = None if expected["seed"] is None else torch.Generator().manual_seed(expected["seed"])
    with Image.open(FIX / "photo.jpg") as img:
        draft = build_transform(cfg, train=mode == "train")(img, gen).numpy()
    if key == "h-gldv2/eval":
        assert np.abs(draft.astype(int) - out).max() > 0


def _to_their_layout(ours: dict) -> dict:
    """Our EmbeddingModel state dict in the key layout of their RetrievalNet (saved under DDP)."""
    theirs = {}
    for key, value in ours.items():
        if key == "pool.p":
            theirs["pooling.p"] = theirs["head.0.p"] = value.reshape(1)
        elif key.startswith("proj."):
            theirs["fc." + key[5:]] = theirs["head.3." + key[5:]] = value
        elif key.startswith("norm."):
            theirs["standardize." + key[5:]] = theirs["head.2." + key[5:]] = value
        else:
            theirs[key] = value
    return theirs


def test_authors_checkpoint_evaluates_through_the_cli(tmp_path, monkeypatch):
    import torch
    import yaml
    from click.testing import CliRunner

    from hglv2.cli import main
    from hglv2.evaluation import embed_images
    from hglv2.models import build_model
    from hglv2.train import build_dataset
    from hglv2.train.data import prepare_data
    from tests.fixtures.training import tiny_synthetic_config

    cfg = tiny_synthetic_config(tmp_path / "data", steps=1)
    cfg["model"] = {
        **cfg["model"],
        "backbone": "resnet18",
        "pretrained": False,
        "embedding_dim": 32,
        "pooling": "gem",
        "gem_learnable": True,
        "layernorm": True,
        "layernorm_affine": False,
        "freeze_batchnorm": True,
    }
    data = prepare_data(cfg)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg), "utf-8")
    torch.manual_seed(3)
    ours = build_model(**cfg["model"]).eval()
    with torch.no_grad():  # random BatchNorm statistics too, so that every tensor counts
        for name, buf in ours.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    ckpt = tmp_path / "epoch_100.ckpt"
    _their_checkpoint(ckpt, _to_their_layout(ours.state_dict()), monkeypatch)
    out = tmp_path / "eval"
    res = CliRunner().invoke(
        main,
        ["evaluate", "--checkpoint", str(ckpt), "--from", "suprank", "--recipe", str(recipe)]
        + [
            "--data",
            str(data),
            "--out",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
            "--embed-device",
            "cpu",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    q = np.load(out / "query_embeddings.npy")
    qd = build_dataset(cfg, data, "query", train=False)
    qe = embed_images(ours, qd, device="cpu", amp=False, progress=False)
    np.testing.assert_allclose(q, qe, rtol=0, atol=1e-6)
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert 0.0 <= results["H-AP"] <= 1.0
    # a checkpoint that does not fit the recipe's model, and a missing --recipe: one-line errors
    res = CliRunner().invoke(
        main, ["evaluate", "--checkpoint", str(ckpt), "--from", "suprank", "--data", str(data)]
    )
    assert res.exit_code == 2 and "--recipe" in res.output
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--from",
            "suprank",
            "--recipe",
            "h-gldv2",
            "--data",
            str(data),
        ],
    )
    assert res.exit_code == 2 and "does not fit the model of recipe 'h-gldv2'" in res.output
