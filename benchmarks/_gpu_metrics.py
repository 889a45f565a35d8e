"""Metrics part of ``benchmarks/gpu_check.py``: ``hglv2.metrics.evaluate`` on a device.

At Q x N x D with L levels (inputs of ``benchmarks/metrics_speed.py``), for the full ranking and
the top-k mode: wall time, queries/s and peak device memory of ``evaluate(..., device=...)``, then
the per-query values on a subset of the queries against the CPU engine (same gallery), which must
be identical.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _results import sync


def _peak_gb(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _compare(a: dict, b: dict) -> dict[str, Any]:
    """Bit-for-bit comparison of two unreduced results (NaN == NaN)."""
    import numpy as np

    keys = sorted(set(a) | set(b))
    bad = [k for k in keys if k not in a or k not in b or not np.array_equal(a[k], b[k], equal_nan=True)]
    max_diff = 0.0
    for k in keys:
        if k in a and k in b:
            x, y = np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float)
            ok = ~(np.isnan(x) & np.isnan(y))
            if ok.any():
                max_diff = max(max_diff, float(np.nanmax(np.abs(x[ok] - y[ok]), initial=0.0)))
    return {"identical": not bad, "n_metrics": len(keys), "different": bad[:10], "max_abs_diff": max_diff}


def check_metrics(
    device: str = "cuda",
    queries: int = 10_000,
    gallery: int = 1_000_000,
    dim: int = 128,
    levels: int = 3,
    subset: int = 200,
    top_k: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the metrics device check; returns wall times (s), peak device memory (GB) and equality."""
    import torch
    from metrics_speed import make_case

    from hglv2.metrics import evaluate

    out: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "queries": queries,
        "gallery": gallery,
        "dim": dim,
        "levels": levels,
        "k": top_k,
    }
    t0 = time.perf_counter()
    q, ql, g, gl = make_case(queries, gallery, dim, levels, seed=seed)
    out["data_s"] = round(time.perf_counter() - t0, 2)
    ks = tuple(k for k in (1, 10, 100) if k <= top_k)

    # warm-up (CUDA context, numba compilation), not timed
    t0 = time.perf_counter()
    for kw in ({}, {"top_k": top_k}):
        evaluate(q[:4], ql[:4], g[:5000], gl[:5000], recall_at=ks, device=device, **kw)
        evaluate(q[:4], ql[:4], g[:5000], gl[:5000], recall_at=ks, **kw)
    out["warmup_s"] = round(time.perf_counter() - t0, 2)

    for mode, kw in (("full", {}), ("top_k_mode", {"top_k": top_k})):
        _reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        res = evaluate(q, ql, g, gl, recall_at=ks, device=device, **kw)
        sync(device)
        wall = time.perf_counter() - t0
        out[mode] = {
            "wall_s": round(wall, 2),
            "queries_per_s": round(queries / wall, 1),
            "peak_device_gb": _peak_gb(device),
            "summary": {
                k: res[k]
                for k in ("H-AP", "NDCG", "ASI", "AP_level0", "R@1_level0", "mAP@100_level0")
                if k in res
            },
        }
        # equality with the CPU engine on the first `subset` queries (same gallery)
        s = min(subset, queries)
        t0 = time.perf_counter()
        cpu = evaluate(q[:s], ql[:s], g, gl, recall_at=ks, reduce=False, **kw)
        t_cpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        dev = evaluate(q[:s], ql[:s], g, gl, recall_at=ks, reduce=False, device=device, **kw)
        sync(device)
        t_dev = time.perf_counter() - t0
        out[mode]["subset"] = {"queries": s, "cpu_s": round(t_cpu, 2), "device_s": round(t_dev, 2)}
        out[mode]["subset"].update(_compare(cpu, dev))
        del res, cpu, dev
    out["cpu"] = f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    return out
