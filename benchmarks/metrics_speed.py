"""Speed and memory of hglv2.metrics.evaluate, side by side with its floor and its peers (not run in CI).

One run, same inputs:

1. the full hglv2 metric set (AP, mAP@R, mAP@100, R@k, P@k for every level; H-AP, NDCG, ASI) on
   Q x N x D with L levels, against its floor: the score matmul plus the row sort of the same
   int64 keys the engine sorts (rows sorted in place over ``--threads`` threads, key building not
   counted), chunk by chunk with the engine's chunk size into reused buffers; and against the
   bound of any engine that sorts those keys: the floor plus one streaming pass that builds the
   keys and one that reads the sorted keys computing a single AP per query; plus the peak RSS;
2. top-k mode (``evaluate(..., top_k=K)``: mAP@100, R@k, P@k, mAP@R where R <= K) against its
   floor, faiss's own exact k-NN search (``IndexFlatIP``: ``add`` timed apart, the floor is
   ``search``, on ``--threads`` OpenMP threads), and the matmul + ``torch.topk`` on the same chunks;
3. at a size the peers can hold in memory (``--peer-queries`` x ``--peer-gallery``, L = 1):
   pytorch-metric-learning's AccuracyCalculator (mean_average_precision_at_r, precision_at_1 from a
   faiss k-NN with k = the largest class) against hglv2's top-k mode with the same k, and
   torchmetrics (RetrievalMAP, RetrievalHitRate@k, RetrievalPrecision@k, RetrievalNormalizedDCG)
   against the full hglv2 evaluate; every side includes its score computation and the numbers are
   compared.

Every timing is repeated ``--repeat`` times, the sides of each comparison alternating, and the
results file (``--results``, :mod:`_results`) keeps min / median / max, the per-repetition ratios,
the load before and after, the CPU, threads and versions; ``make bench-tables`` writes the tables
of docs/performance.md from these files.

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

import _results

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


def bench_floor(q, ql, g, gl, chunk):
    """Seconds per stage of the floor and of the least an engine built on it adds, chunk by chunk
    into reused buffers as the engine does: ``matmul`` (the scores), ``keys`` (one streaming pass
    writing the engine's int64 keys, :func:`hglv2.metrics._fused.build_tagged_keys`), ``sort``
    (the row sort of those keys in place) and ``read`` (one streaming pass reading the sorted keys
    that computes one AP per row, :func:`_read_pass`)."""
    import numpy as np
    import torch

    from hglv2.metrics import _fused
    from hglv2.metrics.ranking import _sort_rows_inplace

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    n_levels = ql.shape[1]
    g_codes = _fused.padded_gallery_codes(gl.T)
    scores = torch.empty((chunk, len(g)), dtype=torch.float32)
    keys = torch.empty((chunk, len(g)), dtype=torch.int64).numpy()
    spent = dict.fromkeys(("matmul", "keys", "sort", "read"), 0.0)
    for lo in range(0, len(q), chunk):
        c = min(chunk, len(q) - lo)
        q_codes = _fused.padded_query_codes(ql[lo : lo + c])
        t0 = time.perf_counter()
        s = torch.matmul(qt[lo : lo + c], gt.T, out=scores[:c])
        t1 = time.perf_counter()
        k = keys[:c]
        me, bad = np.full(c, -1, dtype=np.int64), np.zeros(c, dtype=np.uint8)
        _fused.build_tagged_keys(s.view(torch.int32).numpy(), q_codes, g_codes, me, n_levels, k, bad)
        t2 = time.perf_counter()
        _sort_rows_inplace(k)
        t3 = time.perf_counter()
        _read_pass(k, (1 << n_levels) - 1, np.empty(c))
        t4 = time.perf_counter()
        for part, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[part] += dt
    return spent


def _read_pass(keys, mask, counts):
    """One AP per row from the sorted keys, the least metric work an engine on these keys does:
    the items whose key has a match mask are listed with their ranks (a branch-free pass, as the
    engine's), then AP = mean over them of (their count so far) / rank, one division each (the
    engine does two: the precision at the item's level and the H-AP term). Compiled on first use."""
    global _read_kernel
    if _read_kernel is None:
        import numpy as np
        from numba import njit, prange

        @njit(parallel=True)
        def kernel(keys, mask, counts, n_parts):
            n_rows, n = keys.shape
            for part in prange(n_parts):  # one scratch row per thread, as the engine's pass
                ranks = np.empty(n, dtype=np.int64)
                for r in range(part * n_rows // n_parts, (part + 1) * n_rows // n_parts):
                    j = 0
                    for p in range(n):
                        ranks[j] = p + 1
                        j += (keys[r, p] & mask) != 0
                    ap = 0.0
                    for i in range(j):
                        ap += (i + 1) / ranks[i]
                    counts[r] = ap / max(j, 1)

        _read_kernel = kernel
    from hglv2.metrics._fused import row_parts

    _read_kernel(keys, mask, counts, row_parts(keys.shape[0]))


_read_kernel = None


def bench_topk_floor(q, g, chunk, k):
    """Seconds for the matmul and for torch.topk on each chunk."""
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
    return t_mm, t_top


def bench_faiss(q, g, k, threads):
    """Seconds of faiss ``IndexFlatIP``: ``add`` (a copy of the gallery) and ``search`` (blocked
    matmul + heaps: the exact k-NN floor of the top-k mode)."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g))
    t1 = time.perf_counter()
    index.search(np.ascontiguousarray(q), k)
    return t1 - t0, time.perf_counter() - t1


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


def _section_full(args, case, out: _results.Results) -> None:
    """[1] the full ranking and all metrics against the matmul + int64 key sort floor, and the
    bound: the floor plus one pass building the keys and one reading them into one AP per query."""
    from hglv2.metrics import evaluate

    q, ql, g, gl = case
    rss0 = _peak_rss_gb()
    chunk = max(1, (args.memory_mb << 20) // (args.gallery * _ev_module().BYTES_PER_SCORE))
    chunk = min(chunk, args.queries)
    bench_floor(q[:chunk], ql[:chunk], g, gl, chunk)  # compiles the read pass and faults the buffers in
    t = {"ours": [], "matmul": [], "keys": [], "sort": [], "read": []}
    for _ in range(args.repeat):  # interleaved, so that both sides see the same load
        t0 = time.perf_counter()
        res = evaluate(q, ql, g, gl, memory_mb=args.memory_mb)
        t["ours"].append(time.perf_counter() - t0)
        for part, dt in bench_floor(q, ql, g, gl, chunk).items():
            t[part].append(dt)
    floor = [a + b for a, b in zip(t["matmul"], t["sort"], strict=True)]
    bound = [f + a + b for f, a, b in zip(floor, t["keys"], t["read"], strict=True)]
    rss = _peak_rss_gb()
    n_metrics = sum(1 for k in res if not k.startswith("n_"))
    ours = out.timing("full.ours", t["ours"], metrics=n_metrics, peak_rss_gb=rss)
    out.timing("full.matmul", t["matmul"])
    out.timing("full.key_sort", t["sort"])
    out.timing("full.key_build", t["keys"])
    out.timing("full.key_read", t["read"])
    fl = out.timing("full.floor", floor)
    out.timing("full.bound", bound)
    ratio = out.ratio("full.ratio", t["ours"], floor)
    least = out.ratio("full.bound_ratio", bound, floor)
    out.value("full.values", {k: float(res[k]) for k in ("H-AP", "NDCG", "ASI", "AP_level0")})
    parts = [_full_profile(q, ql, g, gl, args.memory_mb) for _ in range(args.repeat)]
    for part in parts[0]:
        out.timing(f"full.profile.{part}", [p[part] for p in parts])
    print(
        f"[1] full ranking, all {n_metrics} metrics: {_mm(ours)}   peak RSS {rss:.2f} GB (before {rss0:.2f})"
    )
    print("  " + "  ".join(f"{k} {res[k]:.4f}" for k in ("H-AP", "NDCG", "ASI", "AP_level0")))
    print(f"  floor: matmul + int64 key sort {_mm(fl)}")
    print(f"  ratio hglv2 / (matmul + key sort) = {_xx(ratio)}")
    print(f"  bound: floor + building the keys + one AP from the sorted keys = {_xx(least)} the floor")


PROFILED = {  # the stages of the full ranking: (module, function) -> profile name
    ("torch", "matmul"): "matmul",
    ("hglv2.metrics._fused", "build_tagged_keys"): "keys",
    ("hglv2.metrics.evaluate", "_sort_rows_inplace"): "sort",
    ("hglv2.metrics._fused", "fused_metrics_tagged"): "metric_pass",
}


def _full_profile(q, ql, g, gl, memory_mb: int) -> dict[str, float]:
    """Seconds of each stage of one full-ranking evaluate (:data:`PROFILED`, each call timed
    through a wrapper; ``rest``: the evaluate's other time), in a run of its own after the timed
    ones."""
    from hglv2.metrics import evaluate

    spent = dict.fromkeys([*PROFILED.values(), "rest"], 0.0)
    saved = []
    for (module, name), part in PROFILED.items():
        mod = importlib.import_module(module)
        fn = getattr(mod, name)
        saved.append((mod, name, fn))

        def timed(*a, _fn=fn, _part=part, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_part] += time.perf_counter() - t0

        setattr(mod, name, timed)
    try:
        t0 = time.perf_counter()
        evaluate(q, ql, g, gl, memory_mb=memory_mb)
        spent["rest"] = time.perf_counter() - t0 - sum(spent.values())
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    return spent


def _mm(entry: dict) -> str:
    return f"{entry['min']:.3f} / {entry['median']:.3f} / {entry['max']:.3f} s (min / median / max)"


def _xx(entry: dict) -> str:
    return f"{entry['min']:.2f} / {entry['median']:.2f} / {entry['max']:.2f}x (min / median / max)"


def _section_top_k(args, case, out: _results.Results) -> None:
    """[2] the top-k mode against faiss's search (the floor) and the matmul + torch.topk."""
    from hglv2.metrics import evaluate

    q, ql, g, gl = case
    k = args.top_k
    ks = tuple(x for x in (1, 10, 100) if x <= k)
    chunk = max(1, (args.memory_mb << 20) // (args.gallery * _ev_module().TOP_K_BYTES_PER_SCORE))
    t = {"ours": [], "add": [], "search": [], "mm_topk": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = evaluate(q, ql, g, gl, memory_mb=args.memory_mb, top_k=k, recall_at=ks)
        t["ours"].append(time.perf_counter() - t0)
        add, search = bench_faiss(q, g, k, args.threads)
        t["add"].append(add)
        t["search"].append(search)
        t["mm_topk"].append(sum(bench_topk_floor(q, g, chunk, k)))
    ours = out.timing("topk.ours", t["ours"], k=k)
    out.timing("topk.faiss_add", t["add"])
    search = out.timing("topk.faiss_search", t["search"])
    out.timing("topk.matmul_topk", t["mm_topk"])
    ratio = out.ratio("topk.ratio_faiss", t["ours"], t["search"])
    out.ratio("topk.ratio_matmul_topk", t["ours"], t["mm_topk"])
    names = [n for n in ("mAP@100_level0", "R@1_level0", "mAP@R_level0") if n in res]
    out.value("topk.values", {n: float(res[n]) for n in names})
    print(f"[2] top-k mode (k = {k}): {_mm(ours)}   " + "  ".join(f"{n} {res[n]:.4f}" for n in names))
    print(f"  floor: faiss IndexFlatIP search {_mm(search)} (add {min(t['add']):.3f} s apart)")
    print(f"  ratio hglv2 top-k / faiss search = {_xx(ratio)}")
    print(f"  matmul + torch.topk on the same chunks: {min(t['mm_topk']):.3f} s (min)")


def _section_peers(args, out: _results.Results) -> None:
    """[3] pytorch-metric-learning and torchmetrics against hglv2 on a size they hold (L = 1)."""
    from hglv2.metrics import evaluate

    ks = (1, 10)
    pq_, pql, pg, pgl = make_case(args.peer_queries, args.peer_gallery, args.dim, 1, seed=2)
    pql, pgl = pql[:, 0], pgl[:, 0]
    kmax = _max_class(pgl)
    print(
        f"\n[3] peers at Q={args.peer_queries} N={args.peer_gallery} D={args.dim} L=1 (largest class {kmax})"
    )
    try:
        times, last = _results.interleaved(
            {
                "ours": lambda: evaluate(pq_, pql, pg, pgl, recall_at=(1,), top_k=kmax),
                "pml": lambda: bench_pml(pq_, pql, pg, pgl)[1],
            },
            args.repeat,
        )
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"pytorch-metric-learning: failed ({type(exc).__name__}: {exc})")
    else:
        mine_k, pml_vals = last["ours"], last["pml"]
        diffs = {k: {"peer": float(v), "ours": float(mine_k[k])} for k, v in pml_vals.items()}
        out.timing("peers.ours_topk", times["ours"], k=kmax)
        out.timing("peers.pml", times["pml"], values=diffs)
        ratio = out.ratio("peers.pml_over_ours", times["pml"], times["ours"])
        text = ", ".join(f"{k} {v['peer']:.5f} vs ours {v['ours']:.5f}" for k, v in diffs.items())
        print(
            f"pytorch-metric-learning (mAP@R, P@1) {min(times['pml']):8.3f} s; hglv2 top_k={kmax} "
            f"{min(times['ours']):8.3f} s: pml / hglv2 = {_xx(ratio)}   [{text}]"
        )
    if args.peer_queries * args.peer_gallery > 50_000_000:
        print("torchmetrics skipped (it holds Q x N scores, targets and indexes at once: smaller sizes)")
        return
    try:
        times, last = _results.interleaved(
            {
                "ours": lambda: evaluate(pq_, pql, pg, pgl, recall_at=ks),
                "tm": lambda: bench_torchmetrics(pq_, pql, pg, pgl, ks)[1],
            },
            args.repeat,
        )
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"torchmetrics: failed ({type(exc).__name__}: {exc})")
        return
    mine, vals = last["ours"], last["tm"]
    diffs = {k: {"peer": float(v), "ours": float(mine[k])} for k, v in vals.items()}
    out.timing("peers.ours_full", times["ours"])
    out.timing("peers.torchmetrics", times["tm"], values=diffs)
    ratio = out.ratio("peers.torchmetrics_over_ours", times["tm"], times["ours"])
    text = ", ".join(f"{k} {v['peer']:.5f} vs ours {v['ours']:.5f}" for k, v in diffs.items())
    print(
        f"torchmetrics (AP, R@k, P@k, NDCG) {min(times['tm']):8.3f} s; hglv2 full evaluate "
        f"{min(times['ours']):8.3f} s: torchmetrics / hglv2 = {_xx(ratio)}   [{text}]"
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
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of each timing")
    ap.add_argument("--skip-full", action="store_true", help="skip section 1 (full ranking)")
    ap.add_argument("--skip-top-k", action="store_true", help="skip section 2 (top-k mode)")
    ap.add_argument("--skip-peers", action="store_true", help="skip section 3 (peers)")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    _results.add_results_option(ap)
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    # isort: off
    import hglv2  # noqa: F401  (first: its OpenMP wait policy reaches torch's and faiss's runtimes)
    import numpy as np
    import torch

    # isort: on

    from hglv2.metrics import evaluate
    from hglv2.metrics._fused import HAVE_NUMBA

    torch.set_num_threads(args.threads)
    out = _results.Results(__file__, args, threads=args.threads)
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
        _section_full(args, case, out)
    if not args.skip_top_k:
        _section_top_k(args, case, out)
    if not args.skip_peers:
        _section_peers(args, out)
    print(f"\nload average at the end {os.getloadavg()}")
    suffix = f"_Q{args.queries}_N{args.gallery}"
    out.write(args.results or _results.default_path(__file__, suffix, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
