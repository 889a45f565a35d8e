"""Per-row cost of the compiled rank kernels (:mod:`hglv2.losses._rank_kernels`), band vs series.

Times ``ranks_forward`` (exact and SupRank) and ``ranks_backward`` on ``--rows`` query rows of the
``losses_speed.py`` inputs (B = N, D = 512, 4 images/class; levels = number of equal label columns
of class, cluster of 8 classes, one of 2 groups: SupHAP's pairs, or SupAP's with ``--binary``), one
thread, best of ``--repeats``. ``--series-cost`` overrides ``SERIES_COST`` (0: every row on the
series; a large value: every row on the direct band), to find the crossover the per-row choice uses.

Run (not part of CI):  python benchmarks/rank_kernels_rows.py --batch 512 --series-cost 0
                       python benchmarks/rank_kernels_rows.py --batch 512 --series-cost 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

# isort: off
import hglv2  # noqa: E402, F401  (before torch: sets the OpenMP wait policy default)
import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# isort: on

from losses_speed import make_inputs  # noqa: E402

import hglv2.losses.rank as rank_mod  # noqa: E402

_rk = rank_mod._rk

# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"batch": 256, "rows": 64, "repeats": 2}


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024, help="B = N")
    ap.add_argument("--rows", type=int, default=256, help="query rows timed")
    ap.add_argument("--binary", action="store_true", help="class labels only (SupAP's pairs)")
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--series-cost", type=float, default=None, help="override SERIES_COST")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    a = ap.parse_args()
    if a.quick:
        ap.set_defaults(**QUICK)
        a = ap.parse_args()
    if a.series_cost is not None:
        _rk.SERIES_COST = a.series_cost
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    emb, labels = make_inputs(a.batch)
    rows = min(a.rows, a.batch)
    scores = (emb[:rows] @ emb.t()).contiguous()
    if a.float64:
        scores = scores.double()
    cols = labels[:, :1] if a.binary else labels
    levels = (cols[:rows, None, :] == cols[None, :, :]).sum(-1)
    levels[torch.arange(rows), torch.arange(rows)] = 0  # the query is not its own neighbour
    pairs = (levels > 0).nonzero()
    pair_q, pair_k = pairs[:, 0], pairs[:, 1]
    args, n_lev = rank_mod._kernel_args(scores, levels, pair_q, pair_k, rank_mod.StepConfig("suprank"))
    S, lv, row_ptr, pk, c64, cd, coefs = args
    P = pair_q.numel()
    rank, rplus, dsum = np.zeros(P), np.zeros(P), np.zeros(P)
    tabs = np.zeros((0, 0))
    g = np.random.default_rng(0).uniform(0.5, 1.0, P)
    grad = np.zeros_like(S)

    common = (S, lv, row_ptr, pk)
    consts = (c64, cd, coefs)

    def forward(mode, ds):
        return lambda: _rk.ranks_forward(*common, *consts, tabs, mode, n_lev, rank, rplus, ds)

    exact = _best(forward(1, np.zeros(0)), a.repeats)
    fwd = _best(forward(0, dsum), a.repeats)
    bwd = _best(lambda: _rk.ranks_backward(*common, g, *consts, n_lev, dsum, grad), a.repeats)
    print(
        f"B = {a.batch}, {rows} rows, {P / rows:.0f} pairs/row, {S.dtype}, {coefs.shape[1]} series terms, "
        f"SERIES_COST = {_rk.SERIES_COST}"
    )
    for name, t in (("forward, exact", exact), ("forward, SupRank", fwd), ("backward, SupRank", bwd)):
        print(f"{name:18} {1e3 * t / rows:8.4f} ms/row")


if __name__ == "__main__":
    main()
