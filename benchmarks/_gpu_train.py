"""Training part of ``benchmarks/gpu_check.py``: images/s of the harness on the h-gldv2 recipe.

The recipe (``hglv2/configs/h-gldv2.yaml``: ResNet-50 + GeM + 512-d, batches of 256 with 4 images
per landmark, SupHAP + proxy loss, AMP, channels-last, ``num_workers`` loader processes) trains
through the harness (``Trainer.fit``) on generated data: the embedded synthetic hierarchy
(``hglv2.synthetic``, the real split format) with its images re-encoded as photo-sized JPEGs
(``photo`` px wide, 4:3, with sensor-like noise so they decode like photos), so the loader does the
work it does on GLDv2: JPEG decode (at reduced scale when the crop allows, ``Image.draft``), random
resized crop to 224, flip, uint8 batches pinned and copied to the GPU, normalised there.
``model.pretrained`` is off (no network; the speed is the same).

Figures: steady-state images/s (steps after ``warmup``), images/s over the whole run (the
harness's own timer, loader start included), the compute-only rate of the same step on one batch
already on the device (the floor: the data path is hidden when the two agree) and the peak CUDA
memory (allocated and reserved). ``smoke``: a tiny model and images on the CPU (seconds).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from hglv2.config import load_config
from hglv2.train import Trainer, prepare_data


def _photo(args: tuple[str, str, int, int]) -> int:
    """Re-encode one rendered image as a ``width`` x 3/4 JPEG with noise; returns its bytes."""
    src, dst, width, seed = args
    height = width * 3 // 4
    with Image.open(src) as img:
        big = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(big, dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0.0, 6.0, size=arr.shape)
    out = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=90)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_photos(root: Path, split: str, out: Path, width: int, jobs: int) -> dict[str, float]:
    """Photo-sized copies of a split's images under ``out`` (same relative paths)."""
    paths = pq.read_table(root / f"{split}.parquet", columns=["path"]).column("path").to_pylist()
    todo = [(str(root / "images" / p), str(out / p), width, k) for k, p in enumerate(paths)]
    t0 = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            sizes = list(pool.map(_photo, todo, chunksize=16))
    else:
        sizes = [_photo(t) for t in todo]
    return {
        "images": len(sizes),
        "mean_kb": float(np.mean(sizes)) / 1024,
        "seconds": time.perf_counter() - t0,
    }


def recipe(config: str, smoke: bool, data_root: Path, workers: int | None = None) -> dict:
    """``config`` on generated data (or its tiny CPU version with ``smoke``)."""
    cfg = load_config(config)
    d = cfg["data"]
    d.update(kind="synthetic", root=str(data_root), image_root=None, index_split="index")
    d.update(train_split="train", query_split="query")
    d["synthetic"].update(
        hierarchy=None,
        seed=0,
        image_size=64,
        train_images=24,
        query_images=1,
        index_images=2,
        max_clusters=6,
        landmarks_per_cluster=12,
    )
    cfg["model"]["pretrained"] = False
    cfg["train"].update(eval_every=0, checkpoint_every=0, log_every=10, steps=100_000)
    if workers is not None:
        d["num_workers"] = workers
    if smoke:
        d.update(image_size=32, resize=36)
        d["synthetic"].update(train_images=8, landmarks_per_cluster=4, max_clusters=2, image_size=32)
        cfg["model"].update(backbone="tiny", width=8, embedding_dim=16, layernorm=False)
        cfg["sampler"].update(batch_size=16, m=4)
        d["num_workers"] = min(d["num_workers"], 1)
    return cfg


def _steady(log: Path, batch: int, warmup: int) -> float | None:
    """images/s between the first logged step after ``warmup`` and the last one."""
    recs = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    recs = [r for r in recs if "images_per_s" in r]
    # the log gives the cumulative rate at each logged step: time(step) = images / rate
    pts = [(r["step"], r["step"] * batch / r["images_per_s"]) for r in recs if r["images_per_s"] > 0]
    later = [p for p in pts if p[0] >= warmup]
    if len(later) < 2:
        return None
    (s0, t0), (s1, t1) = later[0], later[-1]
    return (s1 - s0) * batch / max(t1 - t0, 1e-9)


