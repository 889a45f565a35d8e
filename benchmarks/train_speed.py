"""Training throughput of the hglv2 harness against a bare PyTorch loop, side by side in one run.

Both sides train the same model (``build_model`` of the config, same seed), with the same loss
(``build_loss``), on the same batches (the config's batch sampler, epoch after epoch) with the same
``num_workers`` and torch threads:

- **harness**: ``Trainer(cfg).fit()`` stopped after ``--steps`` steps (evaluation off); its own
  timer covers the loop from building the loader to the last step.
- **bare**: the loop a user writes by hand: a plain ``Dataset`` (``PIL.Image.open`` + convert,
  torchvision ``RandomResizedCrop(scale=(0.5, 1))`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize``, global RNG), ``DataLoader(batch_sampler=<the sampler>, num_workers,
  persistent_workers, pin_memory on CUDA)`` re-iterated each epoch after ``set_epoch``, forward,
  loss, backward, gradient clipping, Adam, the learning-rate schedule (AMP + channels-last on
  CUDA when the config asks for AMP); timed from building the loader to the last step.
- **floor**: the bare loop's compute alone, on batches already in memory (no data path).

Each round runs every side once, in a rotating order, so drift on a shared machine spreads over
the sides; the table gives the median images/s of each and the median of the per-round ratios.
A second table gives the per-item cost of each data path in the main process (one thread): the harness's
``SeededItems(train_set)[(index, seed)]`` (plus its share of the per-batch conversion, when the
items are uint8) against the plain dataset's ``__getitem__``.

Run (not part of CI)::

    python benchmarks/train_speed.py --workers 0,1 --threads 1 --steps 40 --rounds 3

``--config`` takes a shipped config name or YAML (default ``synthetic``, generated under ``--root``
on first use).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torchvision.transforms as T
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _results import sync  # noqa: E402

from hglv2.config import load_config  # noqa: E402
from hglv2.fileio import write_json  # noqa: E402
from hglv2.losses.registry import build_loss  # noqa: E402
from hglv2.models import build_model  # noqa: E402
from hglv2.train import (  # noqa: E402
    SeededItems,
    Trainer,
    build_batch_sampler,
    build_dataset,
    hash_seed,
    prepare_data,
    seed_everything,
)
from hglv2.train.optim import lr_factor  # noqa: E402
from hglv2.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the bare loop


class PlainImages(torch.utils.data.Dataset):
    """What a user writes: PIL open + convert + a torchvision transform; (image, labels)."""

    def __init__(self, split: Path, image_root: Path, levels: list[str], transform) -> None:
        t = pq.read_table(split, columns=["path", *levels])
        self.paths = [image_root / p for p in t.column("path").to_pylist()]
        cols = [t.column(c).fill_null(-1).to_numpy().astype(np.int64) for c in levels]
        self.labels = torch.from_numpy(np.stack(cols, axis=1))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"steps": 5, "rounds": 1, "workers": "0", "items": 32}


def plain_transform(cfg: dict) -> T.Compose:
    d = cfg["data"]
    size = d["image_size"]
    if d["augment"]:
        steps = [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(d["resize"] or size), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _image_root(cfg: dict, root: Path) -> Path:
    image_root = cfg["data"]["image_root"]
    if isinstance(image_root, dict):
        image_root = image_root[cfg["data"]["train_split"]]
    return Path(image_root) if image_root else root / "images"


class Bare:
    """Model, loss, optimiser and schedule of the bare loop (built outside the timing)."""

    def __init__(self, cfg: dict, labels: np.ndarray, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        seed_everything(cfg["seed"])
        self.cuda = device.type == "cuda"
        self.amp = bool(cfg["train"]["amp"]) and self.cuda
        self.model = build_model(**cfg["model"]).to(device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        lc = cfg["loss"]
        self.class_ids = np.unique(labels[:, 0])
        dim = cfg["model"]["embedding_dim"]
        self.crit = build_loss(lc["name"], lc["kwargs"], num_classes=len(self.class_ids), embedding_dim=dim)
        self.crit = self.crit.to(device)
        o = cfg["optimizer"]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        self.dec = self.dec_opt = None
        dc = lc["decomposability"]
        if dc is not None:
            self.dec = build_loss(
                dc["name"], dc.get("kwargs") or {}, num_classes=len(self.class_ids), embedding_dim=dim
            )
            self.dec = self.dec.to(device)
            self.dec_opt = torch.optim.Adam(self.dec.parameters(), lr=dc.get("lr", o["lr"]))
        total = cfg["train"]["steps"] or 1000
        sch = cfg["schedule"]
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total, sch["warmup_steps"], sch["kind"], sch["min_lr_ratio"])
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        if self.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            emb = self.model(images)
        emb = emb.float()
        lc = self.cfg["loss"]
        loss = lc["weight"] * self.crit(emb, labels)
        if self.dec is not None:
            dense = torch.as_tensor(
                np.searchsorted(self.class_ids, labels[:, 0].cpu().numpy()), device=self.device
            )
            loss = loss + lc["decomposability"].get("weight", 0.1) * self.dec(emb, dense)
        self.opt.zero_grad(set_to_none=True)
        if self.dec_opt is not None:
            self.dec_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.cfg["train"]["clip_grad_norm"]
        if clip is not None:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.opt)
        if self.dec_opt is not None:
            self.scaler.step(self.dec_opt)
        self.scaler.update()
        self.sched.step()


def run_bare(cfg: dict, root: Path, steps: int, workers: int, device: torch.device) -> float:
    """Images/s of the bare loop over ``steps`` steps."""
    d = cfg["data"]
    ds = PlainImages(
        root / f"{d['train_split']}.parquet", _image_root(cfg, root), d["levels"], plain_transform(cfg)
    )
    labels = ds.labels.numpy()
    sampler = build_batch_sampler(cfg, labels, seed=cfg["seed"])
    bare = Bare(cfg, labels, device)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    done = seen = 0
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        for images, lab in loader:
            bare.step(images, lab)
            done += 1
            seen += len(images)
            if done >= steps:
                break
        if done >= steps:
            break
    sync(device)
    elapsed = time.perf_counter() - t0
    del loader
    return seen / elapsed


def run_floor(cfg: dict, root: Path, steps: int, device: torch.device) -> float:
    """Images/s of the bare loop's compute alone, on a few batches held in memory."""
    d = cfg["data"]
    ds = PlainImages(
        root / f"{d['train_split']}.parquet", _image_root(cfg, root), d["levels"], plain_transform(cfg)
    )
    labels = ds.labels.numpy()
    sampler = build_batch_sampler(cfg, labels, seed=cfg["seed"])
    sampler.set_epoch(0)
    batches = []
    for b in itertools.islice(iter(sampler), 4):
        items = [ds[i] for i in b]
        batches.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
    bare = Bare(cfg, labels, device)
    t0 = time.perf_counter()
    seen = 0
    for k in range(steps):
        images, lab = batches[k % len(batches)]
        bare.step(images, lab)
        seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - t0)


