"""The GPU check: figures of the metrics, the losses and training on a CUDA device, as one JSON.

    python benchmarks/gpu_check.py [--part metrics|losses|train ...] [--out FILE]  # a GPU, < 8 min on an H200
    python benchmarks/gpu_check.py --quick    # small sizes: on the GPU if there is one, else the CPU
    python benchmarks/gpu_check.py --smoke    # small sizes on the CPU (checks the script runs)

Parts (all by default):

* ``metrics`` (``_gpu_metrics.py``): ``evaluate`` on the device at Q = 10,000 x N = 1,000,000 x
  D = 128, L = 3, full ranking and top-k mode (wall time, queries/s, peak memory); the per-query
  values of a subset must be identical to the CPU engine's;
* ``losses`` (``_gpu_losses.py``): SupAP / SupHAP / SupNDCG forward + backward at B = 4096 (time,
  peak memory), and the device values and gradients against the CPU kernels at B = 512;
* ``train``: the harness on the h-gldv2 recipe over generated photo-sized JPEGs (``_gpu_train.py``:
  images/s steady and over the run against the compute-only floor, peak memory), and the recipe's
  step alone (``_gpu_recipe.py``: images/s at B = 256 and, with gradient caching, B = 4096; the
  cached gradient against the direct one).

Without CUDA (and without ``--smoke`` / ``--quick``) it prints one line and exits 0. Figures go to
``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``; with
``--smoke`` / ``--quick`` only to ``--out``), rewritten after each part. Exit status 1 when a part
fails or the device metrics differ from the CPU engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

PARTS = ("metrics", "losses", "train")


def run_metrics(device: torch.device, small: bool) -> dict[str, Any]:
    from _gpu_metrics import check_metrics

    if small:
        return check_metrics(device=str(device), queries=100, gallery=5_000, subset=20)
    return check_metrics(device=str(device), queries=10_000, gallery=1_000_000, subset=200)


def run_losses(device: torch.device, small: bool) -> dict[str, Any]:
    from _gpu_losses import check_losses

    return check_losses(device, batch=64 if small else 4096, compare_batch=32 if small else 512)


def run_train(device: torch.device, small: bool, args: argparse.Namespace) -> dict[str, Any]:
    from _gpu_recipe import check_recipe
    from _gpu_train import check_train, summary

    harness = check_train(device, small, steps=args.train_steps, data=args.data)
    print(summary(harness), flush=True)
    return {"harness": harness, "recipe": check_recipe(device, small, steps=args.steps)}


def failed(part: str, figures: dict[str, Any]) -> bool:
    """A part that raised, or device metrics that differ from the CPU engine's."""
    if "error" in figures:
        return True
    if part == "metrics":
        return not all(figures[mode]["subset"]["identical"] for mode in ("full", "top_k_mode"))
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", action="append", choices=PARTS, help="run this part (repeatable; default all)")
    ap.add_argument("--smoke", action="store_true", help="small sizes on the CPU")
    ap.add_argument("--quick", action="store_true", help="small sizes, on the GPU when there is one")
    ap.add_argument("--out", default=None, help="JSON output")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of the recipe step at B = 256 (100)")
    ap.add_argument("--train-steps", type=int, default=300, help="steps of the harness run")
    ap.add_argument(
        "--data", default=None, help="folder of the harness's generated data (default: temporary)"
    )
    return ap.parse_args(argv)


def output_path(args: argparse.Namespace) -> Path | None:
    if args.out:
        return Path(args.out)
    if args.smoke or args.quick:
        return None
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    small = args.smoke or args.quick
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not small:
        print("gpu_check: no CUDA device, the GPU parts skip (--smoke runs them small on the CPU)")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out, t_all = output_path(args), time.perf_counter()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"smoke": small, "torch": torch.__version__, "device": name}
    runners = {"metrics": run_metrics, "losses": run_losses, "train": lambda d, s: run_train(d, s, args)}
    bad = []
    for part in args.part or PARTS:
        t0 = time.perf_counter()
        try:
            report[part] = runners[part](device, small)
        except Exception as exc:  # record and go on: one failing part must not hide the others
            report[part] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report[part]["seconds"] = round(time.perf_counter() - t0, 1)
        if failed(part, report[part]):
            bad.append(part)
        print(part, "FAILED" if part in bad else "ok", f"in {report[part]['seconds']} s", flush=True)
        report["total_s"] = round(time.perf_counter() - t_all, 1)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_name(out.name + ".tmp").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            out.with_name(out.name + ".tmp").replace(out)
    if out is not None:
        print(f"wrote {out}")
    if bad:
        print("gpu_check: failed:", ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
