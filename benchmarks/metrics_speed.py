"""Speed and memory of hglv2.metrics.evaluate, side by side with its floor and its peers (not run in CI).

One run, same inputs:

1. the full hglv2 metric set (AP, mAP@R, mAP@100, R@k, P@k for every level; H-AP, NDCG, ASI) on
   Q x N x D with L levels, against a bare argsort of the same score matrix (torch and numpy,
   chunk by chunk, matmul not counted in the floor), plus the peak RSS after the hglv2 run;
2. at a size the peers can hold in memory (``--peer-queries`` x ``--peer-gallery``), hglv2 against
   torchmetrics (RetrievalMAP, RetrievalHitRate@k, RetrievalPrecision@k, RetrievalNormalizedDCG)
   and pytorch-metric-learning's AccuracyCalculator (mean_average_precision_at_r, precision_at_1),
   every side including its score computation; the numbers are compared too.

Example (the issue's target size)::

    OMP_NUM_THREADS=2 python benchmarks/metrics_speed.py --queries 2000 --gallery 200000 --dim 128 --levels 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_case(n_q, n_g, dim, n_levels, seed=0, per_class=10):
    """Unit-norm random embeddings with tree labels: fine classes of ~``per_class`` items, then
    coarser levels with 500, 2 classes (H-GLDv2-like: the top level splits the gallery in two)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_fine = max(1, n_g // per_class)
    sizes = [n_fine, 500, 2, 1][:n_levels]
    fine = rng.integers(0, n_fine, size=n_g + n_q)
    cols = [fine]
    for lev in range(1, n_levels):
        cols.append(fine * min(sizes[lev], n_fine) // n_fine)
    labels = np.stack(cols, 1)
    centers = rng.normal(size=(n_fine, dim)).astype(np.float32)
    emb = centers[fine] + 1.5 * rng.normal(size=(n_g + n_q, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb[:n_q], labels[:n_q], emb[n_q:], labels[n_q:]


def bench_floor(q, g, chunk):
    """Seconds for matmul and for a bare torch/numpy argsort of the same score matrix."""
    import numpy as np
    import torch

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    t_mm = t_torch = t_np = 0.0
    for lo in range(0, len(q), chunk):
        t0 = time.perf_counter()
        s = qt[lo : lo + chunk] @ gt.T
        t1 = time.perf_counter()
        torch.argsort(s, dim=1, descending=True)
        t2 = time.perf_counter()
        np.argsort(-s.numpy(), axis=1)
        t3 = time.perf_counter()
        t_mm += t1 - t0
        t_torch += t2 - t1
        t_np += t3 - t2
        del s
    return t_mm, t_torch, t_np


def bench_torchmetrics(q, ql, g, gl, ks):
    import torch
    from torchmetrics.retrieval import (
        RetrievalHitRate,
        RetrievalMAP,
        RetrievalNormalizedDCG,
        RetrievalPrecision,
    )

    t0 = time.perf_counter()
    s = torch.from_numpy(q) @ torch.from_numpy(g).T
    target = torch.from_numpy(ql[:, None] == gl[None, :])
    idx = torch.arange(len(q))[:, None].expand_as(s)
    preds, target, idx = s.reshape(-1), target.reshape(-1), idx.reshape(-1)
    out = {"AP_level0": float(RetrievalMAP()(preds, target, indexes=idx))}
    for k in ks:
        out[f"R@{k}_level0"] = float(RetrievalHitRate(top_k=k)(preds, target, indexes=idx))
        out[f"P@{k}_level0"] = float(RetrievalPrecision(top_k=k)(preds, target, indexes=idx))
    out["NDCG"] = float(RetrievalNormalizedDCG()(preds, target.long(), indexes=idx))
    return time.perf_counter() - t0, out


def bench_pml(q, ql, g, gl):
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    t0 = time.perf_counter()
    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    res = calc.get_accuracy(
        torch.from_numpy(q),
        torch.from_numpy(ql),
        torch.from_numpy(g),
        torch.from_numpy(gl),
        ref_includes_query=False,
    )
    out = {"mAP@R_level0": res["mean_average_precision_at_r"], "R@1_level0": res["precision_at_1"]}
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--gallery", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--peer-queries", type=int, default=500)
    ap.add_argument("--peer-gallery", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument(
        "--skip-floor", action="store_true", help="only time hglv2 (e.g. for the 1M gallery check)"
    )
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args(argv)

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from hglv2.metrics import evaluate
    from hglv2.metrics._fused import HAVE_NUMBA

    torch.set_num_threads(args.threads)
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}, torch threads {args.threads}, "
        f"numba {'yes' if HAVE_NUMBA else 'no'}"
    )
    print(f"command: {' '.join([sys.executable.split('/')[-1]] + sys.argv)}")

    # warm-up: numba compilation / caches, not timed
    wq, wl, wg, wgl = make_case(8, 2000, 16, args.levels, seed=1)
    for method in ("sort", "search"):
        evaluate(wq, wl, wg, wgl, method=method)

    q, ql, g, gl = make_case(args.queries, args.gallery, args.dim, args.levels)
    rss0 = _peak_rss_gb()
    t0 = time.perf_counter()
    res = evaluate(q, ql, g, gl, memory_mb=args.memory_mb)
    t_ours = time.perf_counter() - t0
    rss = _peak_rss_gb()
    n_metrics = sum(1 for k in res if not k.startswith("n_"))
    classes = ", ".join(str(len(np.unique(gl[:, lev]))) for lev in range(args.levels))
    print(
        f"\n[1] Q={args.queries} N={args.gallery} D={args.dim} L={args.levels} (classes per level: {classes})"
    )
    print(
        f"hglv2 evaluate, all {n_metrics} metrics: {t_ours:8.2f} s   peak RSS {rss:.2f} GB "
        f"(inputs alone {rss0:.2f} GB)"
    )
    summary = ("H-AP", "NDCG", "ASI", "AP_level0")
    print("  " + "  ".join(f"{k} {res[k]:.4f}" for k in summary))
    if not args.skip_floor:
        chunk = max(1, (args.memory_mb << 20) // (args.gallery * 48))
        t_mm, t_torch, t_np = bench_floor(q, g, chunk)
        floor = min(t_torch, t_np)
        print(f"bare argsort of the same scores: torch {t_torch:.2f} s, numpy {t_np:.2f} s", end="")
        print(f" (+ matmul {t_mm:.2f} s)")
        print(
            f"ratio hglv2 all metrics / fastest bare argsort = {t_ours / floor:.2f}x "
            f"(/ (matmul + argsort) = {t_ours / (floor + t_mm):.2f}x)"
        )

    if not args.skip_peers:
        ks = (1, 10)
        pq_, pql, pg, pgl = make_case(args.peer_queries, args.peer_gallery, args.dim, 1, seed=2)
        pql, pgl = pql[:, 0], pgl[:, 0]
        t_mine = float("inf")
        for _ in range(2):  # best of two (both sides get a warm run)
            t0 = time.perf_counter()
            mine = evaluate(pq_, pql, pg, pgl, recall_at=ks)
            t_mine = min(t_mine, time.perf_counter() - t0)
        print(
            f"\n[2] peers at Q={args.peer_queries} N={args.peer_gallery} D={args.dim} (L=1; hglv2 still "
            f"computes its full set)"
        )
        print(f"hglv2 evaluate: {t_mine:8.3f} s")
        for name, fn in (
            ("torchmetrics", lambda: bench_torchmetrics(pq_, pql, pg, pgl, ks)),
            ("pytorch-metric-learning", lambda: bench_pml(pq_, pql, pg, pgl)),
        ):
            try:
                t_peer, vals = fn()
                t_peer = min(t_peer, fn()[0])
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{name}: failed ({type(exc).__name__}: {exc})")
                continue
            diffs = ", ".join(f"{k} {v:.5f} vs ours {mine[k]:.5f}" for k, v in vals.items())
            print(f"{name:24s} {t_peer:8.3f} s   hglv2 is {t_peer / t_mine:.1f}x faster   [{diffs}]")
    print(f"\nload average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