def run_harness(cfg: dict, steps: int, workers: int, device: torch.device) -> float:
    """Images/s of ``Trainer.fit`` over ``steps`` steps (its own loop timer)."""
    cfg = json.loads(json.dumps(cfg))
    cfg["data"]["num_workers"] = workers
    with tempfile.TemporaryDirectory(prefix="train_speed_") as out:
        trainer = Trainer(cfg, out, device=str(device), resume=False, progress=False, max_steps=steps)
        trainer.fit()
        sync(device)
        return float(trainer.images_per_s)


# ---------------------------------------------------------------------------------------------
# per-item data cost


def item_costs(cfg: dict, root: Path, n_items: int, rounds: int) -> dict[str, float]:
    """Median seconds per item of each data path in this process (one thread), interleaved."""
    d = cfg["data"]
    train_set = build_dataset(cfg, root, d["train_split"], train=True)
    harness = SeededItems(train_set)
    plain = PlainImages(
        root / f"{d['train_split']}.parquet", _image_root(cfg, root), d["levels"], plain_transform(cfg)
    )
    n = min(n_items, len(plain))
    keys = [(i, hash_seed(cfg["seed"], 0, i // 64, i % 64)) for i in range(n)]
    batch = cfg["sampler"]["batch_size"]
    times: dict[str, list[float]] = {"harness": [], "plain": []}
    for r in range(rounds):
        for side in ("harness", "plain") if r % 2 == 0 else ("plain", "harness"):
            t0 = time.perf_counter()
            if side == "harness":
                images = [harness[k]["image"] for k in keys]
                if images[0].dtype == torch.uint8 and to_model_input is not None:
                    for s in range(0, n, batch):  # its share of the per-batch conversion
                        to_model_input(torch.stack(images[s : s + batch]), "cpu")
            else:
                for i in range(n):
                    plain[i]
            times[side].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------


def _rounds(
    args: argparse.Namespace, cfg: dict, root, w: int, device: torch.device
) -> dict[str, list[float]]:
    """images/s of each side over ``args.rounds`` rounds with ``w`` loader workers, the sides'
    order rotating from round to round."""
    runs: dict[str, list[float]] = {"harness": [], "bare": [], "floor": []}
    sides = ["harness", "bare"] + ([] if args.no_floor else ["floor"])
    for r in range(args.rounds):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:  # rotate the order
            if side == "harness":
                runs[side].append(run_harness(cfg, args.steps, w, device))
            elif side == "bare":
                runs[side].append(run_bare(cfg, root, args.steps, w, device))
            else:
                runs[side].append(run_floor(cfg, root, max(args.steps // 2, 4), device))
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="synthetic")
    ap.add_argument(
        "--root", default="runs/data/synthetic", help="data root (the synthetic set is made here)"
    )
    ap.add_argument("--steps", type=int, default=40, help="steps per timed run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each side per worker setting")
    ap.add_argument("--workers", default="0,1", help="comma-separated num_workers settings")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    ap.add_argument("--items", type=int, default=256, help="items of the per-item cost table")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-floor", action="store_true", help="skip the compute-only floor")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    cfg = load_config(args.config)
    cfg["data"]["root"] = args.root
    cfg["train"].update(eval_every=0, checkpoint_every=0)
    if cfg["train"]["steps"] is None:
        cfg["train"]["steps"] = max(args.steps, 1000)
    root = prepare_data(cfg)
    workers = [int(w) for w in args.workers.split(",")]
    print(
        f"config {args.config}: batch {cfg['sampler']['batch_size']}, {cfg['data']['image_size']} px, "
        f"model {cfg['model']['backbone']}, loss {cfg['loss']['name']}; {args.steps} steps x {args.rounds} "
        f"rounds per side; torch threads {torch.get_num_threads()}; device {device}; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = item_costs(cfg, root, args.items, max(args.rounds, 3))
    torch.set_num_threads(old)
    print("\nper-item data cost (main process, 1 thread, median of rounds)")
    print(f"  harness SeededItems: {costs['harness'] * 1e3:.3f} ms/item")
    print(f"  plain PIL dataset:   {costs['plain'] * 1e3:.3f} ms/item")
    print(f"  ratio plain/harness: {costs['plain'] / costs['harness']:.2f}x", flush=True)

    result: dict = {
        "config": args.config,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "item_ms": {k: v * 1e3 for k, v in costs.items()},
        "settings": [],
    }
    print(
        "\nthroughput (images/s; median over rounds; ratio = median of per-round harness/bare;"
        "\nfloor = the bare loop's compute on batches in memory, run in the same rounds)"
    )
    print(f"{'workers':>8} {'harness':>10} {'bare':>10} {'floor':>10} {'ratio':>7}  rounds")
    for w in workers:
        runs = _rounds(args, cfg, root, w, device)
        ratios = [h / b for h, b in zip(runs["harness"], runs["bare"], strict=True)]
        med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
        ratio = statistics.median(ratios)
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{w:>8} {med['harness']:>10.1f} {med['bare']:>10.1f} {med['floor']:>10.1f}"
            f" {ratio:>6.2f}x  [{rounds}]",
            flush=True,
        )
        result["settings"].append({"workers": w, **runs, "ratios": ratios, "ratio": ratio})
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
