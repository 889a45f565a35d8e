"""Benchmarks: suites of (dataset, loss, seed) trainings -> ``results.json``, ``report.md``, plots.

A suite is a training config (:func:`hglv2.config.load_config`) whose ``benchmark`` section lists
the losses to compare (name -> overrides of the ``loss`` section) and the seeds. Each (loss, seed)
run trains in ``<out>/runs/<loss>/seed<k>/`` and is evaluated on the evaluation split with
:func:`hglv2.metrics.evaluate`. A finished run is reused, and an interrupted one resumed from its
checkpoint, only when its *run key* is unchanged: a sha256 over the content of every input (the
resolved run config, the data -- manifest and split files, which record the hierarchy's sha256 --
and the hglv2 source code), never over paths; :func:`run_key`. Anything else starts the run over.

Parallel runs train in worker processes that die with the benchmark (:mod:`hglv2.processes`);
Ctrl-C or SIGTERM stops them within seconds. In a terminal one progress bar follows the suite
(runs done, training steps of the runs in flight).

Each run also writes ``per_query.parquet``: its final model's metrics per evaluation query
(:func:`per_query_table`). Outputs: ``results.json`` (every run's final metrics, learning curve
and speed; mean/std per loss; ``intervals``: per loss and metric the mean over seeds with a 95%
bootstrap interval; ``pairwise``: every pair of losses on every metric of the table, paired over
the same seeds and queries, with p-values, Holm-adjusted p-values and ``significant`` flags; see
:mod:`hglv2.stats`), ``report.md`` (rows: losses; columns: AP and R@1 per level, H-AP, ASI, NDCG,
mAP@100 at the finest level, each ``mean [95% interval]`` in %; then the pairwise table) and PNG
plots (``per_level.png``: AP and R@1 per level, H-AP, ASI and NDCG per loss with the intervals
as error bars;
``learning_curve.png``: H-AP and level-0 AP against the step).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hglv2.config import DEFAULTS, apply_overrides, config_digest, load_config, validate_config
from hglv2.errors import InputError
from hglv2.fileio import (
    atomic_open,
    atomic_path,
    claim_folder,
    commit_together,
    sha256_file,
    write_json,
    write_parquet,
)
from hglv2.models import resolve_device
from hglv2.stats import DEFAULT_RESAMPLES, bootstrap_interval, holm, paired_test
from hglv2.train.data import prepare_data
from hglv2.train.trainer import Trainer

REPORT_METRICS_MULTI = ("H-AP", "ASI", "NDCG")
PER_QUERY_FILE = "per_query.parquet"
STATISTICS = {
    "interval": "95% percentile bootstrap of the mean over seeds of the mean over queries: over "
    "queries with one seed; with several, hierarchical (resample seeds, then queries within each)",
    "pairwise": "difference a - b paired over the same seeds and queries: 95% bootstrap interval "
    "(same resampling) and two-sided sign-flip permutation p-value; Holm's correction over the "
    "pairs of losses of each metric; significant: adjusted p < 0.05",
    "resamples": DEFAULT_RESAMPLES,
    "rng_seed": 0,
}
PAIRWISE_REPORT = ("H-AP", "AP_level0", "R@1_level0", "NDCG", "ASI")
"""Metrics of the report's pairwise table (``results.json`` holds every column of the main table)."""
ALPHA = 0.05


