"""Training loop: a step learns, checkpoints resume exactly, 2-process gloo == 1 process (the
all-reduced gradients and the weights after SGD), configs."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from hglv2.config import config_names, load_config
from hglv2.errors import InputError
from hglv2.losses import ContrastiveLoss, contrastive_loss
from hglv2.train import Trainer, lr_factor
from hglv2.transforms import to_model_input
from tests.fixtures.training import tiny_synthetic_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def tiny_config(root, **train) -> dict:
    """The shipped synthetic config shrunk to seconds: 32 px, 8 train landmarks, tiny net."""
    base = {"steps": 6, "log_every": 1, "checkpoint_every": 0}
    return tiny_synthetic_config(root, warmup_steps=2, **{**base, **train})


def _batch(trainer, k=0):
    keys = trainer._epoch_batches(0, 0)[1][k]
    items = [trainer.train_set[i] for i, _ in keys]
    images = to_model_input(torch.stack([it["image"] for it in items]), "cpu")  # the model's input
    return images, torch.stack([it["labels"] for it in items])


@pytest.mark.parametrize("loss", ["SupAP", "SupHAP", "Contrastive"])
def test_one_step_changes_weights_and_lowers_the_loss(data_root, tmp_path, loss):
    cfg = tiny_config(data_root)
    cfg["loss"]["name"] = loss
    cfg["schedule"]["warmup_steps"] = 0
    trainer = Trainer(cfg, tmp_path, progress=False, resume=False)
    images, labels = _batch(trainer)
    assert labels.shape == (16, 3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def current_loss():
        with torch.no_grad():
            return float(trainer.criterion(trainer.model(to_model_input(images, "cpu")), labels))

    l0 = current_loss()
    out = trainer.train_step(images, labels)
    assert out["loss"] == pytest.approx(l0, rel=1e-5)
    l1 = current_loss()
    assert l1 < l0
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "proj.weight" in changed and any(k.startswith("backbone.") for k in changed)


def _resume_config(root):
    cfg = tiny_config(root, eval_every=3, checkpoint_every=2, clip_grad_norm=1.0)
    cfg["data"]["augment"] = True  # random crops/flips: seeded per image, so resume stays exact
    cfg["loss"].update(
        name="SupHAP",
        weight=0.9,
        decomposability={"name": "NormalizedSoftmaxProxyLoss", "weight": 0.1, "lr": 0.05},
    )
    return cfg


def test_resume_is_bit_identical(data_root, tmp_path):
    cfg = _resume_config(data_root)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit()

    part = Trainer(cfg, tmp_path / "part", progress=False, max_steps=3)  # stops mid-epoch 1
    part.fit()
    assert part.step == 3 and part.batch_in_epoch == 1
    state = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and isinstance(state["rng"]["python"], list)
    assert not (tmp_path / "part" / "model.pt").exists()
    # a stray record after the checkpoint (as after a crash) is dropped on resume
    with open(tmp_path / "part" / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")

    resumed = Trainer(cfg, tmp_path / "part", progress=False)
    resumed.fit()
    assert resumed.step == 6
    for (k, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert torch.equal(full.dec.proxies, resumed.dec.proxies)
    assert full.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        resumed.optimizer.state_dict()["state"][0]["exp_avg"]
    )

    def losses(path):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in recs if "loss" in r]

    assert losses(tmp_path / "full" / "log.jsonl") == losses(tmp_path / "part" / "log.jsonl")
    assert (
        json.loads((tmp_path / "full" / "metrics.json").read_text())["metrics"]
        == json.loads((tmp_path / "part" / "metrics.json").read_text())["metrics"]
    )


def test_checkpoint_from_another_config_is_refused(data_root, tmp_path):
    cfg = tiny_config(data_root, steps=2)
    Trainer(cfg, tmp_path, progress=False).fit()
    other = copy.deepcopy(cfg)
    other["optimizer"]["lr"] = 0.5
    with pytest.raises(InputError, match="different config"):
        Trainer(other, tmp_path, progress=False).fit()


# float32 round-off: a gradient entry is a sum over the global batch (and, for convolutions, over
# the feature map) computed in another order by one process and by two (each rank sums its shard,
# the all-reduce sums the two); its error is bounded by ~eps * (terms summed) * the largest term.
# The bound below takes REDUCTION terms no larger than the tensor's largest gradient entry: the
# global batch (16) x up to 256 feature-map positions per convolution weight at 32 px. Measured
# differences stay under 40 eps x the largest entry, 1/100 of the bound; a wrong reduction (a
# missing all-reduce or average) differs by O(1) x the largest entry.
EPS32 = float(torch.finfo(torch.float32).eps)
REDUCTION = 16 * 256


def _record_gradients(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Copy every parameter's gradient (model and decomposability proxies) just before each
    optimizer step: under DDP, the all-reduced gradient the step applies."""
    steps: list[dict[str, torch.Tensor]] = []
    named = {"model": trainer.model, "dec": trainer.dec}

    def hook(optimizer, args, kwargs):
        if optimizer is trainer.optimizer:
            steps.append({})
        for prefix, module in named.items():
            for name, p in module.named_parameters() if module is not None else ():
                if p.grad is not None and any(p is q for g in optimizer.param_groups for q in g["params"]):
                    steps[-1][f"{prefix}.{name}"] = p.grad.detach().clone()

    for opt in (trainer.optimizer, trainer.dec_optimizer, trainer.crit_optimizer):
        if opt is not None:
            opt.register_step_pre_hook(hook)
    return steps


