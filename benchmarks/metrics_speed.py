"""Speed and memory of hglv2.metrics.evaluate, side by side with its floor and its peers (not run in CI).

One run, same inputs:

1. the full hglv2 metric set (AP, mAP@R, mAP@100, R@k, P@k for every level; H-AP, NDCG, ASI) on
   Q x N x D with L levels, against its floor: the score matmul plus a sort of the same int64 keys
   the engine sorts (``order_keys``, rows sorted in place over ``--threads`` threads, key building
   not counted), chunk by chunk with the engine's chunk size; plus the peak RSS;
2. top-k mode (``evaluate(..., top_k=K)``: mAP@100, R@k, P@k, mAP@R where R <= K) against the
   matmul + ``torch.topk`` floor on the same chunks, and faiss ``IndexFlatIP`` search for reference;
3. at a size the peers can hold in memory (``--peer-queries`` x ``--peer-gallery``, L = 1):
   pytorch-metric-learning's AccuracyCalculator (mean_average_precision_at_r, precision_at_1 from a
   faiss k-NN with k = the largest class) against hglv2's top-k mode with the same k, and
   torchmetrics (RetrievalMAP, RetrievalHitRate@k, RetrievalPrecision@k, RetrievalNormalizedDCG)
   against the full hglv2 evaluate; every side includes its score computation and the numbers are
   compared.

Example (the sizes of the published figures)::

    OMP_NUM_THREADS=2 python benchmarks/metrics_speed.py --queries 1000 --gallery 100000 --threads 2
    OMP_NUM_THREADS=2 python benchmarks/metrics_speed.py --queries 200 --gallery 500000 --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
import time

# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"queries": 200, "gallery": 20_000, "peer_queries": 100, "peer_gallery": 10_000, "repeat": 1}


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
    """Seconds for the matmul and for the row sort of the engine's int64 keys (not their building)."""
    import torch

    from hglv2.metrics.ranking import _sort_rows_inplace, order_keys

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    t_mm = t_sort = 0.0
    for lo in range(0, len(q), chunk):
        t0 = time.perf_counter()
        s = qt[lo : lo + chunk] @ gt.T
        t1 = time.perf_counter()
        keys = order_keys(s).numpy()
        del s
        t2 = time.perf_counter()
        _sort_rows_inplace(keys)
        t3 = time.perf_counter()
        t_mm += t1 - t0
        t_sort += t3 - t2
        del keys
    return t_mm, t_sort


def bench_topk_floor(q, g, chunk, k):
    """Seconds for the matmul and for torch.topk on each chunk; faiss IndexFlatIP search (matmul
    and selection together) for reference (None when faiss is missing)."""
    import numpy as np
    import torch

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    t_mm = t_top = 0.0
    for lo in range(0, len(q), chunk):
        t0 = time.perf_counter()
        s = qt[lo : lo + chunk] @ gt.T
        t1 = time.perf_counter()
        torch.topk(s, k, dim=1)
        t2 = time.perf_counter()
        t_mm += t1 - t0
        t_top += t2 - t1
        del s
    try:
        import faiss
    except ImportError:
        return t_mm, t_top, None
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g))
    index.search(np.ascontiguousarray(q), k)
    return t_mm, t_top, time.perf_counter() - t0


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


def _max_class(labels) -> int:
    import numpy as np

    return int(np.bincount(np.unique(labels, return_inverse=True)[1]).max())


def _ev_module():
    """The module ``hglv2.metrics.evaluate`` (the package exports the function of that name)."""
    return importlib.import_module("hglv2.metrics.evaluate")


