"""Scale rehearsal of the hierarchy pipeline (``make hierarchy`` + export) on a release-sized world.

Not a test: a benchmark that prints figures (run it by hand; CI never does).

World (deterministic from ``--seed``), ``--scale`` times the size of the GLDv2 release:

- ``300,000 * scale`` landmarks (the release has 203k train + ~100k index landmarks) with a
  Commons category URL each, through the resolution paths of the embedded sample in the same
  proportions (sitelinks, category items with P301, P301 to a redirected item, category items
  without P301, P373 fallbacks found by SPARQL, missing titles, invalid URLs), several P31
  statements and ranks; about 20 images per landmark in ``train.csv`` (4.1M / 203k);
- ``50,000 * scale`` classes: the real upper classes of the sample (so ``data/review/clusters.csv``
  anchors exist) and synthetic classes below them, each with 1-3 P279 parents drawn from the
  classes made before it (a DAG whose depth grows like ``log n``), redirected class ids used as
  parents, 2-cycles, classes without an English label; landmarks' P31 classes follow a Zipf law
  over the synthetic classes plus the sample's landmark kinds.

Served by ``pipelines/fake_wikidata.py`` on 127.0.0.1 with ``--latency`` seconds per request (the
client is serial, so wall time = requests x latency + our CPU time). Runs:

1. **clean**: ``make -f pipelines/hierarchy.mk ONLINE=1`` target by target (resolve, graph,
   anchors, propose, apply, export), each timed, with its HTTP requests by kind, the peak RSS of
   its processes, and the cache size;
2. **killed + resumed**: the same from scratch, SIGKILLed (whole process group) when half of the
   clean run's requests are answered, then ``make`` again: the requests answered before the kill
   that are sent again (target: none), and whether ``hierarchy.parquet`` equals the clean run's.

Projection to the release: the requests scale with the landmarks (resolve) and the classes
(graph); printed for scale 1 with serial requests at a few per-request service times (see the
README, "Scale rehearsal").

    python benchmarks/hierarchy_scale.py [--scale 0.02] [--latency 0.02] [--seed 7] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from pipelines.fake_wikidata import FakeWikidata, World  # noqa: E402
from pipelines.make_sample import (  # noqa: E402
    CATEGORY_ITEM,
    CLASS_REDIRECTS,
    KINDS,
    PATHS,
    REAL_CLASSES,
    SAMPLE_CLASSES,
    SYLLABLES,
    _entity,
    _url,
)

RELEASE_LANDMARKS = 300_000
RELEASE_CLASSES = 50_000
SYN_BASE = 960_000_000  # synthetic class QIDs
ALIAS_BASE = 970_000_000  # redirected (old) class QIDs
LM_BASE, CAT_BASE, OLD_BASE = 1_000_000_000, 1_400_000_000, 1_800_000_000


# ------------------------------------------------------------------------------------------ world

# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"scale": 0.001, "latency": 0.002}


def build_classes(n_classes: int, rng: random.Random) -> tuple[dict[str, dict], dict[str, str], list[str]]:
    """Class entities (real upper classes + synthetic DAG), redirects, and the synthetic QIDs."""
    parents: dict[str, list[str]] = {q: list(p) for q, (_, p) in {**REAL_CLASSES, **SAMPLE_CLASSES}.items()}
    labels = {q: lab for q, (lab, _) in {**REAL_CLASSES, **SAMPLE_CLASSES}.items()}
    redirects = dict(CLASS_REDIRECTS)
    real = [q for q in REAL_CLASSES if q != CATEGORY_ITEM and q not in ("Q35120", "Q488383")]
    syn: list[str] = []
    alias_of: dict[str, str] = {}
    for k in range(max(0, n_classes - len(parents))):
        qid = f"Q{SYN_BASE + k}"
        n_par = rng.choices((1, 2, 3), (75, 20, 5))[0]
        ps: list[str] = []
        for _ in range(n_par):
            if not syn or rng.random() < 0.35:
                p = rng.choice(real)
            else:  # uniform over earlier synthetic classes: depth ~ log n
                p = syn[rng.randrange(len(syn))]
            if p in alias_of and rng.random() < 0.5:
                p = alias_of[p]  # the parent is written with its old, redirected QID
            if p not in ps:
                ps.append(p)
        parents[qid] = ps
        labels[qid] = f"synthetic class {k}" if rng.random() > 0.01 else ""
        syn.append(qid)
        if rng.random() < 0.005:
            old = f"Q{ALIAS_BASE + k}"
            alias_of[qid] = old
            redirects[old] = qid
    for _ in range(max(1, len(syn) // 2000)):  # 2-cycles: a child becomes its parent's parent
        child = syn[rng.randrange(len(syn))]
        par = [p for p in parents[child] if p in labels and p.startswith("Q96")]
        if par:
            parents[par[0]].append(child)
    entities = {}
    for qid, ps in parents.items():
        ent = _entity(
            qid, labels[qid] or qid, {"P279": [(p, "normal") for p in ps]}, rev=1_000_000 + len(entities)
        )
        if not labels[qid]:
            ent["labels"] = {}
        entities[qid] = ent
    return entities, redirects, syn


def build_world(scale: float, seed: int) -> tuple[World, list[dict], int]:
    """(World, landmarks, number of classes) at ``scale`` of the release."""
    rng = random.Random(seed)
    n_lm = max(50, round(RELEASE_LANDMARKS * scale))
    entities, redirects, syn = build_classes(max(200, round(RELEASE_CLASSES * scale)), rng)
    n_classes = len(entities)
    zipf = [1.0 / (r + 1) ** 1.1 for r in range(len(syn))]
    order = syn[:]
    rng.shuffle(order)
    kinds_w = [w for *_, w in KINDS]
    paths, paths_w = zip(*PATHS, strict=True)
    landmarks = []
    lid = 0
    for i in range(n_lm):
        lid += rng.randint(1, 3)
        if rng.random() < 0.5 and syn:
            p31 = [(rng.choices(order, zipf)[0], "normal")]
            label = f"{rng.choice(SYLLABLES).capitalize()}{rng.choice(SYLLABLES)} Place {i}"
        else:
            p31, template, _ = KINDS[rng.choices(range(len(KINDS)), kinds_w)[0]]
            label = template.format(n=f"{rng.choice(SYLLABLES).capitalize()}{rng.choice(SYLLABLES)} {i}")
        path = rng.choices(paths, paths_w)[0]
        title = f"Category:{label}"
        qid, cat_qid, old_qid = f"Q{LM_BASE + i}", f"Q{CAT_BASE + i}", f"Q{OLD_BASE + i}"
        rev = 2_000_000_000 + i
        claims = {"P31": list(p31), "P17": [("Q142", "normal")]}
        if path == "sitelink":
            entities[qid] = _entity(qid, label, claims, rev, commons=title, other_labels=False)
        elif path in ("category", "category-redirect", "p373-category"):
            target = old_qid if path == "category-redirect" else qid
            if path == "category-redirect":
                redirects[old_qid] = qid
            entities[qid] = _entity(qid, label, {**claims, "P373": [(label, "normal")]}, rev, commons=label)
            cat_claims = {"P31": [(CATEGORY_ITEM, "normal")], "P301": [(target, "normal")]}
            if path == "p373-category":
                cat_claims["P373"] = [(label, "normal")]
                del entities[qid]["claims"]["P373"]
                entities[cat_qid] = _entity(cat_qid, title, cat_claims, rev + 1, other_labels=False)
            else:
                entities[cat_qid] = _entity(
                    cat_qid, title, cat_claims, rev + 1, commons=title, other_labels=False
                )
        elif path == "category-no-p301":
            entities[cat_qid] = _entity(
                cat_qid,
                title,
                {"P31": [(CATEGORY_ITEM, "normal")]},
                rev + 1,
                commons=title,
                other_labels=False,
            )
        elif path == "p373":
            entities[qid] = _entity(
                qid, label, {**claims, "P373": [(label, "normal")]}, rev, other_labels=False
            )
        url = (
            _url(title, rng)
            if path != "invalid"
            else f"http://en.wikipedia.org/wiki/{label.replace(' ', '_')}"
        )
        landmarks.append(
            {"landmark_id": lid, "category": url, "n_images": 1 + min(999, int(rng.expovariate(1 / 19)))}
        )
    return World(entities, redirects), landmarks, n_classes


def write_metadata(folder: Path, landmarks: list[dict], seed: int) -> int:
    """``train_label_to_category.csv``, ``train.csv`` and ``train_clean.csv``; returns the image count."""
    rng = random.Random(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train_label_to_category.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["landmark_id", "category"])
        w.writerows([lm["landmark_id"], lm["category"]] for lm in landmarks)
    n = 0
    with (
        open(folder / "train.csv", "w", newline="", encoding="utf-8") as fh,
        open(folder / "train_clean.csv", "w", newline="", encoding="utf-8") as fc,
    ):
        w, wc = csv.writer(fh, lineterminator="\n"), csv.writer(fc, lineterminator="\n")
        w.writerow(["id", "url", "landmark_id"])
        wc.writerow(["landmark_id", "images"])
        for lm in landmarks:
            ids = [f"{rng.getrandbits(64):016x}" for _ in range(lm["n_images"])]
            n += len(ids)
            w.writerows(
                [i, f"https://upload.wikimedia.org/x/{i[0]}/{i[:2]}/{i}.jpg", lm["landmark_id"]] for i in ids
            )
            if len(ids) >= 2:
                wc.writerow([lm["landmark_id"], " ".join(ids[: max(2, 4 * len(ids) // 5)])])
    return n


class CountingWorld(World):
    """World that counts the requests by kind (title lookups, id lookups, SPARQL)."""

    def __init__(self, world: World):
        self.__dict__.update(world.__dict__)
        self.kinds: Counter[str] = Counter()

    def wbgetentities(self, q):
        self.kinds["titles" if "titles" in q else "ids"] += 1
        return super().wbgetentities(q)

    def sparql(self, query):
        self.kinds["sparql"] += 1
        return super().sparql(query)


# ------------------------------------------------------------------------------------------- runs

STAGES = [
    ("resolve", "{out}/resolved.parquet"),
    ("graph", "{out}/graph_nodes.parquet"),
    ("anchors", "{out}/anchors.json"),
    ("propose", "{out}/proposals.parquet"),
    ("apply", "{out}/hierarchy.parquet"),
    ("export", "export"),
]
_RUNNER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "json.dump({'rc': rc, 'maxrss_mib': ru.ru_maxrss / 1024, 'cpu_s': ru.ru_utime + ru.ru_stime},"
    " open(sys.argv[1], 'w'))\n"
)


def _make(data: Path, out: Path) -> list[str]:
    """``make -f pipelines/hierarchy.mk`` with this interpreter and the data/out/review folders."""
    return [
        "make",
        "--no-print-directory",
        "-f",
        str(ROOT / "pipelines" / "hierarchy.mk"),
        f"PY={sys.executable}",
        f"DATA={data}",
        f"OUT={out}",
        f"REVIEW={data.parent / 'review'}",
    ]


def make_cmd(data: Path, out: Path, cache: Path, srv: FakeWikidata, target: str) -> list[str]:
    return [
        *_make(data, out),
        "ONLINE=1",
        "CONTACT=hglv2-benchmark@example.org",
        f"API_URL={srv.api_url}",
        f"SPARQL_URL={srv.sparql_url}",
        target,
    ]


def dump_cmd(data: Path, out: Path, dump: Path, redirects: Path) -> list[str]:
    return [
        *_make(data, out),
        f"DUMP={dump}",
        f"REDIRECTS={redirects}",
        "all",
    ]


def write_dump(world: World, dump: Path, redirects: Path) -> None:
    """The world as an official-format JSON dump (one entity per line in a JSON array, gzip)."""
    import gzip

    with gzip.open(dump, "wt", encoding="utf-8", compresslevel=1) as fh:
        fh.write("[\n")
        for k, qid in enumerate(sorted(world.entities, key=lambda q: int(q[1:]))):
            if k:
                fh.write(",\n")
            fh.write(json.dumps(world.entities[qid], ensure_ascii=False, separators=(",", ":")))
        fh.write("\n]\n")
    with open(redirects, "w", encoding="utf-8") as fh:
        fh.write("from,to\n")
        fh.writelines(f"{a},{b}\n" for a, b in sorted(world.redirects.items()))


def dump_run(work: Path, data: Path, world: World) -> dict:
    dump, redirects = work / "wikidata-20250101-all.json.gz", work / "redirects.csv"
    t0 = time.perf_counter()
    write_dump(world, dump, redirects)
    written = time.perf_counter() - t0
    out = work / "dumprun"
    t0 = time.perf_counter()
    rc = start(dump_cmd(data, out, dump, redirects), work / "dump.json", work / "dump.log").wait()
    wall = time.perf_counter() - t0
    st = json.loads((work / "dump.json").read_text())
    return {
        "rc": rc or st["rc"],
        "wall_s": wall,
        "cpu_s": st["cpu_s"],
        "maxrss_mib": st["maxrss_mib"],
        "dump_mib": dump.stat().st_size / 2**20,
        "write_s": written,
        "out": out,
    }


def start(cmd: list[str], stats: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fh = open(log, "a")  # noqa: SIM115 - closed when the process ends (the child holds its copy)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(stats), *cmd],
        cwd=ROOT,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the kill reaches make and its stage
    )
    fh.close()
    return proc


def cache_size(cache: Path) -> float:
    return sum(p.stat().st_size for p in cache.parent.glob(cache.name + "*")) / 2**20


def clean_run(work: Path, data: Path, srv: FakeWikidata, world: CountingWorld) -> tuple[list[dict], Path]:
    out, cache = work / "clean", work / "clean" / "wikidata.sqlite"
    rows = []
    for name, target in STAGES:
        before, kinds0 = len(srv.log), Counter(world.kinds)
        stats = work / f"clean_{name}.json"
        t0 = time.perf_counter()
        rc = start(make_cmd(data, out, cache, srv, target.format(out=out)), stats, work / "clean.log").wait()
        wall = time.perf_counter() - t0
        st = json.loads(stats.read_text())
        if rc or st["rc"]:
            sys.exit(
                f"stage {name} failed; see {work / 'clean.log'}:\n" + (work / "clean.log").read_text()[-3000:]
            )
        kinds = Counter(world.kinds)
        kinds.subtract(kinds0)
        rows.append(
            {
                "stage": name,
                "wall_s": wall,
                "requests": len(srv.log) - before,
                "kinds": {k: v for k, v in kinds.items() if v},
                "cpu_s": st["cpu_s"],
                "maxrss_mib": st["maxrss_mib"],
                "cache_mib": cache_size(cache) if cache.exists() else 0.0,
            }
        )
    return rows, out


def killed_run(work: Path, data: Path, srv: FakeWikidata, kill_at: int) -> dict:
    out, cache = work / "killed", work / "killed" / "wikidata.sqlite"
    start_n = len(srv.log)
    holder: dict[str, subprocess.Popen] = {}
    fired = threading.Event()

    def kill_mid_way(n: int) -> bool:
        if n - start_n == kill_at and not fired.is_set():
            fired.set()
            os.killpg(holder["p"].pid, signal.SIGKILL)
            return True  # this request is dropped unanswered
        return False

    srv.on_request = kill_mid_way
    holder["p"] = p = start(
        make_cmd(data, out, cache, srv, "all"), work / "killed_1.json", work / "killed.log"
    )
    rc1 = p.wait()
    srv.on_request = None
    first = [k for k, ok in srv.log[start_n:] if ok]
    mid = len(srv.log)
    t0 = time.perf_counter()
    rc2 = start(make_cmd(data, out, cache, srv, "all"), work / "killed_2.json", work / "killed.log").wait()
    wall = time.perf_counter() - t0
    second = [k for k, ok in srv.log[mid:] if ok]
    repeated = set(first) & set(second)
    return {
        "killed": fired.is_set() and rc1 == -signal.SIGKILL,
        "answered_before_kill": len(first),
        "resume_rc": rc2,
        "resume_requests": len(second),
        "resume_wall_s": wall,
        "repeated": len(repeated),
        "out": out,
    }


def _print_stages(rows: list[dict]) -> int:
    """The clean run's table, stage by stage; returns its total number of requests."""
    total = sum(r["requests"] for r in rows)
    print("1. clean run, stage by stage (make -f pipelines/hierarchy.mk ONLINE=1 <target>)")
    print(
        f"  {'stage':8s} {'wall s':>8s} {'cpu s':>7s} {'requests':>9s} {'peak RSS MiB':>13s} "
        f"{'cache MiB':>10s}  kinds"
    )
    for r in rows:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(r["kinds"].items()))
        print(
            f"  {r['stage']:8s} {r['wall_s']:8.1f} {r['cpu_s']:7.1f} {r['requests']:9,d} "
            f"{r['maxrss_mib']:13.0f} {r['cache_mib']:10.1f}  {kinds}"
        )
    wall = sum(r["wall_s"] for r in rows)
    print(
        f"  total    {wall:8.1f} {sum(r['cpu_s'] for r in rows):7.1f} {total:9,d} "
        f"{max(r['maxrss_mib'] for r in rows):13.0f} {rows[-1]['cache_mib']:10.1f}"
    )
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.02, help="fraction of the release size")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds the fake server waits per request")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        world, landmarks, n_classes = build_world(args.scale, args.seed)
        n_images = write_metadata(work / "data", landmarks, args.seed)
        review = work / "review"  # the project's clusters and decisions; no per-landmark overrides
        review.mkdir()
        for name in ("clusters.csv", "decisions.csv"):
            shutil.copy(ROOT / "data" / "review" / name, review / name)
        header = (ROOT / "data" / "review" / "landmark_overrides.csv").read_text().splitlines()[0]
        (review / "landmark_overrides.csv").write_text(header + "\n")
        print(
            f"world at scale {args.scale}: {len(landmarks):,d} landmarks, {n_classes:,d} classes, "
            f"{len(world.entities):,d} entities, {len(world.redirects):,d} redirects, {n_images:,d} images "
            f"(built in {time.perf_counter() - t0:.1f} s); latency {args.latency * 1000:.0f} ms/request; "
            f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        cw = CountingWorld(world)
        with FakeWikidata(cw) as raw:
            srv = _LatencyServer(raw, args.latency)
            srv.on_request = None  # the latency alone
            rows, clean_out = clean_run(work, work / "data", srv, cw)
            total = _print_stages(rows)

            kill = killed_run(work, work / "data", srv, total // 2)
        same = (kill["out"] / "hierarchy.parquet").read_bytes() == (
            clean_out / "hierarchy.parquet"
        ).read_bytes()
        print("2. killed at half of the requests (SIGKILL to the process group), then make again")
        print(
            f"  killed: {kill['killed']}; answered before the kill {kill['answered_before_kill']:,d}; "
            f"resumed run rc {kill['resume_rc']}, {kill['resume_requests']:,d} requests in "
            f"{kill['resume_wall_s']:.1f} s; "
            f"answered requests sent again: {kill['repeated']} (target 0); hierarchy.parquet identical "
            f"to the clean run: {same}"
        )
        dr = dump_run(work, work / "data", world)
        same_dump = (
            dr["rc"] == 0
            and (dr["out"] / "hierarchy.parquet").read_bytes()
            == (clean_out / "hierarchy.parquet").read_bytes()
        )
        print("3. the dump route: make -f pipelines/hierarchy.mk DUMP=<world as a JSON dump> REDIRECTS=...")
        print(
            f"  dump {dr['dump_mib']:.1f} MiB (gzip, written in {dr['write_s']:.1f} s); make all: "
            f"rc {dr['rc']}, {dr['wall_s']:.1f} s wall, {dr['cpu_s']:.1f} s CPU, peak RSS "
            f"{dr['maxrss_mib']:.0f} MiB, no request; "
            f"hierarchy.parquet identical to the API route: {same_dump}"
        )
        project(rows, args.scale, len(landmarks), n_classes)
        if args.json:
            payload = {
                "scale": args.scale,
                "latency_s": args.latency,
                "landmarks": len(landmarks),
                "classes": n_classes,
                "stages": rows,
                "killed": {k: v for k, v in kill.items() if k != "out"},
                "identical_after_resume": same,
                "dump_route": {k: v for k, v in dr.items() if k != "out"},
                "dump_route_identical": same_dump,
            }
            Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


class _LatencyServer:
    """The server, with a per-request latency wrapped around the kill hook of :func:`killed_run`."""

    def __init__(self, srv: FakeWikidata, latency: float):
        self._srv, self._latency = srv, latency

    def __getattr__(self, name):
        return getattr(self._srv, name)

    @property
    def on_request(self):
        return self._srv.on_request

    @on_request.setter
    def on_request(self, hook):
        lat = self._latency

        def wrapped(n: int) -> bool:
            if hook is not None and hook(n):
                return True
            time.sleep(lat)
            return False

        self._srv.on_request = wrapped


def project(rows: list[dict], scale: float, n_landmarks: int, n_classes: int) -> None:
    """Requests and serial online time at the release size (linear in landmarks / classes)."""
    f_lm, f_cls = RELEASE_LANDMARKS / n_landmarks, RELEASE_CLASSES / n_classes
    by = {r["stage"]: r for r in rows}
    resolve = by["resolve"]["requests"] * f_lm
    graph = by["graph"]["requests"] * f_cls
    other = sum(r["requests"] for r in rows if r["stage"] not in ("resolve", "graph"))
    total = resolve + graph + other
    cpu = sum(r["cpu_s"] for r in rows) * f_lm
    print(
        f"4. projected to the release ({RELEASE_LANDMARKS:,d} landmarks, {RELEASE_CLASSES:,d} classes): "
        f"{resolve:,.0f} resolve + {graph:,.0f} graph + {other:,.0f} other = {total:,.0f} serial requests; "
        f"our CPU <= {cpu / 60:.1f} min (linear in landmarks, start-up included)"
    )
    for t in (0.3, 1.0, 2.0):
        print(f"  at {t:.1f} s per request (serial, maxlag=5 pauses extra): {total * t / 3600:5.1f} h")


if __name__ == "__main__":
    main()