def _fit_recording(cfg: dict, out) -> None:
    """Train ``cfg`` into ``out`` and save the gradients of each step to ``out/grads.pt``."""
    trainer = Trainer(cfg, out, device="cpu", progress=False, resume=False)
    steps = _record_gradients(trainer)
    trainer.fit()
    if trainer.rank == 0:
        torch.save(steps, os.path.join(out, "grads.pt"))


def _ddp_task(rank: int, cfg: dict, out: str) -> None:
    """One rank of a DDP run (in the session's gloo pool: the process group is already up)."""
    _fit_recording(cfg, out)


def sgd(cfg: dict, lr: float = 0.05) -> dict:
    """``cfg`` with plain SGD: an update proportional to the gradient, so parameters after a step
    differ between runs only as much as their gradients (Adam divides by sqrt(v) + eps and turns
    round-off on a near-zero gradient into a full-size step)."""
    cfg["optimizer"].update(name="sgd", lr=lr, momentum=0.9)
    return cfg


def assert_ddp_matches_one_process(cfg: dict, tmp_path, gloo_pool) -> None:
    """Two gloo processes train as one process on the whole batch: at every step the all-reduced
    gradients equal the single process's to float32 round-off, and so do the weights after SGD."""
    _fit_recording(cfg, tmp_path / "one")
    gloo_pool.run(_ddp_task, cfg, str(tmp_path / "two"))
    g_one = torch.load(tmp_path / "one" / "grads.pt", weights_only=True)
    g_two = torch.load(tmp_path / "two" / "grads.pt", weights_only=True)
    assert len(g_one) == len(g_two) == cfg["train"]["steps"]
    for step, (a, b) in enumerate(zip(g_one, g_two, strict=True)):
        assert a.keys() == b.keys() and a, step
        for k in a:
            tol = EPS32 * REDUCTION * float(a[k].abs().max())
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=tol, msg=f"step {step}: {k}")
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for k in one:  # SGD: the weights differ by lr x the gradients' round-off (measured: ~2e-7)
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize(
    "norm",
    [
        "group",
        pytest.param("frozen_batch", marks=pytest.mark.slow),
        pytest.param("resnet18", marks=pytest.mark.slow),
    ],
)
def test_two_process_gloo_matches_one_process(data_root, tmp_path, norm, gloo_pool):
    cfg = sgd(tiny_config(data_root, steps=3))
    if norm == "frozen_batch":  # frozen BatchNorm (the authors' ResNets): per-sample, so N == 1
        cfg["model"].update(norm="batch", freeze_batchnorm=True)
    if norm == "resnet18":  # a torchvision ResNet (random init) with its BatchNorm frozen, as the recipes
        cfg["model"].update(backbone="resnet18", pretrained=False, freeze_batchnorm=True)
    cfg["loss"].update(
        name="SupHAP",
        weight=0.9,
        decomposability={"name": "NormalizedSoftmaxProxyLoss", "weight": 0.1, "lr": 0.05},
    )
    assert_ddp_matches_one_process(cfg, tmp_path, gloo_pool)
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    first = Trainer(cfg, tmp_path / "init", progress=False, resume=False).model.state_dict()
    moved = max(float((one[k].float() - first[k].float()).abs().max()) for k in one)
    assert moved > 1e-3  # the runs did train
    log_one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    rank_one = [r["rank_loss"] for r in log_one if "rank_loss" in r]
    rank_two = [r["rank_loss"] for r in log_two if "rank_loss" in r]
    # the first step sees the same weights: the same loss; later steps see weights that agree to
    # float32 rounding only, and SupHAP's exact rank+ of near-tied scores can turn that into 1e-3
    assert len(rank_one) == 3 and np.isclose(rank_one[0], rank_two[0], rtol=1e-5, atol=1e-6)
    assert np.allclose(rank_one, rank_two, rtol=1e-2)