def _section_full(args, case) -> None:
    """[1] the full ranking and all metrics against the matmul + int64 key sort floor."""
    from hglv2.metrics import evaluate

    q, ql, g, gl = case
    rss0 = _peak_rss_gb()
    chunk = max(1, (args.memory_mb << 20) // (args.gallery * _ev_module().BYTES_PER_SCORE))
    t_ours = t_mm = t_sort = float("inf")
    for _ in range(args.repeat):  # interleaved, so that both sides see the same load
        t0 = time.perf_counter()
        res = evaluate(q, ql, g, gl, memory_mb=args.memory_mb)
        t_ours = min(t_ours, time.perf_counter() - t0)
        mm, srt = bench_floor(q, g, chunk)
        t_mm, t_sort = min(t_mm, mm), min(t_sort, srt)
    rss = _peak_rss_gb()
    n_metrics = sum(1 for k in res if not k.startswith("n_"))
    print(
        f"[1] full ranking, all {n_metrics} metrics: {t_ours:8.2f} s   "
        f"peak RSS {rss:.2f} GB (before {rss0:.2f})"
    )
    print("  " + "  ".join(f"{k} {res[k]:.4f}" for k in ("H-AP", "NDCG", "ASI", "AP_level0")))
    print(f"  floor: matmul {t_mm:.2f} s + int64 key sort {t_sort:.2f} s = {t_mm + t_sort:.2f} s")
    print(f"  ratio hglv2 / (matmul + key sort) = {t_ours / (t_mm + t_sort):.2f}x")


def _section_top_k(args, case) -> None:
    """[2] the top-k mode against the matmul + torch.topk floor and faiss."""
    from hglv2.metrics import evaluate

    q, ql, g, gl = case
    k = args.top_k
    ks = tuple(x for x in (1, 10, 100) if x <= k)
    chunk = max(1, (args.memory_mb << 20) // (args.gallery * _ev_module().TOP_K_BYTES_PER_SCORE))
    t_ours = t_mm = t_top = t_faiss = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = evaluate(q, ql, g, gl, memory_mb=args.memory_mb, top_k=k, recall_at=ks)
        t_ours = min(t_ours, time.perf_counter() - t0)
        mm, top, fa = bench_topk_floor(q, g, chunk, k)
        t_mm, t_top = min(t_mm, mm), min(t_top, top)
        t_faiss = min(t_faiss, fa) if fa is not None else t_faiss
    print(
        f"[2] top-k mode (k = {k}): {t_ours:8.3f} s   "
        + "  ".join(f"{n} {res[n]:.4f}" for n in ("mAP@100_level0", "R@1_level0", "mAP@R_level0") if n in res)
    )
    print(
        f"  floor: matmul {t_mm:.3f} s + torch.topk {t_top:.3f} s = {t_mm + t_top:.3f} s; "
        f"faiss IndexFlatIP search {t_faiss:.3f} s"
    )
    print(f"  ratio hglv2 top-k / (matmul + topk) = {t_ours / (t_mm + t_top):.2f}x")


def _best(fn, repeat: int):
    """(best time of ``repeat`` runs of ``fn``, its last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _section_peers(args) -> None:
    """[3] pytorch-metric-learning and torchmetrics against hglv2 on a size they hold (L = 1)."""
    from hglv2.metrics import evaluate

    ks = (1, 10)
    pq_, pql, pg, pgl = make_case(args.peer_queries, args.peer_gallery, args.dim, 1, seed=2)
    pql, pgl = pql[:, 0], pgl[:, 0]
    kmax = _max_class(pgl)
    print(
        f"\n[3] peers at Q={args.peer_queries} N={args.peer_gallery} D={args.dim} L=1 (largest class {kmax})"
    )
    t_topk = t_pml = t_full = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        mine_k = evaluate(pq_, pql, pg, pgl, recall_at=(1,), top_k=kmax)
        t_topk = min(t_topk, time.perf_counter() - t0)
        try:
            t, pml_vals = bench_pml(pq_, pql, pg, pgl)
            t_pml = min(t_pml, t)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"pytorch-metric-learning: failed ({type(exc).__name__}: {exc})")
            pml_vals = None
    if pml_vals is not None:
        diffs = ", ".join(f"{k} {v:.5f} vs ours {mine_k[k]:.5f}" for k, v in pml_vals.items())
        print(
            f"pytorch-metric-learning (mAP@R, P@1) {t_pml:8.3f} s; hglv2 top_k={kmax} {t_topk:8.3f} s: "
            f"hglv2 is {t_pml / t_topk:.1f}x faster   [{diffs}]"
        )
    if args.peer_queries * args.peer_gallery <= 50_000_000:
        t_full, mine = _best(lambda: evaluate(pq_, pql, pg, pgl, recall_at=ks), args.repeat)
        try:
            t_tm, vals = bench_torchmetrics(pq_, pql, pg, pgl, ks)
            diffs = ", ".join(f"{k} {v:.5f} vs ours {mine[k]:.5f}" for k, v in vals.items())
            print(
                f"torchmetrics (AP, R@k, P@k, NDCG) {t_tm:8.3f} s; hglv2 full evaluate {t_full:8.3f} s: "
                f"hglv2 is {t_tm / t_full:.1f}x faster   [{diffs}]"
            )
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"torchmetrics: failed ({type(exc).__name__}: {exc})")
    else:
        print(
            "torchmetrics skipped (it holds Q x N scores, targets and indexes at once: "
            "use a smaller peer size)"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=100, help="k of the top-k mode section")
    ap.add_argument("--peer-queries", type=int, default=1000)
    ap.add_argument("--peer-gallery", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs for each timing")
    ap.add_argument("--skip-full", action="store_true", help="skip section 1 (full ranking)")
    ap.add_argument("--skip-top-k", action="store_true", help="skip section 2 (top-k mode)")
    ap.add_argument("--skip-peers", action="store_true", help="skip section 3 (peers)")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
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
    if not args.skip_top_k:
        evaluate(wq, wl, wg, wgl, top_k=100)

    q, ql, g, gl = make_case(args.queries, args.gallery, args.dim, args.levels)
    classes = ", ".join(str(len(np.unique(gl[:, lev]))) for lev in range(args.levels))
    print(f"\nQ={args.queries} N={args.gallery} D={args.dim} L={args.levels} (classes per level: {classes})")
    case = (q, ql, g, gl)
    if not args.skip_full:
        _section_full(args, case)
    if not args.skip_top_k:
        _section_top_k(args, case)
    if not args.skip_peers:
        _section_peers(args)
    print(f"\nload average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
