"""Recipe-step part of ``benchmarks/gpu_check.py`` (with ``--part train``): the h-gldv2 training step.

The recipe's model settings (random initialisation), its rank loss + proxy loss and optimizers
(``hglv2/configs/h-gldv2.yaml``) on generated images (normal noise, 4 images per class), one step
= forward, loss, backward, optimizer step:

* ``grad_cache_exact``: float32, no AMP, a small batch: the gradient with caching
  (:func:`hglv2.train.gradcache.grad_cache_backward`) against the direct gradient (max relative
  difference; 0 up to round-off);
* ``loss_time_direct`` / ``loss_time_grad_cache``: seconds of the loss alone (forward + backward)
  on random embeddings at the two batch sizes;
* ``recipe_direct``: 224 px with AMP, B = 256: images/s and peak GPU memory;
* ``recipe_grad_cache``: the same at B = 4096 through gradient caching (sub-batches of 256).

``smoke``: a tiny backbone at 32 px and small batches (seconds on a CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _results import sync

from hglv2.config import load_config
from hglv2.losses import build_loss
from hglv2.models import build_model
from hglv2.train.gradcache import grad_cache_backward
from hglv2.train.optim import decomposability_optimizer, model_optimizer


def recipe(smoke: bool) -> tuple[dict, dict]:
    """(model kwargs, loss section) of the h-gldv2 recipe; tiny on CPU for --smoke."""
    cfg = load_config("h-gldv2")
    model_kw = dict(cfg["model"], pretrained=False)  # no downloads here: random initialisation
    if smoke:
        model_kw.update(backbone="tiny", width=8, embedding_dim=32)
    return cfg, model_kw


def make_batch(
    b: int, size: int, m: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g).to(device)
    fine = torch.arange(b) // m
    labels = torch.stack([fine, fine // 8, fine // 64], 1).to(device)
    return images, labels


class Step:
    """The recipe's training step on generated images (direct, or with gradient caching)."""

    def __init__(self, cfg: dict, model_kw: dict, device: torch.device, amp: bool, classes: int) -> None:
        torch.manual_seed(0)
        self.device, self.amp = device, amp and device.type == "cuda"
        self.model = build_model(**model_kw).to(device).train()
        lc = cfg["loss"]
        dim = model_kw["embedding_dim"]
        self.crit = build_loss(lc["name"], lc["kwargs"], num_classes=classes, embedding_dim=dim).to(device)
        self.weight = lc["weight"]
        self.dec = None
        dc = lc["decomposability"]
        if dc is not None:
            self.dec = build_loss(dc["name"], dc.get("kwargs") or {}, num_classes=classes, embedding_dim=dim)
            self.dec = self.dec.to(device)
            self.dec_weight = dc.get("weight", 0.1)
        # the recipe's optimizers: backbone / head groups, and the proxies' own
        self.opts = [model_optimizer(cfg, self.model)]
        if self.dec is not None:
            self.opts.append(decomposability_optimizer(cfg, self.dec))
        self.opts = [o for o in self.opts if o is not None]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = emb.float()
        loss = self.weight * self.crit(emb, labels)
        if self.dec is not None:
            loss = loss + self.dec_weight * self.dec(emb, labels[:, 0])
        return loss

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, chunk: int = 0) -> float:
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        if chunk:
            loss = grad_cache_backward(
                self.model,
                images,
                lambda e: self.loss(e, labels),
                chunk,
                device=self.device,
                backward=lambda v: self.scaler.scale(v).backward(),
                autocast=self.autocast,
            )
        else:
            with self.autocast():
                emb = self.model(images)
            loss = self.loss(emb, labels)
            self.scaler.scale(loss).backward()
        for opt in self.opts:
            self.scaler.step(opt)
        self.scaler.update()
        return float(loss.detach())


