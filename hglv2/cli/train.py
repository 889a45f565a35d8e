"""``hglv2 train CONFIG``, ``hglv2 benchmark [SUITE]`` and ``hglv2 synthesize``."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import click

from hglv2.cli._options import OUTPUT_DIR, Output, json_option, parse_int_list


def _overrides(pairs: tuple[str, ...], random_init: bool) -> dict[str, Any]:
    from hglv2.config import parse_overrides

    out = parse_overrides(pairs)
    if random_init:
        out["model.pretrained"] = False
    return out


def _short(metrics: dict[str, Any]) -> str:
    keys = ["H-AP", "AP_level0", "R@1_level0", "ASI", "NDCG", "mAP@100_level0"]
    return ", ".join(f"{k} {100 * metrics[k]:.2f}" for k in keys if k in metrics)


_COMMON = [
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
    click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="override a config value (YAML), e.g. --set train.steps=200; repeatable",
    ),
    click.option(
        "--random-init", is_flag=True, help="train from random initialisation (model.pretrained=false)"
    ),
    json_option(help="also write the result as JSON"),
    click.option("--quiet", is_flag=True, help="no progress bars"),
]


def _common(f):
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


@click.command()
@click.argument("config")
@click.option("--out", type=OUTPUT_DIR, help="run folder [default: runs/<config name>]")
@click.option("--no-resume", is_flag=True, help="start over even if OUT holds a checkpoint")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch CPU threads [default: torch's]; on a busy machine 1 is often much faster than several",
)
@_common
def train(
    config: str,
    out: str | None,
    no_resume: bool,
    threads: int | None,
    device: str,
    sets: tuple[str, ...],
    random_init: bool,
    quiet: bool,
) -> Output | None:
    """Train a model with CONFIG (a shipped name: synthetic, h-gldv2, sop, inat2018, inat-base, cub,
    dyml-vehicle, dyml-animal, dyml-product; or a YAML file).

    Resumes from OUT/checkpoints/last.pt when present. Under torchrun each process trains its shard
    of every global batch (gloo on CPU, nccl on GPU).
    """
    from hglv2.config import apply_overrides, load_config
    from hglv2.train import train as run_train

    cfg = apply_overrides(load_config(config), _overrides(sets, random_init), "config (after --set)")
    out_dir = Path(out or Path("runs") / cfg["name"])
    if threads:
        import torch

        torch.set_num_threads(threads)
    metrics = run_train(cfg, out_dir, device=device, resume=not no_resume, progress=not quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return None
    return Output(
        data={"config": cfg["name"], "out": str(out_dir), "metrics": metrics},
        lines=[
            f"trained {cfg['name']}: {_short(metrics)}",
            f"run folder: {out_dir} (log.jsonl, model.pt, metrics.json)",
        ],
    )


@click.command()
@click.argument("suite", required=False, default="synthetic")
@click.option("--out", type=OUTPUT_DIR, help="report folder [default: runs/benchmark/<suite>]")
@click.option("--seeds", help="comma-separated seeds, e.g. 0,1,2 [default: the suite's]")
@click.option("--losses", help="comma-separated subset of the suite's losses")
@click.option("--steps", type=click.IntRange(min=1), help="training steps per run (overrides train.steps)")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="runs trained in parallel processes [default: on CPU one run per core; on CUDA 1]",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch CPU threads of each run [default: 1 on CPU, whatever --jobs]; the numbers do not "
    "depend on --jobs, but another thread count changes the last bits of the trained weights",
)
@click.option(
    "--tune",
    type=click.IntRange(min=1),
    metavar="N",
    help="first search each loss's hyper-parameters with N optuna trials on a validation split held "
    "out of the training landmarks, then report the chosen settings (needs hglv2[tune]; resumable)",
)
@click.option("--tune-metric", default="H-AP", show_default=True, help="validation metric --tune maximises")
@_common
def benchmark(
    suite: str,
    out: str | None,
    seeds: str | None,
    losses: str | None,
    steps: int | None,
    jobs: int | None,
    threads: int | None,
    tune: int | None,
    tune_metric: str,
    device: str,
    sets: tuple[str, ...],
    random_init: bool,
    quiet: bool,
) -> Output:
    """Train and evaluate every loss of SUITE (default: the embedded synthetic suite, CPU).

    Writes OUT/results.json, OUT/report.md and PNG plots (each metric with its 95% interval, and
    the pairwise comparisons of the losses); finished runs are reused.
    """
    from hglv2.benchmark import markdown_table, pairwise_table, run_suite
    from hglv2.cli import EXIT_BROKEN_PIPE
    from hglv2.config import load_config

    cfg = load_config(suite)
    overrides = _overrides(sets, random_init)
    if steps is not None:
        overrides["train.steps"] = steps
    # seeds >= 0, each once (a repeated seed would be one run counted twice in the mean/std)
    seed_list = None if seeds is None else parse_int_list(seeds, "--seeds", minimum=0, unique=True)
    loss_list = [s.strip() for s in losses.split(",") if s.strip()] if losses else None
    out_dir = Path(out or Path("runs") / "benchmark" / cfg["name"])
    printer = _RunLines()
    options = {
        "seeds": seed_list,
        "losses": loss_list,
        "device": device,
        "overrides": overrides,
        "progress": not quiet,
        "jobs": jobs,
        "threads": threads,
        "say": None if quiet else printer,
    }
    if tune:
        from hglv2.tune import tune_suite

        results = tune_suite(cfg, out_dir, tune, metric=tune_metric, **options)
    else:
        results = run_suite(cfg, out_dir, **options)
    data = {
        "report": str(out_dir / "report.md"),
        "summary": results["summary"],
        "intervals": results["intervals"],
        "pairwise": results["pairwise"],
        "tuning": results["tuning"],
        "wall_seconds": results["wall_seconds"],
    }
    if printer.closed:  # a run's line met a closed stdout: the files are written, exit 141
        return Output(data=data, exit_code=EXIT_BROKEN_PIPE)
    return Output(
        data=data,
        lines=[
            markdown_table(results),
            *([pairwise_table(results)] if results["pairwise"] else []),
            *(
                [f"tuning: {results['tuning']['seconds_per_trial']:.1f} s per trial"]
                if results["tuning"]
                else []
            ),
            f"wall time {results['wall_seconds']:.1f} s",
            f"Report: {out_dir / 'report.md'} (results.json, per_level.png, learning_curve.png)",
        ],
    )


class _RunLines:
    """Prints a finished run's line to stdout without tearing the progress bar on stderr.

    A closed stdout (the reader of a pipe is gone) does not stop the suite: the line is dropped,
    stdout is pointed at /dev/null and :attr:`closed` turns true, so the command writes its files
    first and exits as a broken pipe after.
    """

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, line: str) -> None:
        from tqdm import tqdm

        from hglv2.cli import _silence_stdout

        if self.closed:
            return
        try:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.closed = True
            _silence_stdout()


@click.command()
@click.option("--out", type=OUTPUT_DIR, default="runs/data/synthetic", show_default=True)
@click.option(
    "--hierarchy",
    help="hierarchy table (CSV/Parquet, ours or the published format) or 'builtin' "
    "[default: data/sample/train_label_to_hierarchical.csv when present, else builtin]",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=64, show_default=True)
@click.option("--train-images", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--query-images", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--index-images", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--train-fraction", type=float, default=0.5, show_default=True)
@click.option(
    "--max-clusters", type=click.IntRange(min=1), help="keep at most this many clusters per top level"
)
@click.option(
    "--landmarks-per-cluster", type=click.IntRange(min=1), help="keep at most this many per cluster"
)
@json_option(help="also write the manifest here")
@click.option("--quiet", is_flag=True)
def synthesize(
    out: str,
    hierarchy: str | None,
    seed: int,
    image_size: int,
    train_images: int,
    query_images: int,
    index_images: int,
    train_fraction: float,
    max_clusters: int | None,
    landmarks_per_cluster: int | None,
    quiet: bool,
) -> Output:
    """Generate the embedded hierarchical landmarks (Parquet splits + JPEGs + manifest.json)."""
    from hglv2.synthetic import SyntheticParams, generate

    params = SyntheticParams(
        seed=seed,
        image_size=image_size,
        train_images=train_images,
        query_images=query_images,
        index_images=index_images,
        train_fraction=train_fraction,
        max_clusters=max_clusters,
        landmarks_per_cluster=landmarks_per_cluster,
    )
    manifest = generate(out, hierarchy, params, progress=not quiet)
    lines = [
        f"{name}: {s['rows']} images of {s['landmarks']} landmarks" for name, s in manifest["splits"].items()
    ]
    lines += [f"hierarchy: {manifest['hierarchy']['source']}", f"written to {out} (manifest.json)"]
    return Output(data=manifest, lines=lines)
