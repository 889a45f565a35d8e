"""Losses part of the GPU check: SupAP / SupHAP / SupNDCG forward + backward at B = 4096 on CUDA.

Prints one JSON line per measurement: wall time of a step (after one warm-up step, synchronised),
peak CUDA memory (``torch.cuda.max_memory_allocated``, reset before the step), and the loss value;
then the largest difference between the CUDA values/gradients and the CPU path (compiled kernels)
at a smaller batch. Inputs as in ``benchmarks/losses_speed.py`` (D = 512, 4 images per class,
L = 3 levels).

    python benchmarks/gpu_check_losses.py            # on a CUDA machine (a few minutes at most)
    python benchmarks/gpu_check_losses.py --smoke    # tiny, on CPU (checks the script runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from hglv2.losses import SupAP, SupHAP, SupNDCG  # noqa: E402

LOSSES = {"SupAP": SupAP, "SupHAP": SupHAP, "SupNDCG": SupNDCG}


def make_inputs(B: int, D: int = 512, per_class: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    cls = torch.arange(B) // per_class
    labels = torch.stack([cls, cls // 8, cls % 2], 1)
    perm = torch.randperm(B, generator=g)
    return emb[perm].contiguous(), labels[perm].contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(name: str, emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = emb.clone().requires_grad_(True)
    value = LOSSES[name]()(x, labels)
    value.backward()
    return float(value.detach()), x.grad


def measure(name: str, B: int, device: torch.device) -> dict:
    emb, labels = make_inputs(B)
    emb, labels = emb.to(device), labels.to(device)
    step(name, emb[:64], labels[:64])  # warm-up (kernels, allocator)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    value, _ = step(name, emb, labels)
    _sync(device)
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return {"check": "loss_step", "loss": name, "B": B, "device": str(device), "wall_s": round(wall, 4),
            "peak_mb": None if peak is None else round(peak, 1), "value": value}  # fmt: skip


def compare(name: str, B: int, device: torch.device) -> dict:
    emb, labels = make_inputs(B, seed=1)
    v_cpu, g_cpu = step(name, emb, labels)
    v_dev, g_dev = step(name, emb.to(device), labels.to(device))
    return {"check": "loss_cpu_vs_device", "loss": name, "B": B, "device": str(device),
            "abs_diff_value": abs(v_cpu - v_dev),
            "max_abs_diff_grad": float((g_cpu - g_dev.cpu()).abs().max())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run on CPU")
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    if a.smoke:
        device, B, Bc = torch.device("cpu"), 64, 32
    else:
        if not torch.cuda.is_available():
            print("Error: no CUDA device (use --smoke to run on CPU)", file=sys.stderr)
            raise SystemExit(2)
        device, B, Bc = torch.device("cuda"), a.batch, 512
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"check": "env", "torch": torch.__version__, "device": str(device), "name": name}))
    for name in ("SupAP", "SupHAP", "SupNDCG"):
        print(json.dumps(measure(name, B, device)), flush=True)
    for name in ("SupAP", "SupHAP"):
        print(json.dumps(compare(name, Bc, device)), flush=True)


if __name__ == "__main__":
    main()
