"""Speed and memory of hglv2's chunked SupAP / SupHAP against the dense B x N x N formulation.

The baseline re-implements the reference code's quick path (SupRank / HAPPIER ``quick_forward`` +
``step_rank``): it builds the (B, N, N) difference tensor, applies the steps with boolean-mask
assignments on clones of it, and lets autograd keep everything for the backward pass. Both sides get
the same inputs: B = N (the batch is its own reference set), D = 512, 4 images per class and L = 3
label levels (class, cluster of 8 classes, one of 2 super-groups, like H-GLDv2's landmark / cluster /
natural-or-human-made).

Run (not part of CI):  OMP_NUM_THREADS=2 python benchmarks/losses_speed.py [--table-only] [--full]
                       OMP_NUM_THREADS=2 python benchmarks/losses_speed.py --ratios [--full]

``--ratios`` measures SupAP, SupHAP and SupNDCG side by side at B = 256, 1024, 4096 (forward +
backward, fresh subprocess each, time and peak RSS growth) with the compiled CPU kernels ("hglv2")
and with the chunked torch path ("torch": the path CUDA tensors take; at
B = 4096 only with ``--full``, minutes per step), the three losses alternating over ``--repeat``
repetitions, and writes SupHAP/SupAP and SupNDCG/SupAP per repetition to its own results file
(``losses_speed_ratios.json``).

Peak memory is the growth of the peak resident set size (VmHWM, reset just before) of a fresh
subprocess during one forward + backward pass. The largest batch that fits in 8 GB is extrapolated
from measured peaks (B^3 fit for dense, B^2 fit for hglv2, which is also measured up to B = 4096),
never by exhausting the shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# isort: off
import hglv2  # noqa: E402, F401  (before torch: sets the OpenMP wait policy default)
import torch  # noqa: E402

# isort: on

import _results  # noqa: E402

import hglv2.losses.rank as rank_mod  # noqa: E402
from hglv2.losses import SupAP, SupHAP, SupNDCG  # noqa: E402

TAU, RHO, DELTA, START, OFFSET = 0.01, 100.0, 0.05, 0.5, 1.44


# ---------------------------------------------------------------------------------------------
# Dense baseline (the reference code's method, written here from its description).
def _tau_sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + (-t / TAU).clamp(-50, 50).exp())


@torch.no_grad()
def _heaviside(t: torch.Tensor) -> torch.Tensor:
    return torch.heaviside(t, values=torch.tensor(1.0, dtype=t.dtype))


# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"table_only": True, "repeat": 1}


def _dense_step_rank(tens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inferior = target.unsqueeze(2) > target.unsqueeze(1)
    tens[~inferior] = _heaviside(tens[~inferior])
    pos = tens > 0
    margin = tens > DELTA
    tens[inferior & pos & ~margin] = START + _tau_sigmoid(tens[inferior & pos & ~margin])
    tens[inferior & pos & margin] = RHO * (tens[inferior & pos & margin] - DELTA) + OFFSET
    tens[inferior & ~pos] = _tau_sigmoid(tens[inferior & ~pos])
    return tens


def dense_loss(emb: torch.Tensor, labels: torch.Tensor, hierarchical: bool) -> torch.Tensor:
    scores = emb @ emb.t()
    if hierarchical:
        target = (labels.unsqueeze(1) == labels.unsqueeze(0)).sum(-1)
        rel = torch.zeros(target.shape, dtype=scores.dtype)
        for lvl in range(1, labels.size(1) + 1):  # pop relevance, w(l) = l
            m = target == lvl
            rel = torch.where(m, lvl / m.sum(1, keepdim=True).clamp(min=1), rel)
    else:
        target = (labels[:, :1].unsqueeze(1) == labels[:, :1].unsqueeze(0)).sum(-1)
        rel = target.to(scores.dtype)
    mask = 1.0 - torch.eye(target.size(1)).unsqueeze(0)
    sim_diff = scores.unsqueeze(1) - scores.unsqueeze(1).permute(0, 2, 1)
    min_rel = torch.where(rel.unsqueeze(1) < rel.unsqueeze(2), rel.unsqueeze(1), rel.unsqueeze(2))
    rank = 1.0 + (_dense_step_rank(sim_diff.clone(), target) * mask).sum(-1)
    rank_plus = _heaviside(sim_diff.clone()) * mask
    rank_plus = rel + (rank_plus * min_rel).sum(-1)
    ap = (rank_plus / rank).sum(-1) / rel.sum(-1)
    return (1.0 - ap).mean()


# ---------------------------------------------------------------------------------------------
def make_inputs(B: int, D: int = 512, per_class: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    cls = torch.arange(B) // per_class
    labels = torch.stack([cls, cls // 8, cls % 2], 1)
    perm = torch.randperm(B, generator=g)
    return emb[perm].contiguous(), labels[perm].contiguous()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark (Linux clear_refs 5) and return the current RSS in kB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS")


def _peak_kb(before_kb: int) -> int:
    """Peak RSS growth since :func:`_reset_peak` (falls back to ru_maxrss)."""
    try:
        return _status_kb("VmHWM") - before_kb
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb


def run_one(impl: str, loss: str, B: int, repeats: int) -> dict:
    emb, labels = make_inputs(B)
    hier = loss == "SupHAP"
    rank_mod.KERNELS_ENABLED = impl != "torch"
    if impl == "dense":
        fn = lambda e: dense_loss(e, labels, hier)  # noqa: E731
    else:
        loss_fn = {"SupAP": SupAP, "SupHAP": SupHAP, "SupNDCG": SupNDCG}[loss]()
        fn = lambda e: loss_fn(e, labels)  # noqa: E731
        small = emb[:16].clone().requires_grad_(True)
        loss_fn(small, labels[:16]).backward()  # compile / load the kernels outside the timed step
    rss_before = _reset_peak()
    x = emb.clone().requires_grad_(True)
    t0 = time.perf_counter()
    value = fn(x)
    value.backward()
    first = time.perf_counter() - t0
    peak_kb = _peak_kb(rss_before)
    times = [first]
    for _ in range(repeats - 1):
        x = emb.clone().requires_grad_(True)
        t0 = time.perf_counter()
        v = fn(x)
        v.backward()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "impl": impl,
        "loss": loss,
        "B": B,
        "value": float(value.detach()),
        "grad": x.grad.flatten()[:4096].tolist(),
        "time_s": times[len(times) // 2],
        "times": times,
        "peak_mb": max(peak_kb, 0) / 1024.0,
    }


def child(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit_max_batch(points: list[dict], power: int, budget_mb: float) -> int:
    """Largest B with a * B**power <= budget (a: the largest measured per-unit cost)."""
    a = max(p["peak_mb"] / p["B"] ** power for p in points)
    return int((budget_mb / a) ** (1.0 / power))


def thread_check(procs: int = 4) -> None:
    """Step-time spread between fresh processes (the same SupHAP step at B = 256, 3 steps each) for
    1 vs 2 threads, OpenMP's default (active) vs passive waiting, kernels vs the torch path."""
    print("\n== SupHAP B = 256 fwd + bwd: min / median / max step time over", procs, "processes x 3 steps")
    for impl in ("hglv2", "torch"):
        for threads, policy in ((1, None), (2, None), (2, "PASSIVE")):  # None: libgomp's default
            # policy None: libgomp's default (an empty value, which hglv2's default leaves alone)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=policy or "")
            times = []
            for _ in range(procs):
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--child", impl, "SupHAP", "256", "3"],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                times += json.loads(out.stdout.strip().splitlines()[-1])["times"]
            times.sort()
            print(
                f"{impl:6} threads={threads} OMP_WAIT_POLICY={policy or '(unset)':8} "
                f"{times[0]:7.3f} {times[len(times) // 2]:7.3f} {times[-1]:7.3f} s",
                flush=True,
            )


