"""Speed of reading a Wikidata JSON dump into its facts table, beside the decompression floor.

A dump in the official format (``[``, one entity per line followed by ``,``, ``]``; several gzip
members / bz2 streams) is generated with entities of the real dump's size distribution (a few KB
to tens of KB: labels, descriptions and aliases in many languages, claims with qualifiers and
references, sitelinks; ~10 KB on average). Side by side, each in its own subprocess (so peak RSS
and CPU time are its own), on the same file:

- ``floor``: the same decompressor the route uses (:func:`hglv2.hierarchy.dump_read.open_stream`:
  ISA-L's gzip inflate / indexed_bzip2 with ``--threads`` threads) reading the whole dump in
  blocks of the route's size into one reused buffer and dropping the bytes (the ``/dev/null``
  floor);
- ``gzip -dc``, ``pigz -dc``, ``lbzip2 -dc`` to ``/dev/null`` where installed, and for the gzip
  dump rapidgzip (2 threads, 1 MiB chunks, read as the floor reads) where importable (references);
- ``route``: :func:`hglv2.hierarchy.dump.build_facts` (decompress, frame, decode, write Parquet)
  with ``workers`` 0 (decoding in the main process) and 1 (one decoding process).

The runs of a dump alternate over ``--repeat`` repetitions (default 3, 1 with ``--quick``), so that
each side sees the same load. Reported per run: MB/s of JSON (wall), MB of JSON per CPU-second (per
core: what one core gives when it is not shared), ratios to the floor (wall and CPU, repetition by
repetition), peak RSS, the facts table's size per million entities, and a projection for the real
dump (default 1.4 TB of JSON, 140 GB gzip) on 2 and 16 cores: JSON bytes x CPU-seconds per byte /
cores, from the least CPU time per byte, assuming a linear split over cores (the decoding
processes and bz2's threads split by blocks), and for the gzip dump no faster than its one
inflating thread (the floor's CPU time per byte). The results file (:mod:`_results`, with the load before
and after) feeds the table of docs/performance.md (``make bench-tables``).

Usage: ``python benchmarks/dump_speed.py [--quick|--full] [--formats gz,bz2] [--repeat N]
[--results FILE] [--workdir DIR]``. By default (and with ``--full``) the dump of the published
figures, ~600 MB of JSON; ``--quick`` (as ``make bench``) a ~60 MB dump, a few seconds a run.
Generated dumps are kept in the work folder and reused.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import _results

ROOT = Path(__file__).resolve().parents[1]
LANGS = [f"{a}{b}" for a in "abcdefghiklmnoprstuvz" for b in "aeiklnorsu"][:200]
WORDS = (
    "church castle river mountain museum station bridge tower lake village saint palace park "
    "cathedral temple garden island valley street square house hall abbey chapel fort market "
    "school library theatre harbour lighthouse monument cemetery mill farm hill forest bay"
).split()
PROPS = [f"P{p}" for p in (17, 131, 625, 18, 373, 571, 1435, 856, 646, 214, 227, 244, 8189, 2163, 1566, 3417)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f" {rng.randrange(10**6)}"


def _snak(rng: random.Random, prop: str, value: object | None = None) -> dict:
    """A value snak; item values are drawn from a skewed pool and the hash follows the value,
    as in the real dump (a few classes and sources carry most statements)."""
    if value is None:
        num = int(10 ** (rng.random() ** 2 * 8)) + 1
        value = {"entity-type": "item", "numeric-id": num, "id": f"Q{num}"}
    kind = "string" if isinstance(value, str) else "wikibase-entityid"
    return {
        "snaktype": "value",
        "property": prop,
        "hash": hashlib.sha1(f"{prop}{value}".encode()).hexdigest(),
        "datavalue": {"value": value, "type": kind},
        "datatype": "string" if kind == "string" else "wikibase-item",
    }


def _statement(rng: random.Random, qid: str, prop: str, value: object | None = None) -> dict:
    st = {
        "mainsnak": _snak(rng, prop, value),
        "type": "statement",
        "id": f"{qid}${rng.getrandbits(128):032X}",
        "rank": rng.choices(["normal", "preferred", "deprecated"], [90, 7, 3])[0],
    }
    if rng.random() < 0.3:
        st["qualifiers"] = {"P580": [_snak(rng, "P580", f"+{rng.randrange(1500, 2024)}-00-00T00:00:00Z")]}
        st["qualifiers-order"] = ["P580"]
    refs = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        snaks = {"P248": [_snak(rng, "P248")], "P813": [_snak(rng, "P813", "+2024-01-01T00:00:00Z")]}
        digest = hashlib.sha1("".join(v[0]["hash"] for v in snaks.values()).encode()).hexdigest()
        refs.append({"hash": digest, "snaks": snaks, "snaks-order": ["P248", "P813"]})
    if refs:
        st["references"] = refs
    return st


def make_entity(rng: random.Random, n: int) -> dict:
    """One item of the real dump's size distribution (lognormal number of languages and claims)."""
    qid = f"Q{n}"
    n_lang = min(len(LANGS), max(1, int(rng.lognormvariate(2.6, 1.0))))
    langs = (
        rng.sample(LANGS, n_lang)
        + (["en"] if rng.random() < 0.7 else [])
        + (["mul"] if rng.random() < 0.1 else [])
    )
    label = _text(rng, 3)
    ent: dict = {"type": "item", "id": qid}
    ent["labels"] = {lg: {"language": lg, "value": label} for lg in langs}
    ent["descriptions"] = {
        lg: {"language": lg, "value": _text(rng, 4)} for lg in langs[: max(1, n_lang // 2)]
    }
    ent["aliases"] = {lg: [{"language": lg, "value": _text(rng, 2)}] for lg in langs[: n_lang // 4]}
    claims: dict[str, list] = {"P31": [_statement(rng, qid, "P31") for _ in range(rng.choice([1, 1, 1, 2]))]}
    if rng.random() < 0.05:
        claims["P279"] = [_statement(rng, qid, "P279")]
    if rng.random() < 0.03:
        claims["P301"] = [_statement(rng, qid, "P301")]
    if rng.random() < 0.08:
        claims["P373"] = [_statement(rng, qid, "P373", label)]
    for prop in rng.sample(PROPS, min(len(PROPS), max(1, int(rng.lognormvariate(1.6, 0.8))))):
        claims.setdefault(prop, []).append(_statement(rng, qid, prop))
    ent["claims"] = claims
    sites = [f"{lg}wiki" for lg in langs[: int(n_lang * rng.random() * 0.6)]]
    if rng.random() < 0.1:
        sites.append("commonswiki")
    ent["sitelinks"] = {s: {"site": s, "title": label, "badges": []} for s in sites}
    ent["lastrevid"] = rng.randrange(10**9, 2 * 10**9)
    return ent


def generate(folder: Path, json_mb: int, seed: int = 0) -> dict[str, Path]:
    """``dump.json.gz`` (gzip members of ~32 MB of JSON) and ``dump.json.bz2`` (bz2 streams)."""
    import msgspec

    folder.mkdir(parents=True, exist_ok=True)
    out = {"gz": folder / f"dump-{json_mb}mb.json.gz", "bz2": folder / f"dump-{json_mb}mb.json.bz2"}
    if all(p.exists() for p in out.values()):
        return out
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    tmp = {k: p.with_suffix(p.suffix + ".tmp") for k, p in out.items()}
    with open(tmp["gz"], "wb") as gz, open(tmp["bz2"], "wb") as bz:
        part, size, n = [b"[\n"], 2, 0
        while True:
            done = size >= json_mb * 10**6
            if done:
                part[-1] = part[-1][:-2] + b"\n"  # no comma after the last entity
                part.append(b"]\n")
            if done or sum(map(len, part)) >= 32 * 10**6:
                data = b"".join(part)
                comp = zlib.compressobj(6, zlib.DEFLATED, 31)
                gz.write(comp.compress(data) + comp.flush())
                bz.write(bz2.compress(data, 9))
                part = []
            if done:
                break
            n += 1
            line = enc.encode(make_entity(rng, n)) + b",\n"
            part.append(line)
            size += len(line)
    for k in out:
        os.replace(tmp[k], out[k])
    return out


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _child(mode: str, path: str, threads: int, workers: int) -> None:
    """Run one measurement in this (child) process; print ``{json_bytes, work_wall_s, work_cpu_s,
    work_main_thread_cpu_s}`` (the work only: the interpreter's start and imports are left out; the
    last is the CPU time of the main thread alone, without the decompressing threads and the
    decoding processes)."""
    sys.path.insert(0, str(ROOT))
    # imported before the clock starts (fixed costs, not per byte): tqdm, pyarrow's pandas shim
    import pandas  # noqa: F401
    import tqdm.auto  # noqa: F401

    import hglv2.fileio  # noqa: F401
    from hglv2.hierarchy import dump_read
    from hglv2.hierarchy.dump import build_facts

    t0, c0, m0 = time.perf_counter(), _cpu(), time.thread_time()
    if mode in ("floor", "rapidgzip"):
        stream, n = _decompressor(mode, path, threads), 0
        buf = memoryview(bytearray(dump_read.BLOCK_BYTES))  # read as the route reads, into one buffer
        while got := stream.readinto(buf):
            n += got
        stream.close()
        res: dict = {"json_bytes": n}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            facts = Path(tmp) / "facts.parquet"
            res = build_facts(path, facts, threads=threads, workers=workers, progress=False)
            res["facts_bytes"] = facts.stat().st_size
    wall, cpu, main = time.perf_counter() - t0, _cpu() - c0, time.thread_time() - m0
    print(json.dumps({**res, "work_wall_s": wall, "work_cpu_s": cpu, "work_main_thread_cpu_s": main}))


def _decompressor(mode: str, path: str, threads: int) -> Any:
    """The stream of the floor (the route's :func:`~hglv2.hierarchy.dump_read.open_stream`) or of
    the ``rapidgzip`` reference (2 threads, 1 MiB chunks)."""
    from hglv2.hierarchy import dump_read

    if mode == "floor":
        return dump_read.open_stream(path, threads)
    import rapidgzip

    return rapidgzip.RapidgzipFile(path, parallelization=2, chunk_size=1 << 20)


def measure(cmd: list[str], stdout_json: bool) -> dict:
    """Run ``cmd``; wall and CPU seconds, peak RSS (its own, through wait4) and its JSON line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if stdout_json else subprocess.DEVNULL)
    out = proc.stdout.read() if stdout_json else b""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed with {proc.returncode}")
    res = json.loads(out) if stdout_json else {}
    cpu = ru.ru_utime + ru.ru_stime
    return {
        **res,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
    }


def _commands(fmt: str, path: Path, threads: int) -> dict[str, tuple[list[str], bool]]:
    """The runs of one dump: ``{name: (command, prints its JSON line)}``."""
    py = [sys.executable, __file__, "--child"]
    cmds = {f"{fmt} floor": ([*py, "floor", str(path), str(threads), "0"], True)}
    for workers in (0, 1):
        cmds[f"{fmt} route workers={workers}"] = ([*py, "route", str(path), str(threads), str(workers)], True)
    if fmt == "gz" and importlib.util.find_spec("rapidgzip") is not None:
        cmds[f"{fmt} rapidgzip threads=2"] = ([*py, "rapidgzip", str(path), "2", "0"], True)
    for tool in {"gz": ["gzip", "pigz"], "bz2": ["lbzip2", "bzip2"]}[fmt]:
        if shutil.which(tool):
            cmds[f"{fmt} {tool} -dc"] = (["sh", "-c", f"{tool} -dc {path} > /dev/null"], False)
    return cmds


def runs(dumps: dict[str, Path], threads: int, repeat: int) -> dict[str, list[dict]]:
    """Every run of each dump ``repeat`` times, the runs of a dump alternating: ``{name: [one
    measurement per repetition]}``."""
    res: dict[str, list[dict]] = {}
    for fmt, path in dumps.items():
        cmds = _commands(fmt, path, threads)
        for _ in range(repeat):
            for name, (cmd, prints) in cmds.items():
                res.setdefault(name, []).append(measure(cmd, prints))
        json_bytes = res[f"{fmt} floor"][0]["json_bytes"]
        for name in cmds:
            for r in res[name]:
                r.setdefault("json_bytes", json_bytes)
                r["wall"] = r.get("work_wall_s", r["wall_s"])  # the work's own time where measured
                r["cpu"] = r.get("work_cpu_s", r["cpu_s"])
    return res


def record(res: dict[str, list[dict]], real_json_tb: float, out: _results.Results) -> None:
    """Figures per run: MB/s of JSON (wall) and per CPU-second, the ratios to the floor of the same
    dump taken repetition by repetition, peak RSS, the facts table's size, and the projection for
    the real dump (:func:`_projection`)."""
    for name, rs in res.items():
        floor = res[name.split()[0] + " floor"]
        mb = rs[0]["json_bytes"] / 1e6
        out.timing(f"{name}.wall", [r["wall"] for r in rs], mb=mb)
        out.timing(f"{name}.cpu", [r["cpu"] for r in rs], mb=mb)
        if "work_main_thread_cpu_s" in rs[0]:
            out.timing(f"{name}.main_thread_cpu", [r["work_main_thread_cpu_s"] for r in rs], mb=mb)
        out.ratio(f"{name}.x_floor_wall", [f["wall"] for f in floor], [r["wall"] for r in rs])
        out.ratio(f"{name}.x_floor_cpu", [f["cpu"] for f in floor], [r["cpu"] for r in rs])
        out.value(f"{name}.peak_rss_mib", max(r["peak_rss_mib"] for r in rs))
        if rs[0].get("entities"):
            out.value(f"{name}.facts_mb_per_million_entities", rs[0]["facts_bytes"] / rs[0]["entities"])
        out.value(f"{name}.projected_hours", _projection(name, rs, floor, real_json_tb * 1e12))


def _projection(name: str, rs: list[dict], floor: list[dict], real_bytes: float) -> dict[str, float | int]:
    """Hours for ``real_bytes`` of JSON. On this machine's cores: the best measured rate. On 16
    cores (a bound, not a measurement): the slowest of the CPU time per byte spread over 16 cores,
    the main thread's CPU time per byte (one thread reads, cuts and hands over every block and
    writes the table) and, for the gzip runs, the floor's (gzip inflates on one thread)."""
    from hglv2.processes import usable_cores

    cores = usable_cores()
    per_byte = {k: min(r[k] for r in rs) / rs[0]["json_bytes"] for k in ("wall", "cpu")}
    bounds = [per_byte["cpu"] / 16]
    if "work_main_thread_cpu_s" in rs[0]:
        bounds.append(min(r["work_main_thread_cpu_s"] for r in rs) / rs[0]["json_bytes"])
    if name.startswith(("gz floor", "gz route")):
        bounds.append(min(f["cpu"] for f in floor) / floor[0]["json_bytes"])
    return {
        "cores": cores,
        "measured": real_bytes * per_byte["wall"] / 3600,
        "16_cores_bound": real_bytes * max(bounds) / 3600,
    }


def _print(out: _results.Results, names: list[str]) -> None:
    f = out.data["figures"]
    print(
        f"{'run':26s} {'MB/s':>13s} {'MB/cpu-s':>13s} {'x floor':>11s} {'x floor cpu':>11s} {'RSS MiB':>7s}"
    )
    for name in names:
        wall, cpu = f[f"{name}.wall"], f[f"{name}.cpu"]
        xw, xc = f[f"{name}.x_floor_wall"], f[f"{name}.x_floor_cpu"]
        print(
            f"{name:26s} {wall['mb'] / wall['min']:6.1f} {wall['mb'] / wall['median']:6.1f} "
            f"{cpu['mb'] / cpu['min']:6.1f} {cpu['mb'] / cpu['median']:6.1f} "
            f"{xw['min']:5.2f} {xw['median']:5.2f} "
            f"{xc['min']:5.2f} {xc['median']:5.2f} {f[f'{name}.peak_rss_mib']:7.0f}"
        )
    print("(MB/s and MB/cpu-s: best / median repetition; ratios: min / median over repetitions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the ~600 MB dump of the figures (the default)")
    ap.add_argument("--quick", action="store_true", help="a ~60 MB dump, a few seconds a run (`make bench`)")
    ap.add_argument("--threads", type=int, default=2, help="bz2 decompression threads (default 2)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="alternating repetitions of each run [default: 3, --quick 1]"
    )
    ap.add_argument("--formats", default="gz,bz2", help="dumps to read: gz, bz2 or both (default gz,bz2)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hglv2_dump_speed")
    ap.add_argument("--real-json-tb", type=float, default=1.4, help="JSON size of the real dump (TB)")
    _results.add_results_option(ap)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, path, threads, workers = args.child
        _child(mode, path, int(threads), int(workers))
        return
    formats = [f for f in ("gz", "bz2") if f in args.formats.split(",")]
    full = args.full or not args.quick
    dumps = {k: v for k, v in generate(args.workdir, 600 if full else 60).items() if k in formats}
    args.repeat = args.repeat or (3 if full else 1)
    out = _results.Results(__file__, {**vars(args), "json_mb": 600 if full else 60}, threads=args.threads)
    res = runs(dumps, args.threads, args.repeat)
    record(res, args.real_json_tb, out)
    for fmt, path in dumps.items():
        out.value(f"{fmt}.compressed_bytes", path.stat().st_size)
    print(
        f"load average {out.data['load_before'][0]:.1f} -> {os.getloadavg()[0]:.1f}; threads={args.threads}"
    )
    _print(out, list(res))
    out.write(args.results or _results.default_path(__file__, "_" + "_".join(formats), args.quick))


if __name__ == "__main__":
    main()