def _floor(trainer: Trainer, device: torch.device, steps: int) -> float:
    """Images/s of the training step alone on one batch already on the device."""
    from hglv2.train.data import SeededItems
    from hglv2.transforms import to_model_input

    cuda = device.type == "cuda"
    items = SeededItems(trainer.train_set)
    keys = trainer._epoch_batches(0, 0)[1][0]
    got = [items[k] for k in keys]
    images = to_model_input(torch.stack([g["image"] for g in got]), device, channels_last=cuda)
    labels = torch.stack([g["labels"] for g in got]).to(device)
    for _ in range(3):
        trainer.train_step(images, labels)
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)
    if cuda:
        torch.cuda.synchronize(device)
    return steps * len(keys) / (time.perf_counter() - t0)


def _data(cfg: dict, data_root: Path, photo: int) -> dict:
    """Generate the synthetic split and its photo-sized JPEGs (kept under ``data_root``); point
    ``cfg`` at them and return their figures."""
    t0 = time.perf_counter()
    prepare_data(cfg)
    gen_s = time.perf_counter() - t0
    photo_root = data_root / f"photos{photo}"
    if not (photo_root / ".done").is_file():
        jobs = max(1, min(os.cpu_count() or 1, 16))
        photos = make_photos(data_root, "train", photo_root, photo, jobs)
        (photo_root / ".done").write_text(json.dumps(photos))
    cfg["data"]["image_root"] = str(photo_root)
    photos = json.loads((photo_root / ".done").read_text())
    return {"photo_width": photo, **photos, "synthetic_seconds": gen_s}


def check_train(
    device: torch.device,
    smoke: bool,
    steps: int = 300,
    warmup: int = 30,
    floor_steps: int = 40,
    photo: int = 640,
    config: str = "h-gldv2",
    data: str | None = None,
    workers: int | None = None,
) -> dict:
    """Train ``config`` for ``steps`` steps on generated photos (under ``data``, default a
    temporary folder) with ``workers`` loader processes (default: the config's) and return the
    figures; ``smoke`` shrinks everything to seconds on the CPU."""
    if smoke:
        photo, steps, warmup, floor_steps = min(photo, 96), min(steps, 6), min(warmup, 2), 2
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="gpu_check_train_") as tmp:
        data_root = Path(data) if data else Path(tmp) / "data"
        cfg = recipe(config, smoke, data_root, workers)
        data_figures = _data(cfg, data_root, photo)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(cfg, Path(tmp) / "run", device=str(device), resume=False, progress=False,
                          max_steps=steps)  # fmt: skip
        trainer.fit()
        if cuda:
            torch.cuda.synchronize(device)
        peak_alloc = torch.cuda.max_memory_allocated(device) if cuda else None
        peak_reserved = torch.cuda.max_memory_reserved(device) if cuda else None
        batch = cfg["sampler"]["batch_size"]
        steady = _steady(trainer.log_path, batch, warmup)
        floor = _floor(trainer, device, floor_steps)
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "config": config,
        "backbone": cfg["model"]["backbone"],
        "image_size": cfg["data"]["image_size"],
        "batch_size": batch,
        "num_workers": cfg["data"]["num_workers"],
        "amp": bool(cfg["train"]["amp"]) and cuda,
        "channels_last": cuda,
        "steps": trainer.step,
        "images_per_s_run": float(trainer.images_per_s),
        "images_per_s_steady": steady,
        "images_per_s_compute_floor": floor,
        "peak_memory_allocated_gib": None if peak_alloc is None else peak_alloc / 2**30,
        "peak_memory_reserved_gib": None if peak_reserved is None else peak_reserved / 2**30,
        "data": data_figures,
        "cpu_count": os.cpu_count(),
    }


def summary(r: dict) -> str:
    """One line of the figures."""
    steady = "n/a" if r["images_per_s_steady"] is None else f"{r['images_per_s_steady']:.0f}"
    mem = r["peak_memory_allocated_gib"]
    mem = "" if mem is None else f"; peak memory {mem:.2f} GiB allocated"
    return (
        f"train {r['config']} ({r['backbone']}, {r['image_size']} px, batch {r['batch_size']}, "
        f"AMP {r['amp']}, {r['num_workers']} workers) on {r['device']}: {steady} images/s steady, "
        f"{r['images_per_s_run']:.0f} over the run, compute floor "
        f"{r['images_per_s_compute_floor']:.0f} images/s{mem}"
    )