def test_contrastive_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    ref = pml.ContrastiveLoss()
    gen = torch.Generator().manual_seed(0)
    for case in range(20):
        b = int(torch.randint(2, 24, (1,), generator=gen))
        emb = torch.nn.functional.normalize(torch.randn(b, 8, generator=gen), dim=1)
        lab = torch.randint(0, max(1, b // 3), (b,), generator=gen)
        if case == 0:
            lab = torch.arange(b)  # no positive pair at all
        ours = contrastive_loss(emb, torch.stack([lab, lab // 2], 1))
        assert float(ours) == pytest.approx(float(ref(emb, lab)), abs=1e-5)
    emb = torch.randn(6, 4, requires_grad=True)
    ContrastiveLoss()(emb, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert torch.isfinite(emb.grad).all()


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(100, 100, 0, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 0, kind="constant") == 1.0
    vals = [lr_factor(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))


def test_shipped_configs():
    assert {"synthetic", "h-gldv2", "sop", "inat2018"} <= set(config_names())
    for name in config_names():
        load_config(name)
    paper = load_config("h-gldv2")
    assert paper["model"]["backbone"] == "resnet50" and paper["model"]["embedding_dim"] == 512
    assert paper["sampler"]["batch_size"] == 256 and paper["sampler"]["m"] == 4
    assert paper["optimizer"]["name"] == "adam" and paper["optimizer"]["lr"] == 1e-4
    assert paper["schedule"]["kind"] == "cosine"
    assert paper["loss"]["name"] == "SupHAP" and paper["loss"]["weight"] == 0.9
    assert paper["loss"]["decomposability"]["weight"] == 0.1
    syn = load_config("synthetic")
    assert syn["model"]["pretrained"] is False and set(syn["benchmark"]["losses"]) == {
        "Contrastive",
        "SmoothAP",
        "SupAP",
        "SupHAP",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {backbon: tiny}\n", "unknown key 'model.backbon'"),
        ("train: {steps: -3}\n", "train.steps"),
        ("optimizer: {lr: fast}\n", "optimizer.lr"),
        ("sampler: {batch_size: 30, m: 4}\n", "sampler.m"),
        ("model: 3\n", "'model' must be a mapping"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_bad_config(tmp_path, cli_runner, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(path)
    from hglv2.cli import main

    res = cli_runner.invoke(main, ["train", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("Error: ")
    assert not (tmp_path / "run").exists()


def test_unknown_config_and_loss(tmp_path, cli_runner, data_root):
    from hglv2.cli import main

    res = cli_runner.invoke(main, ["train", "no-such-config"])
    assert res.exit_code == 2 and "Error: config 'no-such-config'" in res.output
    cfg = tiny_config(data_root)
    cfg["loss"]["name"] = "NoSuchLoss"
    with pytest.raises(InputError, match="NoSuchLoss"):
        Trainer(cfg, tmp_path, progress=False)


def test_rows_with_unknown_levels_are_not_trained_on(data_root):
    from hglv2.train import build_batch_sampler

    cfg = tiny_config(data_root)
    rng = np.random.default_rng(0)
    labels = np.stack([np.repeat(np.arange(12), 4), np.repeat(np.arange(12), 4) // 3, np.zeros(48, int)], 1)
    unknown = rng.choice(48, 10, replace=False)
    labels[unknown, 1] = -1
    for kind in ("m_per_class", "hierarchical"):
        cfg["sampler"]["kind"] = kind
        sampler = build_batch_sampler(cfg, labels, seed=0)
        seen = {i for b in sampler.global_batches() for i in b}
        assert seen and not seen & set(unknown.tolist())


def test_evaluation_keeps_the_thread_count(data_root, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        trainer = Trainer(tiny_config(data_root), tmp_path, progress=False)
        metrics = trainer.evaluate()
        assert 0.0 <= metrics["H-AP"] <= 1.0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
