"""Tuned baselines: ``hglv2 benchmark --tune N``.

Each loss of a suite gets the same budget of ``N`` optuna trials (TPE sampler) over its search
space (:func:`hglv2.losses.registry.search_space`: dotted config keys such as ``optimizer.lr`` and
``loss.kwargs.tau``). A trial trains on the training split *minus* a class-disjoint validation
split carved from the training landmarks (:func:`validation_split`: a fixed quarter of them, chosen
by a fixed RNG seed) and scores the final model on that validation split (queries against
each other, self excluded), by default on H-AP. The best setting of each loss is then trained on
the full training split with the suite's seeds by :func:`hglv2.benchmark.run_suite`, which reports
test metrics for those runs only.

Everything lives in ``<out>/tune/``: ``data/`` (the two split files), ``optuna.sqlite3`` (the
studies: a rerun continues where the last one stopped; a study is named after a digest of its
inputs, so changed inputs start a new one) and one folder per trial. Trials run one after the
other in this process, so they stop with it; a second ``--tune`` on the same folder while one
runs is refused (a lock on ``tune/.lock``). ``optuna`` is the optional extra ``tune``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hglv2.benchmark import code_digest, data_digest, plan_jobs, run_key, run_suite, suite_runs, torch_threads
from hglv2.config import apply_overrides, load_config
from hglv2.errors import InputError
from hglv2.fileio import claim_folder, file_lock, write_parquet
from hglv2.losses.registry import Range, search_space
from hglv2.train.data import prepare_data
from hglv2.train.trainer import Trainer

VALIDATION_FRACTION = 0.25
VALIDATION_SEED = 0
TUNE_DIR = "tune"


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise InputError("--tune needs optuna: pip install 'hglv2[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def validation_split(
    cfg: dict[str, Any], data_root: Path, folder: Path
) -> tuple[dict[str, Any], dict[str, int]]:
    """Carve a class-disjoint validation split out of the training split.

    The training landmarks (``data.levels[0]``), sorted and shuffled by ``VALIDATION_SEED``: the
    first ``VALIDATION_FRACTION`` of them (at least 2) are written to ``folder/val.parquet``, the
    rest to ``folder/train.parquet`` (deterministic bytes). Returns (the config overrides that make
    a run train on the rest and evaluate on the validation split, {"classes", "images"} of the
    validation split).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    d = cfg["data"]
    table = pq.read_table(data_root / f"{d['train_split']}.parquet")
    labels = table.column(d["levels"][0]).to_numpy()
    classes = np.unique(labels[labels >= 0])
    n_val = max(2, round(VALIDATION_FRACTION * len(classes)))
    if len(classes) - n_val < 2:
        raise InputError(f"--tune: the training split has {len(classes)} landmarks, too few to hold some out")
    held = np.sort(np.random.default_rng(VALIDATION_SEED).permutation(classes)[:n_val])
    is_val = pc.is_in(table.column(d["levels"][0]), value_set=pa.array(held))
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table.filter(pc.invert(is_val)), folder / "train.parquet")
    write_parquet(table.filter(is_val), folder / "val.parquet")
    image_root = d["image_root"]
    if isinstance(image_root, dict):
        image_root = image_root.get(d["train_split"])
    if not image_root:
        from hglv2.splits import manifest_image_root

        image_root = manifest_image_root(data_root, option="data.image_root")
    overrides = {
        "data.kind": "export",
        "data.root": str(folder),
        "data.image_root": str(Path(image_root).resolve()),
        "data.train_split": "train",
        "data.query_split": "val",
        "data.index_split": None,
        "data.test_sets": None,
        "train.eval_every": 0,
    }
    return overrides, {"classes": int(n_val), "images": int(pc.sum(is_val.cast("int64")).as_py() or 0)}


def _suggest(trial: Any, space: dict[str, Range]) -> dict[str, float]:
    return {key: trial.suggest_float(key, r.low, r.high, log=r.log) for key, r in space.items()}


def _study_name(label: str, base: dict[str, Any], space: dict[str, Range], metric: str, data: str) -> str:
    text = json.dumps({"space": {k: vars(v) for k, v in space.items()}, "metric": metric}, sort_keys=True)
    # the trials train under tune_suite's thread setting (torch_threads): part of their inputs
    key = run_key(base, data, code_digest(), torch.get_num_threads())
    digest = hashlib.sha256((key + text).encode()).hexdigest()[:16]
    return f"{label}-{digest}"


def _counted(study: Any, optuna: Any) -> list[Any]:
    """Trials of ``study`` that count against the budget, in order: the finished ones (complete, or
    failed after training: no finite score). A trial left running by an interrupted call is marked
    failed and not counted: it is run again."""
    counted = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        elif "seconds" in t.user_attrs:
            counted.append(t)
    return counted


def _best(study: Any, trials: int, optuna: Any, error: str) -> dict[str, Any]:
    """The best of the first ``trials`` counted trials (a study grown by a larger earlier budget
    still picks within this one): {"params", "value"}."""
    complete = optuna.trial.TrialState.COMPLETE
    done = [t for t in _counted(study, optuna)[:trials] if t.state == complete]
    if not done:
        raise InputError(error)
    top = max(done, key=lambda t: (t.value, -t.number))
    return {"params": dict(top.params), "value": float(top.value)}


