"""Losses part of ``benchmarks/gpu_check.py``: SupAP / SupHAP / SupNDCG forward + backward on a device.

For each loss at B = N (the batch is its own reference set; inputs of ``benchmarks/losses_speed.py``:
D = 512, 4 images per class, L = 3 levels): the wall time of one step after a warm-up step
(synchronised) and the peak device memory it adds (``torch.cuda.max_memory_allocated``, reset
before the step). Then SupAP and SupHAP at a smaller batch on the device against the CPU path (the
compiled kernels): the difference of the values and the largest difference of the gradients.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _results import sync

from hglv2.losses import SupAP, SupHAP, SupNDCG

LOSSES = {"SupAP": SupAP, "SupHAP": SupHAP, "SupNDCG": SupNDCG}


def make_inputs(b: int, dim: int = 512, per_class: int = 4, seed: int = 0):
    """``b`` normalised embeddings and their (class, cluster of 8 classes, one of 2 groups) labels."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1)
    cls = torch.arange(b) // per_class
    labels = torch.stack([cls, cls // 8, cls % 2], 1)
    perm = torch.randperm(b, generator=g)
    return emb[perm].contiguous(), labels[perm].contiguous()


def _step(name: str, emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = emb.clone().requires_grad_(True)
    value = LOSSES[name]()(x, labels)
    value.backward()
    return float(value.detach()), x.grad


def measure(name: str, b: int, device: torch.device) -> dict[str, Any]:
    """Wall time and added peak device memory of one forward + backward of ``name`` at B = ``b``."""
    emb, labels = make_inputs(b)
    emb, labels = emb.to(device), labels.to(device)
    _step(name, emb[:64], labels[:64])  # warm-up (kernels, allocator)
    sync(device)
    base = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    value, _ = _step(name, emb, labels)
    sync(device)
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return {"loss": name, "B": b, "wall_s": round(wall, 4),
            "peak_mb": None if peak is None else round(peak, 1), "value": value}  # fmt: skip


def compare(name: str, b: int, device: torch.device) -> dict[str, Any]:
    """``name`` at B = ``b`` on ``device`` against the CPU path: value and gradient differences."""
    emb, labels = make_inputs(b, seed=1)
    v_cpu, g_cpu = _step(name, emb, labels)
    v_dev, g_dev = _step(name, emb.to(device), labels.to(device))
    return {"loss": name, "B": b, "abs_diff_value": abs(v_cpu - v_dev),
            "max_abs_diff_grad": float((g_cpu - g_dev.cpu()).abs().max())}  # fmt: skip


def check_losses(device: torch.device, batch: int, compare_batch: int) -> dict[str, Any]:
    """The step figures at B = ``batch`` and the CPU comparison at B = ``compare_batch``."""
    steps = []
    for name in LOSSES:
        steps.append(measure(name, batch, device))
        print("losses", steps[-1], flush=True)
    versus_cpu = []
    for name in ("SupAP", "SupHAP"):
        versus_cpu.append(compare(name, compare_batch, device))
        print("losses", versus_cpu[-1], flush=True)
    return {"steps": steps, "versus_cpu": versus_cpu}