RATIO_LOSSES = ("SupAP", "SupHAP", "SupNDCG")


def ratios(th: int, full: bool, repeat: int, out: _results.Results) -> None:
    """SupAP vs SupHAP vs SupNDCG (kernels, and the torch path), forward + backward: at each B the
    three losses run in turn in fresh subprocesses, ``repeat`` times, and each loss's cost relative
    to SupAP is taken repetition by repetition."""
    print(f"\n== forward + backward, B = N, D = 512, L = 3; {repeat} alternating repetitions, each the")
    print("   median of 3 steps (1 at B = 4096 and for the torch path at B = 1024); min / median")
    print(f"{'impl':6} {'B':>5} {'loss':8} {'s/step':>15} {'peak MB':>9} {'/ SupAP':>15}")
    for impl in ("hglv2", "torch"):
        for B in (256, 1024, 4096):
            if impl == "torch" and B == 4096 and not full:
                continue
            steps = "3" if B < 1024 or (B == 1024 and impl == "hglv2") else "1"
            runs: dict[str, list[dict]] = {loss: [] for loss in RATIO_LOSSES}
            for _ in range(repeat):
                for loss in RATIO_LOSSES:
                    runs[loss].append(child([impl, loss, str(B), steps], th))
            base = [r["time_s"] for r in runs["SupAP"]]
            for loss, rs in runs.items():
                peak = max(r["peak_mb"] for r in rs)
                t = out.timing(f"ratios.{impl}.{B}.{loss}", [r["time_s"] for r in rs], peak_mb=peak)
                rel = out.ratio(f"ratios.{impl}.{B}.{loss}.over_SupAP", [r["time_s"] for r in rs], base)
                print(
                    f"{impl:6} {B:5d} {loss:8} {t['min']:7.3f} {t['median']:7.3f} {peak:9.1f} "
                    f"{rel['min']:6.2f} {rel['median']:6.2f}x",
                    flush=True,
                )


