"""Results files of the benchmarks: each figure with the conditions it was measured under.

Every benchmark script writes one JSON file (``--results PATH``; by default
``benchmarks/results/<script><size>.json``, or ``benchmarks/results/quick/...`` with ``--quick``)
holding:

- ``command``, ``started`` / ``finished`` (UTC), ``load_before`` / ``load_after`` (the 1, 5 and 15
  minute load averages), ``machine`` (CPU model, cores, thread settings) and ``versions``;
- ``figures``: named timings, each ``{"min", "median", "max", "n", "samples", "unit"}`` over
  repetitions that alternate between the sides of a comparison (so that both see the same load),
  ratios computed repetition by repetition from such paired samples, and plain values.

``benchmarks/_tables.py`` (``make bench-tables``) turns these files into the performance tables of
the docs; no figure is typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "numpy",
    "torch",
    "numba",
    "faiss-cpu",
    "pyarrow",
    "pandas",
    "pillow",
    "pytorch-metric-learning",
    "torchmetrics",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "hglv2_commit": _commit()}
    for name in ("hglv2", *PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def summary(samples: list[float], unit: str = "s") -> dict[str, Any]:
    """min / median / max of repeated measurements (all samples kept)."""
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "n": len(samples),
        "samples": list(samples),
        "unit": unit,
    }


def interleaved(sides: Mapping[str, Callable[[], Any]], repeat: int) -> tuple[dict[str, list[float]], dict]:
    """Run each side once per repetition, in turn, ``repeat`` times: (seconds per side, the last
    return value of each side)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    last: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, last


class Results:
    """The results file of one benchmark run."""

    def __init__(self, script: str, args: Any = None, threads: int | None = None) -> None:
        self.script = Path(script).stem
        self.data: dict[str, Any] = {
            "script": self.script,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": _now(),
            "load_before": list(os.getloadavg()),
            "machine": {
                "cpu_model": _cpu_model(),
                "cores": os.cpu_count(),
                "threads": threads,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            },
            "versions": versions(),
            "args": dict(vars(args)) if args is not None and hasattr(args, "__dict__") else args,
            "figures": {},
        }

    def timing(self, name: str, samples: list[float], unit: str = "s", **info: Any) -> dict[str, Any]:
        entry = {**summary(samples, unit), **info}
        self.data["figures"][name] = entry
        return entry

    def ratio(self, name: str, num: list[float], den: list[float], **info: Any) -> dict[str, Any]:
        """``num / den`` per repetition (paired, interleaved samples), plus the ratio of the minima."""
        pairs = [a / b for a, b in zip(num, den, strict=True)]
        entry = {**summary(pairs, "x"), "of_minima": min(num) / min(den), **info}
        self.data["figures"][name] = entry
        return entry

    def value(self, name: str, value: Any, **info: Any) -> None:
        self.data["figures"][name] = {"value": value, **info} if info else value

    def write(self, path: str | os.PathLike[str]) -> Path:
        self.data["finished"] = _now()
        self.data["load_after"] = list(os.getloadavg())
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, allow_nan=False, default=_plain) + "\n")
        tmp.replace(path)
        print(f"results: {path}")
        return path


def sync(device: Any) -> None:
    """Wait for the work queued on ``device`` (a torch device or its name) so that a clock read next
    times it: ``torch.cuda.synchronize`` on a CUDA device, nothing on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_path(script: str, suffix: str = "", quick: bool = False) -> Path:
    folder = RESULTS_DIR / "quick" if quick else RESULTS_DIR
    return folder / f"{Path(script).stem}{suffix}.json"


def add_results_option(parser) -> None:
    parser.add_argument(
        "--results",
        default=None,
        help="results file (JSON; default benchmarks/results/<script><size>.json, --quick: results/quick/)",
    )


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
