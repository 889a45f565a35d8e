"""Write the performance tables of the docs from the benchmarks' results files (``make bench-tables``).

Each table sits in a Markdown file between ``<!-- bench-table NAME -->`` and
``<!-- /bench-table -->``; this script replaces what is between the markers with the table built
from ``benchmarks/results/*.json`` (:mod:`_results`), including the conditions of each figure
(load before/after, threads, CPU). ``--check`` only reports tables that differ from their files
(exit 1), so a stale table can be caught. Figures are never typed by hand.

``--compare DIR`` checks that the figures reproduce: for every results file present in both
``--results`` and ``DIR``, each timing's and ratio's median (``--stat min``: minimum over the
repetitions) in one is set against the other's
(relative difference, ``|b - a| / a``), and the figures differing by more than ``--tolerance``
(default 20%) are listed; exit 1 when any does.

``--rerun DIR`` runs the command of every results file again (with the thread setting it ran
under), writing each new file into ``DIR`` (``make bench-check``), then compares as ``--compare``.

Usage: ``python benchmarks/_tables.py [--check] [--results DIR] [--compare DIR [--tolerance F]]
[--rerun DIR] [FILES...]`` (default files: docs/performance.md and README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(<!-- bench-table (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench-table -->)", re.S)


def _load(results: Path, stem: str) -> dict | None:
    path = results / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fig(res: dict, name: str) -> dict:
    return res["figures"][name]


def _x(entry: dict) -> str:
    """A ratio as ``min / median x`` over the repetitions."""
    return f"{entry['min']:.2f} / {entry['median']:.2f}x"


def _s(entry: dict, digits: int = 2) -> str:
    return f"{entry['min']:.{digits}f} / {entry['median']:.{digits}f} s"


def _load_str(res: dict) -> str:
    return f"{res['load_before'][0]:.1f} → {res['load_after'][0]:.1f}"


def command(res: dict) -> str:
    """The command that reproduces a results file, with the thread setting it ran under."""
    omp = res["machine"].get("OMP_NUM_THREADS")
    return f"`{'OMP_NUM_THREADS=' + omp + ' ' if omp else ''}{res['command']}`"


def conditions(runs: list[dict]) -> str:
    """One line naming the machine, threads, versions and load of the runs behind a table."""
    if not runs:
        return ""
    r0 = runs[0]
    m, v = r0["machine"], r0["versions"]
    loads = ", ".join(_load_str(r) for r in runs)
    vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "numba", "faiss-cpu", "pyarrow", "pillow") if v.get(k))
    return (
        f"*Measured {r0['started'][:10]} on {m['cpu_model']} ({m['cores']} cores), "
        f"threads: {m['threads'] or 'default'}, 1-minute load before → after: {loads}; "
        f"{vers}; hglv2 {v.get('hglv2_commit') or v.get('hglv2')}. "
        f"Each cell: min / median over {_repeats(runs)} interleaved repetitions "
        f"(results files in benchmarks/results/).*"
    )


def _repeats(runs: list[dict]) -> str:
    """The repetitions of the runs behind a table: ``3``, or ``3 / 1`` (in the runs' order)."""
    counts = [str(r["args"].get("repeat", "the")) for r in runs]
    return counts[0] if len(set(counts)) == 1 else " / ".join(counts)


def metrics_table(results: Path) -> list[str]:
    runs = [
        r
        for r in (_load(results, s) for s in ("metrics_speed_Q1000_N100000", "metrics_speed_Q200_N500000"))
        if r
    ]
    if not runs:
        return []
    lines = [
        "| size | full ranking, 30 metrics / (matmul + key sort) | bound: (floor + key building + one AP "
        "from the sorted keys) / floor | top-k mode / faiss `IndexFlatIP` search "
        "| top-k mode: s, faiss search: s | pytorch-metric-learning / top-k mode (same k) | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["args"]
        f = r["figures"]
        peers = _x(f["peers.pml_over_ours"]) if "peers.pml_over_ours" in f else "–"
        size = f"Q = {a['queries']:,} x N = {a['gallery']:,}"
        lines.append(
            f"| {size} | {_x(f['full.ratio'])} | {_x(f['full.bound_ratio'])} | {_x(f['topk.ratio_faiss'])} "
            f"| {_s(f['topk.ours'], 3)}, {_s(f['topk.faiss_search'], 3)} | {peers} | {command(r)} |"
        )
    notes = [_profile_note(r) for r in runs if "full.profile.matmul" in r["figures"]]
    return [*lines, "", *notes, conditions(runs)]


def _profile_note(r: dict) -> str:
    """Where the full ranking's time goes (medians of the instrumented runs)."""
    f, a = r["figures"], r["args"]
    names = {
        "matmul": "matmul",
        "keys": "key building",
        "sort": "row sort",
        "metric_pass": "fused metric pass",
    }
    parts = ", ".join(f"{label} {f[f'full.profile.{k}']['median']:.3f} s" for k, label in names.items())
    floor = f["full.floor"]["median"]
    return (
        f"Full ranking at Q = {a['queries']:,} x N = {a['gallery']:,}, one evaluate, stage by stage (median "
        f"of {f['full.profile.matmul']['n']} instrumented runs): {parts}, the rest "
        f"{f['full.profile.rest']['median']:.3f} s; the floor (matmul + row sort) {floor:.3f} s.\n"
    )


def losses_table(results: Path) -> list[str]:
    r = _load(results, "losses_speed")
    if r is None:
        return []
    f = r["figures"]
    lines = [
        "| B = N, forward + backward | dense | hglv2 | dense / hglv2 |",
        "|---|---|---|---|",
    ]
    for loss in ("SupAP", "SupHAP"):
        if f"{loss}.dense" not in f:
            continue
        lines.append(
            f"| {loss}, B = {r['args']['batch']} | {_s(f[f'{loss}.dense'], 3)} | {_s(f[f'{loss}.hglv2'], 4)} "
            f"| {_x(f[f'{loss}.ratio'])} |"
        )
    return [*lines, "", f"Command: {command(r)}.", "", conditions([r])]


def loss_ratios_table(results: Path) -> list[str]:
    r = _load(results, "losses_speed_ratios")
    if r is None:
        return []
    f = r["figures"]
    lines = [
        "| B = N | SupAP s/step, peak MB | SupHAP s/step, peak MB (/ SupAP) "
        "| SupNDCG s/step, peak MB (/ SupAP) |",
        "|---|---|---|---|",
    ]
    for impl, name in (("hglv2", "kernels"), ("torch", "torch path")):
        for b in (256, 1024, 4096):
            key = f"ratios.{impl}.{b}"
            if f"{key}.SupAP" not in f:
                continue
            cells = []
            for loss in ("SupAP", "SupHAP", "SupNDCG"):
                t = f[f"{key}.{loss}"]
                cell = f"{_s(t, 3)}, {t['peak_mb']:.0f} MB"
                if loss != "SupAP":
                    cell += f" ({_x(f[f'{key}.{loss}.over_SupAP'])})"
                cells.append(cell)
            lines.append(f"| {b:,}, {name} | " + " | ".join(cells) + " |")
    return [*lines, "", f"Command: {command(r)}.", "", conditions([r])]


def images_table(results: Path) -> list[str]:
    r = _load(results, "prepare_images")
    if r is None:
        return []
    f = r["figures"]
    a = r["args"]
    lines = [
        "| re-encoding to 512 px, one core | images/s (best / median round) | ours / plain loop |",
        "|---|---|---|",
        f"| plain PIL steps per image (full decode, bicubic, same JPEG settings; Pillow defaults), "
        f"in-memory bytes | {_rate(f['bare_loop'])} | |",
        f"| `resize_image`, the per-image function, same bytes | {_rate(f['per_image'])} "
        f"| {_x(f['per_image.ratio'])} |",
        f"| plain loop over the tar shards | {_rate(f['bare_loop_tar'])} | |",
        f"| the shard loop (`prepare_images --jobs 1`, worker time) | {_rate(f['shard_loop'])} "
        f"| {_x(f['shard_loop.ratio'])} |",
        f"| projection: 4,132,914 train images at the best shard-loop rate "
        f"| {f['projection_core_hours']:.0f} core-hours | |",
    ]
    lines += _images_extra_rows(f)
    src = f"{a['images']} generated {a['size']} JPEGs, {a['per_shard']} per shard"
    return [*lines, "", f"{src}. Command: {command(r)}.", "", conditions([r])]


def _images_extra_rows(f: dict) -> list[str]:
    """The single-run figures of the image benchmark: workers, output size, draft mode, loader."""
    rows = []
    if "jobs" in f:
        j = f["jobs"]
        same = "bytes identical to `--jobs 1`" if j["identical"] else "bytes DIFFER from `--jobs 1`"
        rows.append(
            f"| `prepare_images --jobs {j['jobs']}`, whole call (worker start-up included) "
            f"| {j['images_per_s']:.1f} "
            f"| {j['images_per_s'] / f['jobs1_images_per_s']:.2f}x `--jobs 1`; {same} |"
        )
    if "output" in f:
        o = f["output"]
        rows.append(
            f"| output size | {o['kb_per_image']:.0f} KB per image "
            f"| {o['of_source']:.2f} of the source bytes |"
        )
    if "draft" in f:
        d = f["draft"]
        rows.append(
            f"| `resize_image` on {d['size']} sources (JPEG draft mode: libjpeg decodes at 1/2) "
            "vs a full decode "
            f"| {d['ours']:.1f} vs {d['full_decode']:.1f} | {d['ours'] / d['full_decode']:.2f}x |"
        )
    if "loader" in f:
        ld = f["loader"]
        rows.append(
            f"| training data loader (RandomResizedCrop 224 + flip + normalise, batch 64, {ld['workers']} "
            f"workers): {ld['size']} shards vs prepared | {ld['official']:.1f} vs {ld['prepared']:.1f} "
            f"| {ld['prepared'] / ld['official']:.2f}x |"
        )
    return rows


def _rate(entry: dict) -> str:
    """Images/s from the timings of a batch of ``images``: best round / median round."""
    n = entry["images"]
    return f"{n / entry['min']:.1f} / {n / entry['median']:.1f}"


def export_table(results: Path) -> list[str]:
    r = _load(results, "export_speed")
    if r is None:
        return []
    f = r["figures"]
    lines = [
        "| rows | hglv2 export (validated, hierarchy joined) "
        "| pandas: read_csv + merge + to_parquet, same columns, codec and row groups | hglv2 / pandas |",
        "|---|---|---|---|",
        f"| {r['args']['rows']:,} | {_s(f['export.hglv2'])} | {_s(f['export.pandas'])} "
        f"| {_x(f['export.ratio'])} |",
    ]
    return [*lines, "", f"Command: {command(r)}.", "", conditions([r])]


def _dump_runs(results: Path) -> list[dict]:
    return [r for r in (_load(results, f"dump_speed_{s}") for s in ("gz_bz2", "gz", "bz2")) if r]


def _ms_per_mb(fig: dict | None) -> str:
    if fig is None:
        return "–"
    return f"{1e3 * fig['min'] / fig['mb']:.2f} / {1e3 * fig['median'] / fig['mb']:.2f}"


def _projection_note(fmt: str, run: str, hours: dict[str, float]) -> str:
    return (
        f".{fmt} {run.split()[1]}: {hours['measured']:.2f} h on {hours['cores']} cores (measured rate), "
        f"{hours['16_cores_bound']:.2f} h on 16 cores (bound)"
    )


def dump_table(results: Path) -> list[str]:
    runs = _dump_runs(results)
    if not runs:
        return []
    lines = [
        "| dump | run | MB/s of JSON (wall) | MB per CPU-s | main thread: CPU ms per MB "
        "| x floor (wall) | x floor (CPU) | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in runs:
        f = r["figures"]
        names = [k[: -len(".wall")] for k in f if k.endswith(".wall")]
        for name in names:
            fmt, run = name.split(" ", 1)
            wall, cpu = f[f"{name}.wall"], f[f"{name}.cpu"]
            label = {
                "floor": "decompressor alone, output dropped (floor)",
                "route workers=0": "route, decoding in-process",
                "route workers=1": "route, 1 decoding process",
                "rapidgzip threads=2": "rapidgzip, 2 threads, output dropped",
            }.get(run, f"`{run} > /dev/null`")
            lines.append(
                f"| .{fmt} | {label} | {wall['mb'] / wall['min']:.0f} / {wall['mb'] / wall['median']:.0f} "
                f"| {cpu['mb'] / cpu['min']:.0f} / {cpu['mb'] / cpu['median']:.0f} "
                f"| {_ms_per_mb(f.get(f'{name}.main_thread_cpu'))} "
                f"| {_x(f[f'{name}.x_floor_wall'])} | {_x(f[f'{name}.x_floor_cpu'])} "
                f"| {f[f'{name}.peak_rss_mib']:.0f} |"
            )
            if run.startswith("route"):
                notes.append(_projection_note(fmt, run, f[f"{name}.projected_hours"]))
                if run == "route workers=0":
                    facts = f[f"{name}.facts_mb_per_million_entities"]
    a = runs[0]["args"]
    head = (
        f"{a['json_mb']} MB of JSON, {a['threads']} bz2 decompression threads; MB/s and MB per CPU-s: "
        f"best / median repetition; facts table: {facts:.0f} MB per million entities. Projection for the "
        f"real dump ({a.get('real_json_tb', 1.4)} TB of JSON): on this machine, at the best measured rate; "
        "on 16 cores, a bound: the slowest of the CPU time per byte spread over 16 cores, the main "
        "thread's CPU time per byte (it reads, cuts and hands over every block and writes the table; "
        "decoding moves to processes only with a decoding process) and gzip's one inflating thread: "
        + "; ".join(notes)
        + "."
    )
    cmds = " and ".join(command(r) for r in runs)
    return [*lines, "", head, "", f"Command: {cmds}.", "", conditions(runs)]


def dump_projection_table(results: Path) -> list[str]:
    """The README's projection for the real dump's ``.gz`` (see :func:`dump_table`)."""
    r = next((r for r in _dump_runs(results) if "gz route workers=0.wall" in r["figures"]), None)
    if r is None:
        return []
    f = r["figures"]
    here, pooled = f["gz route workers=0.projected_hours"], f["gz route workers=1.projected_hours"]
    a = r["args"]
    return [
        f"| reading the real Wikidata dump (`.gz`, {a.get('real_json_tb', 1.4)} TB of JSON) | hours |",
        "|---|---:|",
        f"| {here['cores']} cores: the route's best measured rate (decoding in-process) "
        f"| {here['measured']:.1f} |",
        f"| 16 cores, decoding processes: a bound (the inflating thread, the main thread, the CPU time "
        f"spread over the cores, whichever is slowest) | {pooled['16_cores_bound']:.1f} |",
        "",
        f"Assumed: the real entities cost per byte what the benchmark's generated ones do ({a['json_mb']} MB "
        "of JSON in the official format, entities of the real dump's size distribution). "
        "[Performance](docs/performance.md#reading-the-wikidata-dump) has the table behind it.",
        "",
        conditions([r]),
    ]


TABLES: dict[str, Callable[[Path], list[str]]] = {
    "metrics": metrics_table,
    "losses": losses_table,
    "loss-ratios": loss_ratios_table,
    "images": images_table,
    "export": export_table,
    "dump": dump_table,
    "dump-projection": dump_projection_table,
}


def render(text: str, results: Path) -> str:
    def sub(m: re.Match) -> str:
        lines = TABLES[m["name"]](results)
        if not lines:  # no results file: leave the table as it is
            return m.group(0)
        return m.group(1) + "\n".join(lines) + "\n" + m.group(4)

    return MARKER.sub(sub, text)


def compare(first: Path, second: Path, tolerance: float, stat: str = "median") -> int:
    """Print each figure's ``stat`` (min or median over its repetitions) of the results files found
    in both folders, side by side; 1 when some figure differs by more than ``tolerance`` (relative
    to the first folder's)."""
    names = sorted({p.name for p in first.glob("*.json")} & {p.name for p in second.glob("*.json")})
    if not names:
        print(f"no results file in both {first} and {second}")
        return 1
    off = []
    for name in names:
        a = json.loads((first / name).read_text())
        b = json.loads((second / name).read_text())
        print(f"{name}: load {_load_str(a)} / {_load_str(b)}")
        for fig, ea in a["figures"].items():
            eb = b["figures"].get(fig)
            if not (isinstance(ea, dict) and isinstance(eb, dict) and stat in ea and stat in eb):
                continue
            a_, b_ = ea[stat], eb[stat]
            rel = abs(b_ - a_) / abs(a_) if a_ else float("inf")
            flag = " <-- over" if rel > tolerance else ""
            print(f"  {fig:32s} {a_:12.4g} {b_:12.4g} {rel:7.1%}{flag}")
            if flag:
                off.append(f"{name}:{fig}")
    listed = ": " + ", ".join(off) if off else ""
    print(f"{len(off)} figure(s) differ by more than {tolerance:.0%}{listed}")
    return 1 if off else 0


def rerun_commands(results: Path, out: Path) -> list[tuple[dict[str, str], list[str]]]:
    """``(environment, argv)`` re-running each results file's command into ``out`` under the
    same name. Only ``python benchmarks/<script>.py ...`` of this repository is accepted; a
    ``--results`` it carried is replaced."""
    runs = []
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        argv = shlex.split(r["command"])
        script = ROOT / "benchmarks" / Path(argv[1]).name if len(argv) > 1 else None
        if not (argv[0].startswith("python") and script and script.is_file() and argv[1].endswith(".py")):
            raise SystemExit(
                f"{path}: command is not a benchmark script of this repository: {r['command']!r}"
            )
        args = argv[2:]
        while "--results" in args:
            at = args.index("--results")
            del args[at : at + 2]
        env = (
            {"OMP_NUM_THREADS": r["machine"]["OMP_NUM_THREADS"]}
            if r["machine"].get("OMP_NUM_THREADS")
            else {}
        )
        rel = script.relative_to(ROOT).as_posix()  # run from the repository root, as recorded
        runs.append((env, [sys.executable, rel, *args, "--results", str(out / path.name)]))
    return runs


def rerun(results: Path, out: Path, tolerance: float, stat: str) -> int:
    """Run :func:`rerun_commands` one after the other, then :func:`compare` the two folders."""
    import os
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    for env, argv in rerun_commands(results, out):
        print("== " + " ".join([*(f"{k}={v}" for k, v in env.items()), *argv[1:]]), flush=True)
        subprocess.run(argv, check=True, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL)
    return compare(results, out, tolerance, stat)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "files", nargs="*", default=[str(ROOT / "docs" / "performance.md"), str(ROOT / "README.md")]
    )
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--check", action="store_true", help="report stale tables, change nothing")
    ap.add_argument("--compare", metavar="DIR", help="compare the medians with another results folder")
    ap.add_argument("--tolerance", type=float, default=0.2, help="relative difference allowed by --compare")
    ap.add_argument("--stat", choices=("min", "median"), default="median", help="what --compare compares")
    ap.add_argument(
        "--rerun", metavar="DIR", help="run every results file's command again into DIR, then compare"
    )
    args = ap.parse_args(argv)
    if args.rerun:
        return rerun(Path(args.results), Path(args.rerun), args.tolerance, args.stat)
    if args.compare:
        return compare(Path(args.results), Path(args.compare), args.tolerance, args.stat)
    stale = []
    for name in args.files:
        path = Path(name)
        text = path.read_text()
        new = render(text, Path(args.results))
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
                print(f"updated {path}")
    if args.check and stale:
        print("stale tables (run make bench-tables): " + ", ".join(map(str, stale)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