def _compare_at_256(loss: str, th: int, repeat: int, out: _results.Results) -> None:
    """Dense and hglv2 at B = 256 in fresh subprocesses, alternating ``repeat`` times; each sample
    is the median of 5 steps of one subprocess."""
    runs: dict[str, list[dict]] = {"dense": [], "hglv2": []}
    for _ in range(repeat):
        for impl in runs:
            runs[impl].append(child([impl, loss, "256", "5"], th))
    d, h = runs["dense"][-1], runs["hglv2"][-1]
    dg = max(abs(p - q) for p, q in zip(d["grad"], h["grad"], strict=True))
    peak = {impl: max(r["peak_mb"] for r in rs) for impl, rs in runs.items()}
    td = out.timing(f"{loss}.dense", [r["time_s"] for r in runs["dense"]], peak_mb=peak["dense"])
    th_ = out.timing(f"{loss}.hglv2", [r["time_s"] for r in runs["hglv2"]], peak_mb=peak["hglv2"])
    ratio = out.ratio(
        f"{loss}.ratio", [r["time_s"] for r in runs["dense"]], [r["time_s"] for r in runs["hglv2"]]
    )
    out.value(f"{loss}.diff", {"loss": abs(d["value"] - h["value"]), "grad_max": dg})
    print(
        f"{loss:8} {td['min']:9.3f} {th_['min']:9.4f} {ratio['min']:8.1f}x "
        f"{peak['dense']:9.1f} {peak['hglv2']:9.1f} {peak['dense'] / max(peak['hglv2'], 1e-3):8.1f}x "
        f"{abs(d['value'] - h['value']):9.1e} {dg:9.1e}"
    )
    print(f"{'':8} dense / hglv2 per repetition: min {ratio['min']:.1f}x, median {ratio['median']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "LOSS", "B", "REPEATS"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--full", action="store_true", help="also run SupHAP at B = 4096 (minutes on CPU)")
    ap.add_argument("--table-only", action="store_true", help="only the B = 256 comparison")
    ap.add_argument("--ratios", action="store_true", help="SupHAP/SupNDCG vs SupAP at B = 256, 1024, 4096")
    ap.add_argument("--thread-check", action="store_true", help="step-time spread vs threads/OpenMP wait")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    ap.add_argument("--repeat", type=int, default=3, help="alternating dense / hglv2 subprocesses at B = 256")
    _results.add_results_option(ap)
    a = ap.parse_args()
    if a.quick:
        ap.set_defaults(**QUICK)
        a = ap.parse_args()
    if a.child:
        impl, loss, B, rep = a.child
        print(json.dumps(run_one(impl, loss, int(B), int(rep))))
        return
    th = a.threads
    print(f"torch {torch.__version__}, {th} thread(s), {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    if a.ratios:
        out = _results.Results(__file__, {"threads": th, "repeat": a.repeat, "full": a.full}, threads=th)
        ratios(th, a.full, a.repeat, out)
        out.write(a.results or _results.default_path(__file__, "_ratios", a.quick))
        return
    if a.thread_check:
        thread_check()
        return
    print(f"\n== B = N = 256, D = 512, L = 3: forward + backward (median of 5 steps; min of {a.repeat} runs)")
    print(
        f"{'loss':8} {'dense s':>9} {'hglv2 s':>9} {'speed-up':>9} {'dense MB':>9} {'hglv2 MB':>9} "
        f"{'mem ratio':>9} {'|dloss|':>9} {'|dgrad|':>9}"
    )
    out = _results.Results(__file__, {"batch": 256, "threads": th, "repeat": a.repeat}, threads=th)
    for loss in ("SupAP", "SupHAP"):
        _compare_at_256(loss, th, a.repeat, out)
    out.write(a.results or _results.default_path(__file__, "", a.quick))
    if a.table_only:
        return
    print("\n== peak memory (RSS growth of one forward + backward) vs B = N; largest B within 8 GB")
    budget = 8 * 1024.0
    for loss in ("SupAP", "SupHAP"):
        dense_pts = [child(["dense", loss, str(B), "1"], th) for B in (128, 192, 256)]
        sizes = (512, 1024, 2048, 4096) if (loss == "SupAP" or a.full) else (512, 1024, 2048)
        ours = [child(["hglv2", loss, str(B), "1"], th) for B in sizes]
        for p in dense_pts + ours:
            print(f"{loss:8} {p['impl']:6} B={p['B']:5d}: {p['peak_mb']:9.1f} MB  {p['time_s']:9.3f} s/step")
        print(
            f"{loss:8} largest B in 8 GB: dense ~{_fit_max_batch(dense_pts, 3, budget)} (B^3 fit), "
            f"hglv2 ~{_fit_max_batch(ours, 2, budget)} (B^2 fit)"
        )
        if 4096 not in sizes:
            big = ours[-1]
            est = big["time_s"] * (4096 / big["B"]) ** 3
            print(f"{loss:8} hglv2 B= 4096: ~{est:.0f} s/step (extrapolated as B^3 from B={big['B']})")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