def suite_runs(
    cfg: dict[str, Any],
    losses: list[str] | None = None,
    seeds: list[int] | None = None,
    tuned: dict[str, dict[str, Any]] | None = None,
):
    """The (loss label, seed, run config) triples of a suite, in report order.

    ``tuned`` maps a loss label to dotted-key overrides of its runs' configs (the
    hyper-parameters :mod:`hglv2.tune` chose, e.g. ``{"optimizer.lr": 3e-4}``).
    """
    table = cfg["benchmark"]["losses"] or {cfg["loss"]["name"]: {"name": cfg["loss"]["name"]}}
    if not isinstance(table, dict):
        raise InputError("benchmark.losses must be a mapping of label -> loss settings")
    names = list(table)
    if losses:
        unknown = [n for n in losses if n not in table]
        if unknown:
            raise InputError(f"--losses: {', '.join(unknown)} not in the suite ({', '.join(names)})")
        names = list(losses)
    seeds = list(seeds if seeds is not None else cfg["benchmark"]["seeds"])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise InputError("benchmark.seeds must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):  # one run would be counted twice in the mean and std
        raise InputError(f"benchmark.seeds: {seeds} repeats a seed")
    runs = []
    for label in names:
        override = table[label]
        if not isinstance(override, dict):
            raise InputError(f"benchmark.losses.{label} must be a mapping (name, kwargs, ...)")
        unknown = set(override) - set(DEFAULTS["loss"])
        if unknown:
            raise InputError(f"benchmark.losses.{label}: unknown key(s) {sorted(unknown)}")
        for seed in seeds:
            run = copy.deepcopy(cfg)
            run["loss"] = {**copy.deepcopy(DEFAULTS["loss"]), "name": label, **override}
            run["seed"] = seed
            run["name"] = f"{cfg['name']}/{label}/seed{seed}"
            run["benchmark"] = {"seeds": [seed], "losses": {}}
            apply_overrides(run, (tuned or {}).get(label), f"tuned settings of {label}")
            validate_config(run, f"benchmark.losses.{label}")
            runs.append((label, seed, run))
    return runs


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rec in history:
        if "eval" in rec:
            ev = rec["eval"]
            keep = {
                k: v for k, v in ev.items() if k in ("H-AP", "ASI", "NDCG") or k.startswith(("AP_", "R@1_"))
            }
            out.append({"step": rec["step"], **keep})
        elif "loss" in rec:
            out.append({"step": rec["step"], "loss": rec["loss"], "images_per_s": rec.get("images_per_s")})
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the hglv2 package: its version and every ``.py``/``.yaml`` file under it."""
    import hglv2

    root = Path(hglv2.__file__).parent
    h = hashlib.sha256(f"hglv2 {hglv2.__version__}\n".encode())
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def data_digest(cfg: dict[str, Any], root: str | os.PathLike[str]) -> str:
    """sha256 of the data a run reads: ``manifest.json`` (when present), the split files it
    trains and evaluates on, and for synthetic data the hierarchy file it was drawn from.

    Content only (the file names inside the data folder, not its path). Image files are covered
    through the manifest where it hashes them (synthetic data); a GLDv2 image folder is not
    hashed (millions of files): replace it under a new export to force new runs.
    """
    d = cfg["data"]
    root = Path(root)
    h = hashlib.sha256()
    names = ["manifest.json"] + [
        f"{d[k]}.parquet" for k in ("train_split", "query_split", "index_split") if d.get(k)
    ]
    for name in dict.fromkeys(names):
        path = root / name
        h.update(f"{name}\0{sha256_file(path) if path.is_file() else '-'}\n".encode())
    if d["kind"] == "synthetic":
        hierarchy = (d.get("synthetic") or {}).get("hierarchy")
        if hierarchy is None:
            from hglv2.synthetic import default_hierarchy_path

            hierarchy = default_hierarchy_path()
        if hierarchy is not None and str(hierarchy) != "builtin" and Path(hierarchy).is_file():
            h.update(f"hierarchy\0{sha256_file(hierarchy)}\n".encode())
    return h.hexdigest()


def run_key(run_cfg: dict[str, Any], data: str, code: str, threads: int | None = None) -> str:
    """The identity of a run's inputs: sha256 of (config digest, data digest, code digest) and, on
    CPU, the torch threads it trains on (another count gives other weights, :func:`plan_jobs`)."""
    inputs: dict[str, Any] = {"config": config_digest(run_cfg), "data": data, "code": code}
    if threads is not None:
        inputs["threads"] = threads
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _worker_init() -> None:
    """Initializer of the parallel-run worker processes: die with the benchmark process, and fork
    the runs' DataLoader workers as a run in the main process does (:func:`fork_children`)."""
    from hglv2.processes import die_with_parent, fork_children

    die_with_parent()
    fork_children()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: unchanged) inside the block, and put back
    after it, so that a run trained in the caller's process leaves its thread count as it was."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_run(
    run_cfg: dict[str, Any],
    run_dir: str,
    device: str | None,
    threads: int | None,
    progress: bool,
    key: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train one run (in this process or a worker process); returns its metrics and speed.

    ``key`` (:func:`run_key`) is recorded in ``metrics.json``; ``resume=False`` starts over even
    when the run folder holds a checkpoint (made from other inputs).
    """
    with torch_threads(threads):
        t0 = time.perf_counter()
        trainer = Trainer(run_cfg, run_dir, device=device, resume=resume, progress=progress)
        metrics = trainer.fit()
    write_parquet(per_query_table(trainer), Path(run_dir) / PER_QUERY_FILE, use_dictionary=["test_set"])
    done = Path(run_dir) / "metrics.json"
    record = json.loads(done.read_text("utf-8"))
    record.update({"images_per_s": trainer.images_per_s, "train_seconds": trainer.train_seconds})
    if key is not None:
        record["run_key"] = key
    write_json(done, record)
    return {
        "metrics": metrics,
        "images_per_s": trainer.images_per_s,
        "train_seconds": trainer.train_seconds,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }


# ------------------------------------------------------------------------------ per-query metrics


def per_query_table(trainer: Trainer) -> Any:
    """The per-query metrics of the trainer's last evaluation (the final model's, after
    :meth:`~hglv2.train.trainer.Trainer.fit`) on each evaluation set, as an Arrow table.

    Columns: ``test_set`` (the name of a ``data.test_sets`` entry; empty for the single
    evaluation split), ``query`` (row of the query split) and one float64 column per metric of
    :func:`hglv2.metrics.evaluate` (``reduce=False``; NaN where undefined for that query). The
    mean of a column over its defined values within a set is that set's value in ``metrics.json``.
    """
    import pyarrow as pa

    if trainer.last_per_query is None:
        raise RuntimeError("per_query_table: the trainer has not evaluated a model yet")
    parts = []
    for ts in trainer.test_sets():
        per = trainer.last_per_query[ts["name"]]
        n = len(next(iter(per.values())))
        parts.append({"test_set": [ts["name"] or ""] * n, "query": np.arange(n, dtype=np.int64), **per})
    keys = sorted(set().union(*(set(p) for p in parts)) - {"test_set", "query"})
    columns: dict[str, Any] = {
        "test_set": pa.array([v for p in parts for v in p["test_set"]], pa.string()),
        "query": pa.array(np.concatenate([p["query"] for p in parts]), pa.int64()),
    }
    for key in keys:
        cols = [np.asarray(p.get(key, np.full(len(p["query"]), np.nan)), np.float64) for p in parts]
        columns[key] = pa.array(np.concatenate(cols), pa.float64())
    return pa.table(columns)


def read_per_query(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A run's ``per_query.parquet`` as metric key -> (queries,) float64 values; the metrics of a
    named test set are keyed ``<set>/<metric>`` as in ``metrics.json``. Empty when absent."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        return {}
    table = pq.read_table(path)
    sets = table.column("test_set").to_numpy(zero_copy_only=False)
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(sets.tolist()):
        rows = sets == name
        for key in table.column_names:
            if key in ("test_set", "query"):
                continue
            values = table.column(key).to_numpy(zero_copy_only=False).astype(np.float64)[rows]
            out[f"{name}/{key}" if name else key] = values
    return out


def uncertainty(
    runs: list[dict[str, Any]],
    per_query: list[dict[str, np.ndarray]],
    levels: int,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
    """(95% intervals per loss and metric, pairwise comparisons) from the runs' per-query values.

    Intervals: :func:`hglv2.stats.bootstrap_interval` over the loss's seeds x queries. Pairwise:
    every pair of losses (report order) on every metric of the report table, paired over the same
    seeds (those both ran) and queries (:func:`hglv2.stats.paired_test`); Holm's correction over
    the pairs of one metric (one family per metric); ``significant``: adjusted p < 0.05.
    Resampling uses a fixed seed: the same inputs give the same numbers.
    """
    by_loss: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for run, values in zip(runs, per_query, strict=True):
        if values:
            by_loss.setdefault(run["loss"], {})[run["seed"]] = values

    def matrix(loss: str, key: str, seeds: list[int]) -> np.ndarray | None:
        rows = [by_loss[loss][s].get(key) for s in seeds]
        if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
            return None
        return np.stack(rows)

    intervals: dict[str, dict[str, dict[str, Any]]] = {}
    for loss, seeds_values in by_loss.items():
        seeds = sorted(seeds_values)
        keys = sorted(set().union(*(set(v) for v in seeds_values.values())))
        intervals[loss] = {}
        for key in keys:
            x = matrix(loss, key, seeds)
            if x is not None and np.isfinite(x).any():
                intervals[loss][key] = bootstrap_interval(x, resamples=resamples)
    return intervals, _pairwise(by_loss, matrix, levels, resamples)


def _pairwise(by_loss: dict, matrix: Callable, levels: int, resamples: int) -> list[dict[str, Any]]:
    """The pairwise table of :func:`uncertainty` (Holm within each metric)."""
    losses = list(by_loss)
    rows: list[dict[str, Any]] = []
    for key, _ in report_columns(levels):
        family = []
        for i, a in enumerate(losses):
            for b in losses[i + 1 :]:
                seeds = sorted(set(by_loss[a]) & set(by_loss[b]))
                xa, xb = matrix(a, key, seeds), matrix(b, key, seeds)
                if xa is None or xb is None or xa.shape != xb.shape or not np.isfinite(xa - xb).any():
                    continue
                family.append({"a": a, "b": b, "metric": key, **paired_test(xa, xb, resamples=resamples)})
        for row, adjusted in zip(family, holm([r["p_value"] for r in family]), strict=True):
            row.update(p_holm=adjusted, significant=bool(adjusted < ALPHA))
        rows += family
    return rows


def plan_jobs(
    n_runs: int, device: str | None, jobs: int | None = None, threads: int | None = None
) -> tuple[int, int | None]:
    """(parallel runs, torch threads per run). ``jobs=None``: on CPU one run per core, at most one
    per run (small models scale better across processes than across threads, and a busy machine
    does not stall them); on CUDA one run at a time. ``threads``: torch CPU threads of every run,
    1 by default on CPU whatever the number of jobs or cores, so that the numbers of a run do not
    depend on them (the thread count changes how the CPU kernels split their sums, hence the last
    bits of the trained weights); None on CUDA (torch's default)."""
    cores = os.cpu_count() or 1
    on_cuda = str(device or "auto").startswith("cuda") or (
        device in (None, "auto") and torch.cuda.is_available()
    )
    if jobs is None:
        jobs = 1 if on_cuda else min(max(n_runs, 1), cores)
    jobs = max(1, min(jobs, max(n_runs, 1)))
    if threads is None and not on_cuda:
        threads = 1
    return jobs, threads


def run_suite(
    suite: str | os.PathLike[str] | dict[str, Any],
    out_dir: str | os.PathLike[str],
    seeds: list[int] | None = None,
    losses: list[str] | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    jobs: int | None = None,
    threads: int | None = None,
    say: Callable[[str], None] | None = None,
    tuned: dict[str, dict[str, Any]] | None = None,
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every (loss, seed) of ``suite`` and write results.json, report.md and the plots.

    ``overrides`` maps dotted config keys to values (``{"train.steps": 20}``), applied to the
    suite's config before the runs are derived from it. ``jobs``: runs trained in parallel worker
    processes (default: :func:`plan_jobs`); the results do not depend on it. ``threads``: torch CPU
    threads of each run (:func:`plan_jobs`: 1 on CPU by default). ``say``: called with
    one line per run finished in a worker process (``"<loss> seed <k>: H-AP <%>"``, in plan
    order); nothing is printed without it. ``tuned``: per-loss overrides (:func:`suite_runs`);
    ``tuning``: the search that chose them, recorded in ``results.json``. Returns the results.
    """

    cfg = suite if isinstance(suite, dict) else load_config(suite)
    cfg = apply_overrides(copy.deepcopy(cfg), overrides, "suite")
    resolve_device(device)  # a bad --device fails before any work
    plan = suite_runs(cfg, losses, seeds, tuned)
    out = claim_folder(out_dir, "benchmark")  # never write runs into another command's folder
    t0 = time.perf_counter()
    data_root = prepare_data(cfg, progress=progress)
    data_s = time.perf_counter() - t0

    threads = plan_jobs(len(plan), device, jobs, threads)[1]  # does not depend on the number of runs
    finished, todo = _plan_runs(plan, out, data_digest(cfg, data_root), code_digest(), threads)
    n_jobs = plan_jobs(len(todo), device, jobs, threads)[0]
    if n_jobs > 1:
        _run_parallel(plan, todo, finished, n_jobs, device, threads, progress, say)
    else:
        for k, rc, rd, key, resume in todo:
            finished[k] = {**_train_run(rc, rd, device, threads, progress, key, resume), "reused": False}
    runs = []
    for k, (label, seed, run_cfg) in enumerate(plan):
        run_dir = out / "runs" / _safe(label) / f"seed{seed}"
        runs.append(
            {
                "loss": label,
                "seed": seed,
                "loss_config": run_cfg["loss"],
                **finished[k],
                "curve": _curve(_read_jsonl(run_dir / "log.jsonl")),
                "run_dir": run_dir.relative_to(out).as_posix(),
            }
        )
    intervals, pairwise = uncertainty(
        runs, [read_per_query(out / r["run_dir"] / PER_QUERY_FILE) for r in runs], len(cfg["data"]["levels"])
    )
    results = {
        "format_version": 2,
        "suite": cfg["name"],
        "config": cfg,
        "config_digest": config_digest(cfg),
        "levels": cfg["data"]["levels"],
        "device": str(device or "auto"),
        "environment": _environment(n_jobs, threads),
        "data_seconds": round(data_s, 3),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "runs": runs,
        "summary": summarize(runs),
        "statistics": STATISTICS,
        "intervals": intervals,
        "pairwise": pairwise,
        "tuning": tuning,
    }
    write_report(results, out)
    return results


def _plan_runs(
    plan: list[tuple[str, int, dict[str, Any]]], out: Path, data_dig: str, code_dig: str, threads: int | None
) -> tuple[dict[int, dict[str, Any]], list[tuple[int, dict[str, Any], str, str, bool]]]:
    """(finished runs reused from ``out``, runs to train as (k, config, folder, run key, resume)).

    A run is reused when its ``metrics.json`` records the same run key; a checkpoint is resumed
    only if it was made from these very inputs (``inputs.json``), else the run starts over.
    """
    finished: dict[int, dict[str, Any]] = {}
    todo = []
    for k, (label, seed, run_cfg) in enumerate(plan):
        run_dir = out / "runs" / _safe(label) / f"seed{seed}"
        key = run_key(run_cfg, data_dig, code_dig, threads)
        prev = _read_json(run_dir / "metrics.json")
        if prev.get("run_key") == key and prev.get("metrics"):
            finished[k] = {
                "metrics": prev["metrics"],
                "images_per_s": prev.get("images_per_s"),
                "train_seconds": prev.get("train_seconds"),
                "wall_seconds": 0.0,
                "reused": True,
            }
            continue
        resume = _read_json(run_dir / "inputs.json").get("run_key") == key
        if not resume:
            for stale in ("metrics.json", "model.pt"):
                (run_dir / stale).unlink(missing_ok=True)
        write_json(
            run_dir / "inputs.json",
            {"run_key": key, "config_digest": config_digest(run_cfg), "data": data_dig, "code": code_dig},
        )
        todo.append((k, run_cfg, str(run_dir), key, resume))
    return finished, todo


def _environment(n_jobs: int, threads: int | None) -> dict[str, Any]:
    """The machine and the parallelism of a suite (``results.json``'s ``environment``)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "parallel_runs": n_jobs,
        "threads_per_run": threads or torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _last_step(run_dir: str) -> int:
    """The last logged step of a run in flight (0 when none), from the tail of its log.jsonl."""
    try:
        with open(Path(run_dir) / "log.jsonl", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec["step"]
    return 0


def _run_parallel(
    plan: list,
    todo: list,
    finished: dict[int, dict[str, Any]],
    n_jobs: int,
    device: str | None,
    threads: int | None,
    progress: bool,
    say: Callable[[str], None] | None = None,
) -> None:
    """Train ``todo`` in ``n_jobs`` worker processes that die with this one.

    Progress: one tqdm bar over the runs (off when stderr is not a terminal) whose postfix sums
    the steps of the runs in flight (read from their ``log.jsonl``); with ``say``, each finished
    run gives it one line, in plan order. Any exception here (Ctrl-C, SIGTERM via the CLI, a
    failing run) stops every worker before it propagates.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from hglv2.processes import stop_pool

    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=get_context("spawn"), initializer=_worker_init)
    bar = None
    try:
        futures = {
            k: (pool.submit(_train_run, rc, rd, device, threads, False, key, resume), rd, rc)
            for k, rc, rd, key, resume in todo
        }
        steps_total = sum(rc["train"]["steps"] or 0 for _, _, rc in futures.values())
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(plan), initial=len(finished), desc="benchmark", unit="run", disable=None)
        pending = dict(futures)
        announce = [k for k, *_ in todo]
        while pending:
            wait([f for f, _, _ in pending.values()], timeout=1.0, return_when=FIRST_COMPLETED)
            for k in [k for k, (f, _, _) in pending.items() if f.done()]:
                fut = pending.pop(k)[0]
                finished[k] = {**fut.result(), "reused": False}
                if bar is not None:
                    bar.update(1)
            while say is not None and announce and announce[0] in finished:
                k = announce.pop(0)
                label, seed, _ = plan[k]
                hap = 100 * (finished[k]["metrics"] or {}).get("H-AP", float("nan"))
                say(f"{label} seed {seed}: H-AP {hap:.2f}")
            if bar is not None and steps_total:
                done_steps = sum(
                    rc["train"]["steps"] or 0 for k, (_, _, rc) in futures.items() if k in finished
                )
                done_steps += sum(_last_step(rd) for _, rd, _ in pending.values())
                bar.set_postfix_str(f"steps {done_steps}/{steps_total}", refresh=True)
    except BaseException:
        stop_pool(pool)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown(wait=True)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in label)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample std (0 for one seed) and count per loss and metric."""
    by_loss: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_loss.setdefault(run["loss"], []).append(run["metrics"] or {})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for loss, metrics in by_loss.items():
        keys = sorted(set().union(*metrics))
        out[loss] = {}
        for k in keys:
            vals = [float(m[k]) for m in metrics if k in m and isinstance(m[k], (int, float))]
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                continue
            out[loss][k] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
    return out


def report_columns(levels: int) -> list[tuple[str, str]]:
    """(metric key, column header) of the report table."""
    cols = []
    for level in range(levels):
        cols += [(f"AP_level{level}", f"AP L{level}"), (f"R@1_level{level}", f"R@1 L{level}")]
    cols += [(m, m) for m in REPORT_METRICS_MULTI]
    cols.append(("mAP@100_level0", "mAP@100 L0"))
    return cols


def _cell(results: dict[str, Any], loss: str, key: str) -> str:
    """``mean [low, high]`` in % (the 95% interval), else ``mean ± std`` / ``mean`` from the
    summary when the runs left no per-query values."""
    ci = results.get("intervals", {}).get(loss, {}).get(key)
    if ci is not None and math.isfinite(ci["low"]):
        return f"{100 * ci['mean']:.2f} [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]"
    s = results["summary"].get(loss, {}).get(key)
    if s is None:
        return "–"
    if s["n"] > 1:
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
    return f"{100 * s['mean']:.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The report's table: rows losses, cells ``mean [95% interval]`` in % (:func:`uncertainty`)."""
    cols = report_columns(len(results["levels"]))
    lines = ["| Loss | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for loss in results["summary"]:
        lines.append(f"| {loss} | " + " | ".join(_cell(results, loss, key) for key, _ in cols) + " |")
    return "\n".join(lines)


def pairwise_table(results: dict[str, Any], metrics: tuple[str, ...] = PAIRWISE_REPORT) -> str:
    """The report's pairwise comparisons of ``metrics`` (differences in points of %)."""
    lines = [
        "| Metric | A − B | Δ (%) | 95% interval | p | p (Holm) | significant at 5% |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for row in results.get("pairwise", []):
        if row["metric"] not in metrics:
            continue
        lines.append(
            f"| {row['metric']} | {row['a']} − {row['b']} | {100 * row['difference']:+.2f} | "
            f"[{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] | {row['p_value']:.4f} | "
            f"{row['p_holm']:.4f} | {'yes' if row['significant'] else 'no'} |"
        )
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, ``per_level.png`` and ``learning_curve.png``."""
    out = Path(out_dir)
    paths = {
        "results": out / "results.json",
        "report": out / "report.md",
        "per_level": out / "per_level.png",
        "learning_curve": out / "learning_curve.png",
    }
    with commit_together():  # results.json, report.md and the plots: all new or all old
        _write_report_files(results, paths)
    return paths


def _write_report_files(results: dict[str, Any], paths: dict[str, Path]) -> None:
    write_json(paths["results"], results)
    plot_per_level(results, paths["per_level"])
    plot_learning_curve(results, paths["learning_curve"])
    cfg = results["config"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    speeds = [r["images_per_s"] for r in results["runs"] if r.get("images_per_s")]
    n_reused = sum(bool(r.get("reused")) for r in results["runs"])
    env = results["environment"]
    lines = [
        f"# hglv2 benchmark: {results['suite']}",
        "",
        f"- data: `{cfg['data']['kind']}` at `{cfg['data']['root']}`; evaluation: "
        f"`{cfg['data']['query_split']}` against "
        f"`{cfg['data']['index_split'] or cfg['data']['query_split'] + ' (self excluded)'}`",
        f"- model: {cfg['model']['backbone']}, {cfg['model']['embedding_dim']}-d, "
        f"{'ImageNet' if cfg['model']['pretrained'] else 'random'} init, {cfg['data']['image_size']} px",
        f"- training: batch {cfg['sampler']['batch_size']} ({cfg['sampler']['m']} per class, "
        f"{cfg['sampler']['kind']}), {cfg['optimizer']['name']} lr {cfg['optimizer']['lr']}, "
        f"{cfg['schedule']['kind']} schedule, "
        + (f"{cfg['train']['steps']} steps" if cfg["train"]["steps"] else f"{cfg['train']['epochs']} epochs"),
        f"- seeds: {', '.join(map(str, seeds))}; cells: mean over seeds, in %, with its 95% interval "
        f"({results['statistics']['interval']}; {results['statistics']['resamples']} resamples)",
        f"- wall time: {results['wall_seconds']:.1f} s (data {results['data_seconds']:.1f} s"
        + (f"; {n_reused} of {len(results['runs'])} runs reused from an earlier call" if n_reused else "")
        + "); "
        "training speed "
        + (f"{np.mean(speeds):.0f} images/s" if speeds else "n/a")
        + f" per run; {env['parallel_runs']} parallel run(s) x {env['threads_per_run']} thread(s); "
        + f"torch {env['torch']}"
        + (f", {env['cuda']}" if env.get("cuda") else "")
        + (f", load average {env['load_average'][0]:.2f}" if env.get("load_average") else ""),
        "",
        "Levels: L0 = landmark, L1 = cluster, L2 = natural / human-made (for the export layout).",
        "",
        markdown_table(results),
        "",
        *_pairwise_section(results),
        *_tuning_section(results),
        "![AP and R@1 per level, H-AP, ASI, NDCG](per_level.png)",
        "",
        "![learning curves](learning_curve.png)",
        "",
    ]
    with atomic_open(paths["report"]) as fh:
        fh.write("\n".join(lines))


def _pairwise_section(results: dict[str, Any]) -> list[str]:
    if not results.get("pairwise"):
        return []
    return [
        "## Pairwise comparisons",
        "",
        f"{results['statistics']['pairwise']}. Every metric's pairs are in `results.json`.",
        "",
        pairwise_table(results),
        "",
    ]


def _tuning_section(results: dict[str, Any]) -> list[str]:
    tuning = results.get("tuning")
    if not tuning:
        return []
    lines = [
        "## Tuned hyper-parameters",
        "",
        f"{tuning['trials']} trials per loss (optuna TPE) maximising validation {tuning['metric']} on "
        f"{tuning['validation']['classes']} training landmarks held out of training "
        f"({tuning['validation']['images']} images); {tuning['seconds_per_trial']:.1f} s per trial. "
        "The table above reports test metrics of these settings trained on the full training split.",
        "",
        "| Loss | chosen settings | validation |",
        "|---|---|---:|",
    ]
    for loss, best in tuning["best"].items():
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
        )
        lines.append(f"| {loss} | {params} | {100 * best['value']:.2f} |")
    return [*lines, ""]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def _bars(results: dict[str, Any], loss: str, keys: list[str]) -> tuple[list[float], Any]:
    """Bar heights (mean over seeds, %) and error bars (the 95% interval as (2, n) offsets; None
    without intervals) of ``keys``."""
    means, low, high = [], [], []
    for key in keys:
        ci = results.get("intervals", {}).get(loss, {}).get(key)
        mean = results["summary"][loss].get(key, {}).get("mean", np.nan)
        means.append(100 * mean)
        ok = ci is not None and math.isfinite(ci["low"])
        low.append(100 * (mean - ci["low"]) if ok else 0.0)
        high.append(100 * (ci["high"] - mean) if ok else 0.0)
    return means, (np.clip([low, high], 0, None) if any(low) or any(high) else None)


def plot_per_level(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Grouped bars, mean over seeds with the 95% interval as error bars, one bar per loss: AP and
    R@1 per level, and the hierarchical metrics (H-AP, ASI, NDCG)."""
    plt = _pyplot()
    losses = list(results["summary"])
    levels = len(results["levels"])
    panels = [
        (
            "AP per level",
            "AP (%)",
            [f"AP_level{lv}" for lv in range(levels)],
            [f"level {lv}" for lv in range(levels)],
        ),
        (
            "R@1 per level",
            "R@1 (%)",
            [f"R@1_level{lv}" for lv in range(levels)],
            [f"level {lv}" for lv in range(levels)],
        ),
        ("hierarchical", "%", list(REPORT_METRICS_MULTI), list(REPORT_METRICS_MULTI)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    width = 0.8 / max(len(losses), 1)
    for ax, (title, ylabel, keys, ticks) in zip(axes, panels, strict=True):
        for k, loss in enumerate(losses):
            means, errors = _bars(results, loss, keys)
            x = np.arange(len(keys)) + (k - (len(losses) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, label=loss, capsize=2)
        ax.set_xticks(np.arange(len(keys)), ticks)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['suite']}: retrieval per level and hierarchical (95% intervals)")
    fig.tight_layout()
    _savefig(fig, Path(path))
    plt.close(fig)


def plot_learning_curve(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """H-AP and level-0 AP of the periodic evaluations against the step (mean over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_loss: dict[str, list[list[dict[str, Any]]]] = {}
    for run in results["runs"]:
        by_loss.setdefault(run["loss"], []).append(run["curve"])
    for loss, curves in by_loss.items():
        for ax, key in zip(axes[:2], ("H-AP", "AP_level0"), strict=True):
            pts: dict[int, list[float]] = {}
            for curve in curves:
                for rec in curve:
                    if rec.get(key) is not None:  # None: undefined at that step (written as null)
                        pts.setdefault(rec["step"], []).append(100 * rec[key])
            steps = sorted(pts)
            ax.plot(steps, [np.mean(pts[s]) for s in steps], marker="o", ms=3, label=loss)
        pts = {}
        for curve in curves:
            first = next((rec["loss"] for rec in curve if rec.get("loss") is not None), None)
            for rec in curve:
                if rec.get("loss") is not None and first:
                    pts.setdefault(rec["step"], []).append(rec["loss"] / first)
        steps = sorted(pts)
        axes[2].plot(steps, [np.mean(pts[s]) for s in steps], label=loss)
    for ax, title in zip(axes, ("H-AP (%)", "AP level 0 (%)", "training loss / first logged"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['suite']}: learning curves")
    fig.tight_layout()
    _savefig(fig, Path(path))
    plt.close(fig)