def throughput(
    cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, steps: int, chunk: int, amp: bool
) -> dict:
    """Images/s (median over timed steps after 3 warm-up steps) and peak memory of the step."""
    m = cfg["sampler"]["m"]
    step = Step(cfg, model_kw, device, amp, classes=b // m)
    images, labels = make_batch(b, size, m, device, seed=1)
    if chunk:
        images = images.cpu().pin_memory() if device.type == "cuda" else images  # as the loader gives
    losses, times = [], []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for k in range(3 + steps):
        sync(device)
        t0 = time.perf_counter()
        losses.append(step(images, labels, chunk))
        sync(device)
        if k >= 3:
            times.append(time.perf_counter() - t0)
    res = {
        "batch_size": b,
        "image_size": size,
        "grad_cache_chunk": chunk,
        "amp": step.amp,
        "timed_steps": steps,
        "step_s_median": round(float(np.median(times)), 4),
        "images_per_s": round(b / float(np.median(times)), 1),
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "losses_finite": bool(np.isfinite(losses).all()),
    }
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del step, images
    return res


def loss_time(cfg: dict, model_kw: dict, device: torch.device, b: int, repeats: int = 3) -> dict:
    """Seconds of the recipe's loss (rank + proxy), forward + backward, on B random embeddings."""
    m = cfg["sampler"]["m"]
    step = Step(cfg, model_kw, device, amp=False, classes=b // m)
    _, labels = make_batch(b, 8, m, device, seed=3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats + 1):
        emb = torch.nn.functional.normalize(torch.randn(b, model_kw["embedding_dim"], device=device), dim=1)
        emb.requires_grad_(True)
        sync(device)
        t0 = time.perf_counter()
        step.loss(emb, labels).backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    res = {"batch_size": b, "loss_fwd_bwd_s_median": round(float(np.median(times[1:])), 4)}
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return res


def grad_cache_exact(cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, chunk: int) -> dict:
    """Max |g_cached - g_direct| / max |g_direct| over parameters, float32 without TF32, no AMP,
    deterministic cuDNN (TF32 convolutions alone differ by ~1e-3, which SupRank's sharp sigmoid,
    tau = 0.01, amplifies)."""
    m = cfg["sampler"]["m"]
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    cudnn.allow_tf32 = matmul.allow_tf32 = cudnn.benchmark = False
    cudnn.deterministic = True
    try:
        return _grad_cache_exact(cfg, model_kw, device, b, size, chunk, m)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved


def _grad_cache_exact(cfg: dict, model_kw: dict, device: torch.device, b: int, size: int, chunk: int, m: int):
    images, labels = make_batch(b, size, m, device, seed=2)
    grads = []
    for c in (0, chunk):
        step = Step(cfg, model_kw, device, amp=False, classes=b // m)
        for mod in step.model.modules():  # frozen BatchNorm (the authors' recipe): exact equality
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        for opt in step.opts:
            opt.zero_grad(set_to_none=True)
        if c:
            grad_cache_backward(step.model, images, lambda e, s=step: s.loss(e, labels), c, device=device)
        else:
            step.loss(step.model(images), labels).backward()
        grads.append(
            {n: p.grad.detach().clone() for n, p in step.model.named_parameters() if p.grad is not None}
        )
    worst = 0.0
    for n, g in grads[0].items():
        scale = float(g.abs().max()) or 1.0
        worst = max(worst, float((g - grads[1][n]).abs().max()) / scale)
    return {
        "batch_size": b,
        "image_size": size,
        "chunk": chunk,
        "max_rel_diff": worst,
        "params": len(grads[0]),
    }


def _checks(cfg: dict, model_kw: dict, device: torch.device, smoke: bool, steps: int | None):
    """name -> the function computing that figure."""
    if smoke:
        size, b, big, chunk, steps, big_steps = 32, 16, 64, 16, steps or 3, 2
        exact = (8, 32, 3)
    else:
        size, b, big, chunk, steps, big_steps = 224, 256, 4096, 256, steps or 100, 5
        exact = (32, 112, 8)
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "grad_cache_exact": lambda: grad_cache_exact(cfg, model_kw, device, *exact),
        "loss_time_direct": lambda: loss_time(cfg, model_kw, device, b),
        "loss_time_grad_cache": lambda: loss_time(cfg, model_kw, device, big),
        "recipe_direct": lambda: throughput(cfg, model_kw, device, b, size, steps, 0, amp=True),
        "recipe_grad_cache": lambda: throughput(cfg, model_kw, device, big, size, big_steps, chunk, amp=True),
    }
    return checks


def check_recipe(device: torch.device, smoke: bool, steps: int | None = None) -> dict[str, Any]:
    """The recipe-step figures (``steps``: timed steps of ``recipe_direct``, default 100, 3 with
    ``smoke``); a check that raises is recorded with its error and the others still run."""
    cfg, model_kw = recipe(smoke)
    report: dict[str, Any] = {"config": "h-gldv2", "model": model_kw, "loss": cfg["loss"]["name"]}
    for key, fn in _checks(cfg, model_kw, device, smoke, steps).items():
        t0 = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as exc:  # record and go on: one failing check must not hide the others
            report[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report[key]["seconds"] = round(time.perf_counter() - t0, 1)
        print("train", key, report[key], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report