def _run_trial(base: dict[str, Any], params: dict[str, float], folder: Path, device: str | None, metric: str):
    """Train one trial's configuration and return its validation ``metric`` (NaN if undefined)."""
    cfg = apply_overrides(json.loads(json.dumps(base)), params, "tuning trial")
    metrics = Trainer(cfg, folder, device=device, resume=False, progress=False).fit()
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("nan")


def tune_losses(
    cfg: dict[str, Any],
    out: Path,
    trials: int,
    losses: list[str] | None = None,
    device: str | None = None,
    metric: str = "H-AP",
    progress: bool = True,
    seeds: list[int] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run ``trials`` optuna trials per loss of ``cfg`` (a resolved suite config) under
    ``out/tune``, each trained with the first of ``seeds`` (default: the suite's).

    Returns (per-loss overrides of the best trial, the tuning record of ``results.json``: budget,
    metric, validation split, best settings, seconds per trial).
    """
    folder = out / TUNE_DIR
    with file_lock(folder / ".lock", busy=f"{folder} is being tuned by another hglv2 process"):
        return _tune_locked(cfg, folder, trials, losses, device, metric, progress, seeds)


def _tune_locked(cfg, folder, trials, losses, device, metric, progress, seeds):
    """:func:`tune_losses` while holding the lock of ``folder`` (one tuner per study file: a
    second one would take the first one's running trials for interrupted ones)."""
    optuna = _optuna()
    data_root = prepare_data(cfg, progress=progress)
    overrides, held = validation_split(cfg, data_root, folder / "data")
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'optuna.sqlite3').resolve()}")
    seed = (seeds or cfg["benchmark"]["seeds"])[0]
    plan = {label: run for label, _, run in suite_runs(cfg, losses, [seed])}
    bar = _bar(len(plan) * trials, progress)
    best: dict[str, dict[str, Any]] = {}
    seconds: list[float] = []
    try:
        for label, run in plan.items():
            base = apply_overrides(run, overrides, "tuning split")
            space = search_space(run["loss"]["name"])
            data = data_digest(base, folder / "data")
            name = _study_name(label, base, space, metric, data)
            study = _study(
                optuna, storage, name, trials, folder / label, base, space, device, metric, bar, seconds
            )
            error = f"--tune: no trial of {label} gave a finite validation {metric}"
            best[label] = {**_best(study, trials, optuna, error), "study": name}
    finally:
        if bar is not None:
            bar.close()
    record = {
        "trials": trials,
        "metric": metric,
        "sampler": "optuna TPE",
        "validation": held,
        "storage": f"{TUNE_DIR}/optuna.sqlite3",
        "best": best,
        "seconds_per_trial": float(np.mean(seconds)) if seconds else _recorded_seconds(storage, best),
        "trials_run_now": len(seconds),
    }
    return {label: b["params"] for label, b in best.items()}, record


def _study(optuna, storage, name, trials, folder, base, space, device, metric, bar, seconds) -> Any:
    """Create or load study ``name`` and run its remaining trials (ask and tell)."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    used = len(_counted(study, optuna))
    if bar is not None:
        bar.update(min(used, trials))
    # the sampler's seed follows the trials already made, so a resumed study draws new points
    study.sampler = optuna.samplers.TPESampler(seed=VALIDATION_SEED + used)
    for _ in range(used, trials):
        trial = study.ask()
        params = _suggest(trial, space)
        t0 = time.perf_counter()
        value = _run_trial(base, params, folder / f"trial{trial.number}", device, metric)
        spent = time.perf_counter() - t0
        trial.set_user_attr("seconds", round(spent, 3))
        seconds.append(spent)
        if math.isfinite(value):
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if bar is not None:
            bar.update(1)
    return study


def _recorded_seconds(storage: Any, best: dict[str, dict[str, Any]]) -> float:
    """Mean training time of the recorded trials (a call that ran none reports the earlier ones)."""
    optuna = _optuna()
    spent = [
        t.user_attrs["seconds"]
        for b in best.values()
        for t in optuna.load_study(study_name=b["study"], storage=storage).get_trials(deepcopy=False)
        if "seconds" in t.user_attrs
    ]
    return float(np.mean(spent)) if spent else float("nan")


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="tune", unit="trial", disable=None)


def tune_suite(
    suite: str | dict[str, Any],
    out_dir: str | Path,
    trials: int,
    seeds: list[int] | None = None,
    losses: list[str] | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    metric: str = "H-AP",
    progress: bool = True,
    jobs: int | None = None,
    say: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Tune each loss of ``suite`` with ``trials`` trials (:func:`tune_losses`), then run the
    suite with the chosen settings (:func:`hglv2.benchmark.run_suite`); returns its results."""
    if trials < 1:
        raise InputError("--tune: the number of trials must be >= 1")
    cfg = suite if isinstance(suite, dict) else load_config(suite)
    cfg = apply_overrides(json.loads(json.dumps(cfg)), overrides, "suite")
    out = claim_folder(out_dir, "benchmark")
    with torch_threads(plan_jobs(1, device, 1, threads)[1]):  # the trials train as the runs do
        tuned, record = tune_losses(cfg, out, trials, losses, device, metric, progress, seeds)
    return run_suite(
        cfg,
        out,
        seeds=seeds,
        losses=losses,
        device=device,
        progress=progress,
        jobs=jobs,
        say=say,
        threads=threads,
        tuned=tuned,
        tuning=record,
    )
